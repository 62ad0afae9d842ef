"""What every study, the demo and rc.compare share to report results:
CSV tables, saved figures, and the --quick/--out command line of a study."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
from pathlib import Path
from typing import Callable, Iterator


def finite_log10(values):
    """log10 of a tensor of losses, a non-finite loss counted as 1e30 (so a
    diverged run weighs heavily in a mean instead of turning it into NaN)."""
    import torch

    return torch.where(torch.isfinite(values), values, torch.full_like(values, 1e30)).clamp_min(1e-300).log10()


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of dicts (the first row's keys are the header) to ``path``."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def publish(out: Path, summary: str, tables: dict[str, list[dict]]) -> None:
    """What a study leaves behind: each table as ``out/<name>.csv``, the
    Markdown ``summary`` as ``out/summary.md``, and the summary printed."""
    for name, rows in tables.items():
        write_csv(out / f"{name}.csv", rows)
    (out / "summary.md").write_text(summary + "\n")
    print(summary)


@contextlib.contextmanager
def saved_figure(path: Path, rows: int = 1, columns: int = 1, **subplot_options) -> Iterator:
    """``with saved_figure(path) as (figure, axes): ...`` draws off-screen
    (Agg) with ``matplotlib.pyplot.subplots(rows, columns, **subplot_options)``
    and saves a 120-dpi PNG to ``path`` on exit, cropped to what was drawn
    (a legend placed outside the axes included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subplot_options.setdefault("figsize", (7, 4.5))
    figure, axes = plt.subplots(rows, columns, **subplot_options)
    try:
        yield figure, axes
        figure.tight_layout()
        figure.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)


def study_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The command line every study shares: ``--quick`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default results/<study>/<quick|full>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return parser


def checked_device(name: str) -> str:
    """``name`` as a torch device string, or ValueError naming what is wrong."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown --device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return str(device)


def progress(iterable, args: argparse.Namespace, description: str):
    """``iterable`` with a tqdm progress bar, off with ``--quiet`` or when
    stderr is not a terminal (CI logs, pipes)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, disable=getattr(args, "quiet", False) or not sys.stderr.isatty())


def study_folder(args: argparse.Namespace, study: str) -> Path:
    """``args.out``, or results/<study>/<quick|full>[-<device>] (a device
    other than the CPU gets its own folder); created, with
    ``config.json`` (the study, its options and the library versions) and
    ``log.txt``, which from now on receives the ``recurse`` logger's
    messages (roll-backs of non-finite steps, warnings) with timestamps."""
    import torch

    import recurse

    device = checked_device(getattr(args, "device", "cpu"))
    default = ("quick" if args.quick else "full") + ("" if device == "cpu" else f"-{device.replace(':', '')}")
    out = args.out or Path("results") / study / default
    out.mkdir(parents=True, exist_ok=True)
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    config = {"study": study, "options": options, "recurse": recurse.__version__, "torch": torch.__version__}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _log_to(out / "log.txt")
    logging.getLogger("recurse").info("study %s started with options %s", study, options)
    return out


_study_log: logging.Handler | None = None


def _log_to(path: Path) -> None:
    """Send the ``recurse`` logger (INFO and above) to ``path`` (appended),
    instead of the file a previous study in this process logged to."""
    global _study_log
    logger = logging.getLogger("recurse")
    if _study_log is not None:
        logger.removeHandler(_study_log)
        _study_log.close()
    _study_log = logging.FileHandler(path)
    _study_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(_study_log)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)


def cached(out: Path | None, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s JSON-able result, kept in ``out/runs/<key>.json``: a
    rerun with the same output folder reuses every finished run, so a long
    study that was interrupted resumes where it stopped. The file is written
    atomically (a kill never leaves half a result)."""
    if out is None:
        return compute()
    path = Path(out) / "runs" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(result))
    temporary.replace(path)
    return result


def cached_meta_training(out: Path | None, key: str, train: Callable[[], tuple]) -> tuple:
    """``train()`` returns ``(lstm, log)``: a meta-trained ``rc.LSTMOptimizer``
    and its per-meta-step log. Kept like :func:`cached` (its options, weights
    and dtype as JSON), so a rerun with the same output folder reloads the
    learned optimizer, bit for bit, instead of meta-training it again."""
    import torch

    from recurse.learned import LSTMOptimizer

    def compute() -> dict:
        lstm, log = train()
        state = lstm.state_dict()
        return {"options": state["options"], "weights": state["weights"].tolist(),
                "dtype": str(state["weights"].dtype).removeprefix("torch."), "log": log}

    saved = cached(out, key, compute)
    weights = torch.tensor(saved["weights"], dtype=getattr(torch, saved["dtype"]))
    return LSTMOptimizer.from_state_dict({"options": saved["options"], "weights": weights}), saved["log"]
