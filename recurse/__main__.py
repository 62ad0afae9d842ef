import sys

from recurse.cli import main

sys.exit(main())
