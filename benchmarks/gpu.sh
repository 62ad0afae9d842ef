#!/usr/bin/env bash
# The GPU checks in one go: the CUDA tests, every benchmark with --device cuda, and three quick studies.
# Run from the repository root on a machine with CUDA:  bash benchmarks/gpu.sh
# Each benchmark prints its table; the whole run takes a few minutes on one GPU.
set -euo pipefail
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'benchmarks/gpu.sh: CUDA is not available')"
python -m pytest -q -rs -k cuda tests/
python benchmarks/overhead.py --device cuda --steps 100 --repeats 3
python benchmarks/unroll.py --device cuda --repeats 3
python benchmarks/scaling.py --device cuda --steps 20
python benchmarks/peers_unroll.py --device cuda --repeats 3
python benchmarks/peers_unroll.py --device cuda --repeats 3 --dtype float64
python benchmarks/peers_online.py --device cuda --steps 500
python -m recurse run l2l_quadratic --quick --quiet --device cuda
python -m recurse run tying --quick --quiet --device cuda
python -m recurse run rollback --quick --quiet --device cuda
