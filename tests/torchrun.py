"""Runs a job script on 2 CPU ranks (torchrun, gloo, loopback) for the
distributed tests, and loads the job as a module for the single-process
reference."""

import importlib.util
import os
import signal
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
    # (its own session: where the ranks hang in a collective, the timeout kills them with torchrun)
    job_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash prints every thread's stack
    try:
        _, stderr = job_process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(job_process.pid, signal.SIGKILL)
        job_process.communicate()
        raise AssertionError(f"{job.name} {mode} did not finish in 300 s (the ranks hang?)") from None
    assert job_process.returncode == 0, stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in range(ranks)]
