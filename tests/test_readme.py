"""The README's quickstart runs verbatim and learns."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def quickstart_code() -> str:
    section = README.read_text().split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_quickstart_runs_as_written_and_learns(capsys):
    namespace = {}
    exec(compile(quickstart_code(), "README quickstart", "exec"), namespace)
    learned = namespace["lr_per_step"]
    assert len(learned) == 300 and learned[-1] > 2 * learned[0]  # the lr moved from its start of 1e-3
    loss = namespace["data"].valid_loss(namespace["model"])
    assert loss < 0.5  # from 2.3 at the start (10 classes)
    assert "validation loss" in capsys.readouterr().out
