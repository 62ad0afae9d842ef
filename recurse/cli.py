"""Command line: ``python -m recurse demo`` (more commands come with the studies)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  python -m recurse demo                      # 10 quadratics, 200 steps, CPU
  python -m recurse demo --tasks 3 --quiet    # quicker, no progress bars
  python -m recurse demo --device cuda --out results/demo/gpu
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recurse", description="Recursive meta-optimization on PyTorch.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="learn a learning rate that starts 100x too small, side by side with fixed rates",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--tasks", type=_positive_int, default=10, help="quadratic tasks to sample (default 10)")
    demo.add_argument("--steps", type=_positive_int, default=200, help="steps per task (default 200)")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the task sampler (default 0)")
    demo.add_argument("--out", type=Path, default=None,
                      help="output folder (default results/demo/<timestamp>)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _run_demo(args) -> None:
    import torch

    from recurse.demo import markdown_table, run_demo

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise ValueError(f"unknown --device {args.device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    out = args.out or Path("results") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    quiet = args.quiet or not sys.stderr.isatty()
    results = run_demo(tasks=args.tasks, steps=args.steps, device=str(device), out=out, quiet=quiet, seed=args.seed)
    print(markdown_table(results))
    print(f"\nwrote {out}/config.json, metrics.csv, summary.md, demo.png")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            _run_demo(args)
    except Exception as error:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        print(f"recurse: error: {error}", file=sys.stderr)
        return 1
    return 0
