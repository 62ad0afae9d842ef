"""Checkpoints survive SIGKILL: a killed run resumes bit for bit, and a kill
during a save leaves the previous checkpoint loadable."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import recurse as rc

JOB = Path(__file__).parent / "resumable_job.py"


def run_job(out, *extra):
    subprocess.run([sys.executable, str(JOB), str(out), *extra], check=True, capture_output=True, timeout=300)


def test_a_sigkilled_run_resumes_to_the_same_parameters_bit_for_bit(tmp_path):
    steps, every = 60, 5
    run_job(tmp_path / "whole", "--steps", str(steps), "--every", str(every))

    kill_after = random.Random().randint(every + 1, steps - 2)  # some step after the first checkpoint
    job = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "killed"), "--steps", str(steps),
                            "--every", str(every)], stdout=subprocess.PIPE, text=True)
    for line in job.stdout:
        if int(line.split()[1]) >= kill_after:
            job.send_signal(signal.SIGKILL)
            break
    job.wait()
    assert job.returncode == -signal.SIGKILL, f"the job ended before the kill at step {kill_after}"
    assert not (tmp_path / "killed" / "final.pt").exists()
    run_job(tmp_path / "killed", "--steps", str(steps), "--every", str(every))  # resumes

    whole = rc.checkpoint.load(tmp_path / "whole" / "final.pt")
    resumed = rc.checkpoint.load(tmp_path / "killed" / "final.pt")
    for name, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][name]), (name, kill_after)
    assert whole["hyper"] == resumed["hyper"]


WRITER = """
import sys, torch
import recurse as rc
path = sys.argv[1]
version = 1
while True:
    version += 1
    rc.checkpoint.save({"version": version, "data": torch.full((4_000_000,), float(version))}, path)
    print(version, flush=True)
"""


def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rc.checkpoint.save({"version": 1, "data": torch.full((4_000_000,), 1.0)}, path)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    writer.stdout.readline()  # at least one more save has finished; kill during a later one
    time.sleep(random.Random().uniform(0.0, 0.3))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    saved = rc.checkpoint.load(path)
    assert saved["version"] >= 2
    assert torch.equal(saved["data"], torch.full((4_000_000,), float(saved["version"])))


def test_loading_a_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        rc.checkpoint.load(tmp_path / "nothing.pt")
