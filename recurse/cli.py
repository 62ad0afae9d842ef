"""Command line: ``python -m recurse demo | compare | search | run | graph``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  python -m recurse demo                      # 10 quadratics, 200 steps, CPU
  python -m recurse demo --tasks 3 --quiet    # quicker, no progress bars
  python -m recurse demo --device cuda --out results/demo/gpu
  python -m recurse compare --task digits --quick
  python -m recurse compare --task mnist1d --optimizer adam --seeds 0 1 2 3 4
  python -m recurse search --task digits --sampler tpe --trials 16 \\
      --storage postgresql+psycopg://user@dbhost:5432/studies --worker-trials 4   # run on 4 machines
  python -m recurse run ultimate_optimizer --quick
  python -m recurse run depth_sweep --quick --device cuda
  python -m recurse graph adam:1e-3 sgd:1e-2 sgd:1e-3              # a depth-2 tower, as text
  python -m recurse graph adam:1e-3 sgd:1e-2 --tie 3 --format png --out tower.png
"""

OPTIMIZER_NAMES = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "newton")

QUICK = {"budget": 1600, "steps": 100, "seeds": [0, 1]}


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
    _add_compare(commands)
    _add_search(commands)
    run = commands.add_parser("run", help="run a study script from studies/ (forwards its options)",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("study", help=f"one of: {', '.join(available_studies()) or '(studies/ not found)'}")
    run.add_argument("options", nargs=argparse.REMAINDER, help="the study's own options, e.g. --quick --out DIR")
    graph = commands.add_parser("graph", help="describe or draw a tower's optimization graph",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    graph.add_argument("levels", nargs="+", metavar="NAME:LR",
                       help=f"the tower from level 0 up, each NAME:LR with NAME in {', '.join(OPTIMIZER_NAMES)}")
    graph.add_argument("--tie", type=_positive_int, default=None, metavar="DEPTH",
                       help="the top level steps itself, tied over DEPTH levels")
    graph.add_argument("--format", choices=["text", "dot", "json", "png"], default="text")
    graph.add_argument("--out", type=Path, default=None, help="write there instead of printing (png needs it)")
    return parser


def studies_folder() -> Path:
    """Where the study scripts are: ``recurse.studies`` in an installed
    package (the wheel maps the checkout's ``studies/`` there), else the
    ``studies/`` beside the ``recurse/`` being run (a checkout on sys.path)."""
    try:
        import recurse.studies
    except ImportError:
        return Path(__file__).resolve().parent.parent / "studies"
    return Path(recurse.studies.__file__).resolve().parent


def available_studies() -> list[str]:
    return sorted(path.stem for path in studies_folder().glob("*.py") if not path.stem.startswith("_"))


def _add_compare(commands) -> None:
    from recurse.baselines.comparison import DEFAULT_METHODS
    from recurse.baselines.search import OPTIMIZERS
    from recurse.problems import TASKS

    compare = commands.add_parser(
        "compare", help="recurse towers side by side with Optuna grid/random/TPE on one budget",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--task", choices=sorted(TASKS), default="digits", help="task (default digits)")
    compare.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                         help="fixed, depthN, grid, random, tpe (default: %(default)s)")
    compare.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                         help="base optimizer (default sgd)")
    compare.add_argument("--knobs", nargs="+", default=["lr"], help="hyperparameters Optuna searches (default lr)")
    compare.add_argument("--budget", type=_positive_int, default=3200,
                         help="gradient evaluations per Optuna search (default 3200 = 16 trials of 200 steps)")
    compare.add_argument("--steps", type=_positive_int, default=200, help="steps of every training run (default 200)")
    compare.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    compare.add_argument("--quick", action="store_true",
                         help=f"a smoke run: budget {QUICK['budget']}, {QUICK['steps']} steps, seeds 0 1")
    compare.add_argument("--out", type=Path, default=None,
                         help="output folder; rerunning with the same folder resumes (default "
                              "results/compare/<task>-<optimizer>, with -quick after it for --quick)")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_search(commands) -> None:
    from recurse.baselines.search import OPTIMIZERS, PRUNERS, SAMPLERS
    from recurse.problems import TASKS

    search = commands.add_parser(
        "search", help="one Optuna study over an optimizer's hyperparameters (one worker of it)",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("--task", choices=sorted(TASKS), default="digits", help="task (default digits)")
    search.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd",
                        help="optimizer (default sgd)")
    search.add_argument("--knobs", nargs="+", default=["lr"], help="hyperparameters to search (default lr)")
    search.add_argument("--sampler", choices=list(SAMPLERS), default="tpe", help="Optuna sampler (default tpe)")
    search.add_argument("--pruner", choices=list(PRUNERS), default="none", help="Optuna pruner (default none)")
    search.add_argument("--trials", type=_positive_int, default=16, help="trials the study should end with (default 16)")
    search.add_argument("--worker-trials", type=_positive_int, default=None,
                        help="at most this many trials from this process (give each of N workers trials/N)")
    search.add_argument("--steps", type=_positive_int, default=200, help="steps per trial (default 200)")
    search.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size (default 128)")
    search.add_argument("--seed", type=int, default=0,
                        help="seed of the model, the batches and the sampler (random/TPE workers need distinct seeds)")
    search.add_argument("--storage", default=None,
                        help="SQLAlchemy URL of the study database (default sqlite:///results/search/optuna.db)")
    search.add_argument("--study-name", default=None, help="study name (default <task>-<optimizer>-<sampler>-seed<seed>)")
    search.add_argument("--heartbeat", type=_positive_int, default=60,
                        help="seconds between worker heartbeats; a trial silent for twice that is rerun (default 60)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _run_demo(args) -> None:
    from recurse.demo import markdown_table, run_demo
    from recurse.reporting import checked_device

    device = checked_device(args.device)
    out = args.out or Path("results") / "demo" / time.strftime("%Y%m%d-%H%M%S")
    quiet = args.quiet or not sys.stderr.isatty()
    results = run_demo(tasks=args.tasks, steps=args.steps, device=device, out=out, quiet=quiet, seed=args.seed)
    print(markdown_table(results))
    print(f"\nwrote {out}/config.json, metrics.csv, summary.md, demo.png")


def _run_compare(args) -> None:
    import optuna

    from recurse.baselines.comparison import compare, markdown_table, summary_rows

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options = {"budget": args.budget, "steps": args.steps, "seeds": args.seeds}
    if args.quick:
        options = dict(QUICK)
    out = args.out or Path("results") / "compare" / f"{args.task}-{args.optimizer}{'-quick' if args.quick else ''}"
    quiet = args.quiet or not sys.stderr.isatty()
    runs = compare(args.task, methods=args.methods, optimizer=args.optimizer, knobs=args.knobs,
                   batch_size=args.batch_size, out=out, quiet=quiet, **options)
    print(markdown_table(summary_rows(runs)))
    print(f"\nwrote {out}/summary.md, summary.csv, loss_vs_evaluations.png, hyperparameters.png, optuna_history_*.png")


def _run_search(args) -> None:
    import optuna

    from recurse.baselines.search import finished_trials, gradient_evaluations, run_search
    from recurse.baselines.storage import sqlite_url
    from recurse.problems import make_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or sqlite_url(Path("results") / "search")
    study = run_search(make_task(args.task), optimizer=args.optimizer, knobs=args.knobs, sampler=args.sampler,
                       pruner=args.pruner, trials=args.trials, worker_trials=args.worker_trials, steps=args.steps,
                       batch_size=args.batch_size, seed=args.seed, storage=storage, study_name=args.study_name,
                       heartbeat_interval=args.heartbeat)
    finished = finished_trials(study)
    print(f"study {study.study_name!r} at {storage}: {len(finished)} of {args.trials} trials finished, "
          f"{gradient_evaluations(study)} gradient evaluations")
    completed = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    if completed:
        best = min(completed, key=lambda t: t.value)
        print(f"best validation loss {best.value:.4g} with {best.params}")


def _run_study(args) -> None:
    import importlib.util

    if args.study not in available_studies():
        raise ValueError(f"unknown study {args.study!r}; expected one of {available_studies()} "
                         f"(in {studies_folder()})")
    spec = importlib.util.spec_from_file_location(args.study, studies_folder() / f"{args.study}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.options)


def _optimizer_from_spec(text: str):
    import recurse as rc

    name, _, lr = text.partition(":")
    classes = {"sgd": rc.SGD, "adam": rc.Adam, "adamw": rc.AdamW, "rmsprop": rc.RMSprop, "adagrad": rc.Adagrad,
               "newton": rc.Newton}
    if name.lower() not in classes:
        raise ValueError(f"unknown optimizer {name!r} in {text!r}; expected NAME:LR with NAME one of {OPTIMIZER_NAMES}")
    try:
        return classes[name.lower()](float(lr)) if lr else classes[name.lower()]()
    except ValueError as error:
        raise ValueError(f"bad level {text!r}: {error}") from None


def _run_graph(args) -> None:
    import torch

    import recurse as rc

    levels = [_optimizer_from_spec(text) for text in args.levels]
    if args.tie:
        levels[-1] = rc.tower(levels[-1], args.tie, tie=True)
    tower = rc.stack(*levels)
    graph = rc.graph.build({"model": [torch.zeros(1, requires_grad=True)]}, {"model_opt": tower},
                           {"model_opt": "model"})
    if args.format == "png":
        if args.out is None:
            raise ValueError("--format png needs --out FILE.png")
        rc.graph.draw(graph, args.out)
        print(f"wrote {args.out}")
        return
    text = {"text": rc.graph.describe, "dot": rc.graph.to_dot, "json": rc.graph.to_json}[args.format](graph)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"demo": _run_demo, "compare": _run_compare, "search": _run_search, "run": _run_study,
                    "graph": _run_graph}
        commands[args.command](args)
    except Exception as error:  # one line for the user; the traceback with --debug
        if args.debug:
            raise
        print(f"recurse: error: {error}", file=sys.stderr)
        return 1
    return 0
