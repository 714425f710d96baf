"""Fault injection on real training runs: SIGKILL at seeded random moments (mid-batch, mid-validation or inside a
checkpoint write), then resume, twice over; the result must equal an uninterrupted run tensor by tensor, and every
checkpoint left behind must load. (Signals, racing runs, flipped bits, bad vector files and bad numeric keys have
their tests beside the code they exercise: test_cli, test_checkpoint, test_data_vectors, test_config.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqep.training import checkpoint as ckpt

from conftest import ROOT, TRAIN

EPOCHS = 5
# ~60 batches an epoch (about a second): kills land in batches, validation and checkpoint writes alike
ARGS = [*TRAIN, "dataset.n_train=960", "algorithm.variant=random_sign", f"trainer.epochs={EPOCHS}"]


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", *ARGS, *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(run_dir: Path) -> dict:
    return ckpt.read_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    proc = start(reference)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    rng = random.Random(1234)
    previous, run = None, None
    for attempt in range(2):  # killed twice, resumed each time from the last run directory's last.pt
        run = tmp_path / f"killed{attempt}"
        proc = start(run, *([f"checkpoint.resume={previous}"] if previous else []))
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))  # anywhere: a batch, validation, a checkpoint write
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        state = weights(run)  # whatever the moment, last.pt is whole (atomic writes)
        assert 1 <= state["epoch"] <= EPOCHS
        previous = run
        if state["epoch"] == EPOCHS:  # the kill came after the end: nothing left to resume
            break
    final = previous
    if weights(previous)["epoch"] < EPOCHS:
        final = tmp_path / "final"
        proc = start(final, f"checkpoint.resume={previous}")
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    a, b = weights(reference), weights(final)
    assert a["epoch"] == b["epoch"] == EPOCHS
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert torch.equal(a["rng"]["generators"]["estimator"], b["rng"]["generators"]["estimator"])
