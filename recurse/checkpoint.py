"""Checkpoints that survive a kill at any moment.

``save`` writes to a temporary file in the target's folder, flushes it to
disk, then renames it over the target (``os.replace`` is atomic on POSIX and
Windows): a process killed mid-save leaves the previous checkpoint intact
and, at worst, a stray ``*.tmp`` file. ``load`` reads with ``torch.load``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (anything ``torch.save`` takes: state dicts, RNG states) atomically to ``path``.

    >>> opt = rc.HyperOptimizer(model.parameters(), rc.SGD(0.1, hyper=rc.SGD(1e-3)))
    >>> rc.checkpoint.save({"model": model.state_dict(), "opt": opt.state_dict()}, "run.pt")
    >>> sorted(rc.checkpoint.load("run.pt"))
    ['model', 'opt']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike, *, map_location=None) -> Any:
    """Read a checkpoint written by :func:`save` (tensors and Python containers only).

    >>> rc.checkpoint.save({"step": 7, "weights": torch.ones(2)}, "state.pt")
    >>> rc.checkpoint.load("state.pt")["step"]
    7
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rc.checkpoint.load: no checkpoint at {str(path)!r}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """The global RNG states a resumed run must restore (CPU, and CUDA when present).

    >>> state = rc.checkpoint.rng_state()
    >>> first = torch.rand(1)
    >>> rc.checkpoint.set_rng_state(state)
    >>> torch.equal(torch.rand(1), first)
    True
    """
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_state`.

    >>> state = rc.checkpoint.rng_state(); draws = torch.rand(3)
    >>> rc.checkpoint.set_rng_state(state); torch.equal(torch.rand(3), draws)
    True
    """
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
