"""Every public name's docstring has a short example, and every example runs
(doctest) with the names the API reference says it assumes: ``torch``,
``rc`` (recurse), and a ``model`` (torch.nn.Linear(4, 1)) with its ``loss``
on a fixed batch of 8."""

import doctest
import importlib.util
from pathlib import Path

import pytest
import torch

import recurse as rc

ROOT = Path(__file__).parent.parent


def api_entries():
    spec = importlib.util.spec_from_file_location("build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.entries())


ENTRIES = api_entries()


def example_globals() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    inputs, targets = torch.randn(8, 4), torch.randn(8, 1)
    loss = torch.nn.functional.mse_loss(model(inputs), targets)
    return {"torch": torch, "rc": rc, "model": model, "inputs": inputs, "targets": targets, "loss": loss}


def test_every_public_name_has_an_example():
    missing = [name for name, _, doc in ENTRIES if ">>>" not in doc]
    assert missing == []


@pytest.mark.parametrize("name,doc", [(name, doc) for name, _, doc in ENTRIES if ">>>" in doc],
                         ids=[name for name, _, doc in ENTRIES if ">>>" in doc])
def test_the_example_runs(name, doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    test = doctest.DocTestParser().get_doctest(doc, example_globals(), name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    output = []
    runner.run(test, out=output.append)
    assert runner.failures == 0, "".join(output)
