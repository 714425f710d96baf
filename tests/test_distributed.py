"""Data-parallel training (`trainer.devices=N`, seqep.training.distributed) on 2 CPU workers with gloo: the same
weights as one process with the same global batch, resume across worker counts, a failing or killed worker,
signals, and SLURM-style tasks (submitit's local executor) as workers."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqep.config import validate
from seqep.errors import SeqepError
from seqep.tasks import dispatch
from seqep.training import checkpoint as ckpt
from seqep.training.distributed import World, cuda_index

from conftest import ROOT, TINY, TRAIN, compose_cfg, make_cfg

# 96 training sequences in global batches of 15: shares of 8 and 7, and a last batch of 6 (3 and 3)
UNEVEN = ["dataset.batch_size=15"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(run / "checkpoints" / "last.pt")["model_state_dict"]


def epochs(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "epoch"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        err = (a[name] - b[name]).abs().max().item()
        assert err <= atol, f"{name}: max |difference| {err:.3g} > {atol:g}"


def test_every_cuda_worker_gets_a_gpu_index():
    # torch.cuda.set_device("cuda") raises "Expected a torch.device with a specified index" (seen on an H200: the
    # bench's one-worker row with device=cuda); a worker of a group takes its local rank's GPU
    assert cuda_index("cuda", World()) == 0
    assert cuda_index("cuda:1", World()) == 1
    two = World(rank=1, size=2, local_rank=1, local_size=2)
    assert cuda_index("cuda", two) == 1 % max(torch.cuda.device_count(), 1)


def test_shares_are_disjoint_and_cover_every_batch():
    for n in (1, 5, 6, 15, 16):
        for size in (1, 2, 3):
            parts = [World(r, size).part(n) for r in range(size)]
            taken = [i for p in parts for i in range(n)[p]]
            assert taken == list(range(n))  # disjoint, in order, nothing left out
            assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1


@pytest.mark.parametrize("algorithm", ["ep", "bptt"])
def test_two_workers_give_the_weights_of_one_process(tmp_path, algorithm):
    """SGD: the workers' gradients summed by share equal the one-process batch mean up to float32 rounding."""
    extra = [*UNEVEN, f"algorithm={algorithm}", "algorithm.T=6", "algorithm.K=3", "optimizer=sgd",
             "optimizer.lrs=[0.05,0.05,0.05]", "trainer.epochs=3", "trainer.log_every=1"]
    if algorithm == "ep":  # one β: adaptive_beta's reruns at β/100 divide the shapes' float32 rounding by 4e-4
        extra.append("algorithm.adaptive_beta=false")
    one = dispatch(make_cfg(tmp_path / "one", *extra))
    two = dispatch(make_cfg(tmp_path / "two", *extra, "trainer.devices=2"))
    assert two["workers"] == 2 and one["workers"] == 1
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"), atol=1e-6)
    for a, b in zip(epochs(tmp_path / "one"), epochs(tmp_path / "two"), strict=True):  # reduced batch statistics
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-6)
        assert b["train/acc"] == a["train/acc"] and b["val/acc"] == a["val/acc"]  # and sharded evaluation
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-6)
    assert two["test/acc"] == one["test/acc"]
    batches = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "batch" for r in batches) == 3 * 7  # rank 0 writes every row once


def test_resume_a_two_worker_run_with_one_or_two_workers(tmp_path):
    """Adam and random-sign EP (the estimator's generator must advance alike on every worker). Fixed step counts
    and β=0.1: the float32 rounding that differs between a worker's half batch and the whole one is divided by β
    in EP's gradient, and with per-example settling it can flip an example's stop step (a tol-sized change)."""
    extra = [*UNEVEN, "algorithm.variant=random_sign", "algorithm.tol=null", "algorithm.betas=[0.0,0.1]"]
    dispatch(make_cfg(tmp_path / "straight", *extra, "trainer.epochs=3"))
    dispatch(make_cfg(tmp_path / "first", *extra, "trainer.epochs=2", "trainer.devices=2"))
    for devices in (1, 2):
        run = tmp_path / f"resumed_on_{devices}"
        summary = dispatch(make_cfg(run, *extra, "trainer.epochs=3", f"trainer.devices={devices}",
                                    f"checkpoint.resume={tmp_path / 'first'}"))
        assert summary["status"] == "completed" and summary["workers"] == devices
        assert [r["epoch"] for r in epochs(run)] == [1, 2, 3]
        # Adam divides by the root of the second moment: float32 rounding shows at 1e-5 of a weight here
        assert_same_weights(weights(tmp_path / "straight"), weights(run), atol=1e-4)


@pytest.mark.parametrize("how, says", [("raise", "RuntimeError: injected failure"),
                                       ("kill", "its process was killed by SIGKILL")])
def test_a_failing_worker_stops_every_worker_in_one_line(tmp_path, how, says):
    run = tmp_path / how
    cfg = make_cfg(run, "trainer.epochs=3", "trainer.devices=2", "algorithm._target_=distributed_rules.FailOnRank",
                   f"+algorithm.how={how}")  # batch 9: the third of epoch 2 on rank 1
    with pytest.raises(SeqepError) as err:
        dispatch(cfg)
    line = str(err.value)
    assert line.startswith("rank 1 of 2: ") and says in line and "\n" not in line
    assert multiprocessing.active_children() == []  # nothing left running
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == line
    assert ckpt.read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # the last good one stays


def test_bad_worker_counts_are_one_line(tmp_path):
    for overrides, says in ((["trainer.devices=0"], "trainer.devices=0 must be >= 1"),
                            (["trainer.devices=4", "dataset.batch_size=3"], "dataset.batch_size=3 is smaller than "
                                                                              "trainer.devices=4"),
                            (["trainer.devices=2", "task=bench"], "only task=train runs on several workers")):
        with pytest.raises(SeqepError, match=says):
            validate(compose_cfg(*TRAIN, *overrides))


def test_torchrun_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    with pytest.raises(SeqepError, match="torchrun starts one Hydra run"):
        dispatch(make_cfg(tmp_path / "run"))


def _run(*args: str, multirun: bool = False, base: list[str] = TRAIN) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *(["-m"] if multirun else []), *base, *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_run_py_two_workers_print_once_and_stop_together_on_sigterm(tmp_path):
    run = tmp_path / "run"
    proc = _run(f"hydra.run.dir={run}", "trainer.devices=2", "dataset.n_train=1600", "trainer.epochs=20",
                base=[*TINY, "algorithm.T=6", "algorithm.K=3", "logger=wandb"])
    deadline = time.time() + 120
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM "), err
    assert "leaked" not in err and "Traceback" not in err
    assert out.count("| 2 workers (gloo)") == 1  # the header once: only rank 0 prints
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, rank 0's
    epoch = ckpt.read_checkpoint(run / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= epoch < 20
    resumed = tmp_path / "resumed"
    proc = _run(f"hydra.run.dir={resumed}", f"checkpoint.resume={run}", "dataset.n_train=1600",
                f"trainer.epochs={epoch + 1}")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert [r["epoch"] for r in epochs(resumed)] == list(range(1, epoch + 2))


@pytest.mark.slow
def test_slurm_tasks_are_the_workers_of_one_run(tmp_path):
    """launcher=slurm_local with tasks_per_node=2: submitit starts two tasks of one job; they join into one run."""
    one = tmp_path / "one"
    dispatch(make_cfg(one, *UNEVEN, "optimizer=sgd", "trainer.epochs=2"))
    sweep = tmp_path / "sweep"
    proc = _run(*UNEVEN, "optimizer=sgd", "trainer.epochs=2", "launcher=slurm_local",
                "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}", multirun=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["workers"] == 2
    assert_same_weights(weights(one), weights(sweep / "0"), atol=1e-6)
    assert [r["epoch"] for r in epochs(sweep / "0")] == [1, 2]  # written once, by rank 0


def _start_a_child() -> int:
    child = multiprocessing.get_context("spawn").Process(target=print, args=("child",))
    child.start()
    child.join()
    return child.exitcode


def test_a_parallel_sweeps_job_may_start_its_workers():
    """launcher=local_parallel with trainer.devices=2: the pool's workers are not daemons, so a job can start its
    own worker processes (a daemon cannot have children)."""
    from hydra_plugins.seqep_launchers.launchers import _ParentContext

    with _ParentContext().Pool(1) as pool:
        assert pool.apply(_start_a_child) == 0
