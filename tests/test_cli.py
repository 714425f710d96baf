"""`python run.py` as a user types it: help, config printing, a tiny training run, and every bad input of the
suite issue (point 7) failing with one clear line and a non-zero exit status."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY as SHARED_TINY

ROOT = Path(__file__).resolve().parents[1]
TINY = [*SHARED_TINY, "algorithm.T=4", "algorithm.K=2", "trainer.epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_eval_batches=1", "logger=none"]


def run_cli(*args: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """run.py in a subprocess, outputs under tmp_path, W&B offline and quiet."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEQEP_DATA": str(tmp_path / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), f"paths.output_root={tmp_path / 'out'}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, status: int = 2) -> str:
    """Exit status, no traceback, and the error as the only line on stderr."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny training run shared by the tests that need a checkpoint."""
    tmp_path = tmp_path_factory.mktemp("trained")
    proc = run_cli(*TINY, "name=tiny", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "out").glob("*/*_tiny")
    return run_dir


def test_help_lists_groups_and_keys(tmp_path):
    proc = run_cli("--help", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in ["seqep", "algorithm: bptt", "adamw", "warmup_cosine", "paper_snli", "launcher:", "sweep:",
                 "optimizer:", "lrs:", "_target_: seqep.estimators.EP"]:
        assert text in proc.stdout


def test_cfg_job_shows_every_interface_key(tmp_path):
    proc = run_cli("--cfg", "job", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    for key in ["task", "seed", "device", "dtype", "name"]:
        assert key in cfg
    expected = {"algorithm": ["_target_", "T", "K", "betas", "variant", "field_mode", "tol"],
                "model": ["_target_", "kind", "fc", "activation", "attn_scale", "mask_padding", "out_bias_init"],
                "dataset": ["_target_", "name", "seq_len", "batch_size", "eval_batch_size"],
                "optimizer": ["_target_", "_partial_", "lrs", "lr", "eps"],
                "scheduler": ["_target_", "_partial_", "interval", "T_max", "eta_min"],
                "trainer": ["epochs", "limit_train_batches", "limit_eval_batches"],
                "checkpoint": ["load", "resume"], "logger": ["wandb"]}
    for group, keys in expected.items():
        assert set(keys) <= set(cfg[group]), group
    assert "truncate" not in cfg["algorithm"] and "momentum" not in cfg["optimizer"]  # only the class's own keys


def test_info_runs(tmp_path):
    proc = run_cli("--info", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Defaults List" in proc.stdout


def test_tiny_training_run_writes_the_run_directory(trained_run):
    for name in ["config.yaml", "metrics.csv", "summary.json", ".hydra/config.yaml", "checkpoints/best.pt"]:
        assert (trained_run / name).exists(), name
    summary = json.loads((trained_run / "summary.json").read_text())
    assert 0.0 <= summary["test/acc"] <= 1.0 and "val/best_acc" in summary
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["device"] == "cpu" and config["model"]["fc"] == [8, 2]


def test_task_test_evaluates_the_checkpoint(trained_run, tmp_path):
    proc = run_cli(*TINY, "task=test", f"checkpoint.load={trained_run / 'checkpoints' / 'best.pt'}",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "test acc" in proc.stdout


# ------------------------------------------------------------------------------------------ bad input

def test_unknown_group_option(tmp_path):
    proc = run_cli("dataset=nope", tmp_path=tmp_path)
    assert_one_line_error(proc, "dataset=nope is not an option", "rt_snippets", "synth_nli")
    assert not (tmp_path / "out").exists()


def test_missing_data_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("dataset=imdb", f"dataset.root={empty}", tmp_path=tmp_path)
    line = assert_one_line_error(proc, str(empty))
    assert "aclImdb" in line


def test_wrong_number_of_learning_rates(tmp_path):
    proc = run_cli("optimizer.lrs=[0.001,0.001]", tmp_path=tmp_path)
    assert_one_line_error(proc, "optimizer.lrs has 2 values but model 'sentiment' with fc=[256, 2] has 3 "
                                "synapses: give one learning rate per synapse, projections first: [proj, fc1, fc2]")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    proc = run_cli(*TINY, "task=test", f"checkpoint.load={bad}", tmp_path=tmp_path)
    assert_one_line_error(proc, str(bad))


def test_truncated_checkpoint(trained_run, tmp_path):
    data = (trained_run / "checkpoints" / "best.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    proc = run_cli(*TINY, "task=test", f"checkpoint.load={bad}", tmp_path=tmp_path)
    assert_one_line_error(proc, str(bad))


def test_mismatched_checkpoint(trained_run, tmp_path):
    tiny = [a for a in TINY if not a.startswith("model.fc")]
    proc = run_cli(*tiny, "model.fc=[16,2]", "task=test",
                   f"checkpoint.load={trained_run / 'checkpoints' / 'best.pt'}", tmp_path=tmp_path)
    assert_one_line_error(proc)


def test_missing_checkpoint_file(tmp_path):
    proc = run_cli(*TINY, "task=test", f"checkpoint.load={tmp_path / 'nope.pt'}", tmp_path=tmp_path)
    assert_one_line_error(proc, "nope.pt")


def test_cuda_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run_cli(*TINY, "device=cuda", tmp_path=tmp_path)
    assert_one_line_error(proc, "device=cuda")


@pytest.mark.parametrize("override, key", [("algorithm.TT=3", "algorithm.TT"), ("algorithm.T=abc", "algorithm.T"),
                                           ("trainer.epoch=2", "trainer.epoch")])
def test_misspelt_key_or_wrong_type_names_the_key_without_traceback(override, key, tmp_path):
    proc = run_cli(override, tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and key in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 8


@pytest.mark.parametrize("override, message", [
    ("+algorithm.TT=3", "algorithm.TT is not a key of seqep.estimators.EP; its keys are: T, K, betas"),
    ("+optimizer.momentum=0.9", "optimizer.momentum is not a key of torch.optim.Adam"),
    ("+dataset.n_trian=5", "dataset.n_trian is not a key of seqep.data.RtSnippets"),
    ("+logger.wandb.projet=x", "logger.wandb.projet is not a key of seqep.training.tracking.WandbLogger"),
    ("algorithm.variant=both", "algorithm.variant='both' is not allowed; choose one of: symmetric, positive"),
    ("optimizer.lr=-1", "optimizer.lr=-1.0 must be >= 0"),
    ("model.activation=relu", "model.activation='relu' is not allowed; choose one of: my_hard_sig"),
])
def test_added_keys_and_constructor_errors_are_one_line_before_anything_runs(override, message, tmp_path):
    proc = run_cli(override, tmp_path=tmp_path)
    assert_one_line_error(proc, message)
    assert not list(tmp_path.glob("out/*/*/config.yaml"))  # validated before the run wrote its config


def test_task_test_takes_the_runs_stored_config(trained_run, tmp_path):
    """The run was trained with T=4 on synth_sentiment; task=test given only the run evaluates exactly that (not
    the composed default rt_snippets at T=20), and an explicit change is recorded."""
    proc = run_cli("task=test", f"checkpoint.load={trained_run}", "logger=none", "trainer.limit_eval_batches=1",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (test_dir,) = (tmp_path / "out").glob("*/*_test_tiny")
    summary = json.loads((test_dir / "summary.json").read_text())
    assert summary["task"] == "test" and summary["T"] == 4 and summary["dataset"] == "synth_sentiment"
    assert summary["changed_from_stored"] == [] and summary["config_from"].endswith("best.pt")
    changed = run_cli("task=test", f"checkpoint.load={trained_run}", "algorithm.T=9", "logger=none",
                      "trainer.limit_eval_batches=1", tmp_path=tmp_path)
    assert "changed on the command line: algorithm.T=9 (stored: 4)" in changed.stdout
    (newest,) = sorted((tmp_path / "out").glob("*/*_test_tiny"))[1:]
    summary = json.loads((newest / "summary.json").read_text())
    assert summary["T"] == 9 and summary["changed_from_stored"] == ["algorithm.T=9 (stored: 4)"]


def test_a_run_with_redirected_output_has_no_bar_and_a_complete_run_log(tmp_path):
    """On a cluster stderr is a file: trainer.progress=auto draws no bar there (no \\r floods), and run.log holds
    the header, every epoch line and the result, as stdout does (plain there)."""
    tiny = [a for a in TINY if not a.startswith("trainer.progress")]
    proc = run_cli(*tiny, "trainer.epochs=2", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr
    (run_dir,) = (tmp_path / "out").glob("*/*")
    log = (run_dir / "run.log").read_text()
    for line in ("epoch   1/2 |", "epoch   2/2 |", "test acc", "synth_sentiment: "):
        assert line in log and line in proc.stdout
    assert "[seqep][INFO] - epoch   2/2" in log and "\nepoch   2/2 |" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    env = summary["environment"]
    assert len(env["git_commit"]) == 40 and env["torch"].startswith("2.") and env["device"] == "cpu"
    assert env["allocator"] == ("glibc, freed memory kept" if platform.libc_ver()[0] == "glibc" else "system")


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_the_run_cleanly_and_it_resumes(tmp_path, sig, status):
    """SIGTERM (timeout, docker, SLURM) or SIGINT mid-training: the run stops after its batch within seconds, W&B is
    finished as failed with the epochs kept, summary.json says interrupted, one line says how to resume."""
    import signal
    import time

    sys.path.insert(0, str(ROOT / "tests"))
    from test_track import inspect_wandb

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEQEP_DATA": str(tmp_path / "data")}
    tiny = [a for a in TINY if not a.startswith(("trainer.epochs", "trainer.limit_train", "logger"))]
    args = [f"paths.output_root={tmp_path / 'out'}", *tiny, "trainer.epochs=200", "logger=wandb", "name=sig"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any('"kind": "epoch"' in p.read_text()
                                             for p in (tmp_path / "out").glob("*/*/metrics.jsonl")):
        time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    sent = time.time()
    out, err = proc.communicate(timeout=60)
    assert time.time() - sent < 10 and proc.returncode == status, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"stopped by {sig}")
    assert "continue with: python run.py checkpoint.resume=" in err
    (run_dir,) = (tmp_path / "out").glob("*/*_sig")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] >= 1 and "last.pt" in summary["last_checkpoint"]
    logged = inspect_wandb(run_dir)
    assert logged["exit_code"] != 0 and len(logged["history"]) == summary["epochs"]
    resumed = run_cli(*tiny, "trainer.epochs=3", f"checkpoint.resume={run_dir}", "logger=none", tmp_path=tmp_path)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout


@pytest.mark.slow
def test_a_signal_stops_a_local_sweep_not_just_its_job(tmp_path):
    """Ctrl-C or SIGTERM to `run.py -m` stops the sweep: the running job is interrupted (resumable) and the next one
    does not start (a signal used to end only the job, and the sweep went on with the next)."""
    import signal
    import time

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEQEP_DATA": str(tmp_path / "data")}
    tiny = [a for a in TINY if not a.startswith(("trainer.epochs", "trainer.limit_train"))]
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", f"paths.output_root={tmp_path / 'out'}",
                             *tiny, "trainer.epochs=200", "seed=0,1"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any('"kind": "epoch"' in p.read_text()
                                             for p in (tmp_path / "out").glob("multirun/*/*/0/metrics.jsonl")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM"), err
    (sweep,) = (tmp_path / "out").glob("multirun/*/*")
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists()


@pytest.mark.slow
def test_two_runs_in_one_directory_the_second_fails_before_writing(tmp_path):
    import signal
    import time

    shared = tmp_path / "same"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEQEP_DATA": str(tmp_path / "data")}
    tiny = [a for a in TINY if not a.startswith(("trainer.epochs", "trainer.limit_train"))]
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={shared}", *tiny, "seed=0",
                              "trainer.epochs=500"], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (shared / "metrics.csv").is_file():
        time.sleep(0.1)
    hydra_config = (shared / ".hydra" / "config.yaml").read_text()
    second = run_cli(f"hydra.run.dir={shared}", *tiny, "seed=1", tmp_path=tmp_path)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    line = assert_one_line_error(second, "belongs to another run that is still going")
    assert str(shared) in line
    assert yaml.safe_load((shared / "config.yaml").read_text())["seed"] == 0
    assert (shared / ".hydra" / "config.yaml").read_text() == hydra_config  # Hydra did not write over it either
    from seqep.tasks import check_run_dir_free

    check_run_dir_free(shared)  # the first run ended: its directory is free again (the kernel dropped the lock)


def test_an_output_root_that_takes_no_files_is_one_line(tmp_path):
    proc = run_cli(*TINY, "paths.output_root=/sys/seqep-outputs", tmp_path=tmp_path)
    assert_one_line_error(proc, "cannot write run directories under /sys/seqep-outputs",
                          "choose a writable paths.output_root")
