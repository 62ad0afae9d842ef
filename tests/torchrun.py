"""Runs a job script on 2 CPU ranks (torchrun, gloo, loopback) for the
distributed tests, and loads the job as a module for the single-process
reference."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch


def load_job(job: Path):
    spec = importlib.util.spec_from_file_location(job.stem, job)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_two_ranks(job: Path, mode: str, out: Path, ranks: int = 2) -> list:
    """``torchrun --nproc_per_node <ranks> job mode out``; what each rank saved to out/rank<r>.pt."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(job), mode, str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash prints every thread's stack
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(ranks)]
