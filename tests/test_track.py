"""The metrics tracker: CSV/JSONL always; W&B offline runs read back from their files; TensorBoard."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seqep.tasks import dispatch
from seqep.training.tracking import TensorBoardLogger, Tracker, WandbLogger, resolved_config

from conftest import make_cfg, read_csv


def inspect_wandb(run_dir: Path) -> dict:
    """The one offline W&B run in run_dir, read back from its .wandb file with `wandb leet inspect --json`:
    run record (config, group, job type, name), history rows, merged summary and exit code."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(runs[0])],
                         capture_output=True, text=True, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    run = next(r["run"] for r in records if r["type"] == "run")
    summary: dict = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    return {"run": run, "config": run["config"]["update"], "summary": summary,
            "history": [r["history"]["item"] for r in records if r["type"] == "history"],
            "exit_code": next(r["exit"]["exit_code"] for r in records if r["type"] == "exit")}


def test_two_wandb_jobs_log_config_and_epoch_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = {}
    for T in (5, 7):
        run = tmp_path / f"T{T}"
        dispatch(make_cfg(run, "logger=wandb", "logger.wandb.group=tk", f"algorithm.T={T}", "trainer.epochs=2"))
        runs[T] = run
    for T, run in runs.items():
        logged = inspect_wandb(run)
        record, history, config = logged["run"], logged["history"], logged["config"]
        assert logged["exit_code"] == 0
        assert config["algorithm"]["T"] == T and config["model"]["fc"] == [8, 2] and "hydra" not in config
        assert config["dataset"]["name"] == "synth_sentiment"
        assert record["job_type"] == "ep" and record["run_group"] == "tk"
        assert record["display_name"] == f"ep_synth_sentiment-T{T}"
        rows = read_csv(run / "metrics.csv")
        assert [h["_step"] for h in history] == [1, 2]
        for h, row in zip(history, rows):
            for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr/0", "time/epoch_s"):
                assert h[key] == pytest.approx(float(row[key]), rel=1e-12), key
        local = json.loads((run / "summary.json").read_text())
        assert logged["summary"]["test/acc"] == local["test/acc"]
        assert logged["summary"]["best_epoch"] == local["best_epoch"]


def test_wandb_run_is_marked_failed_on_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(tmp_path, "logger=wandb", "logger.wandb.mode=offline")
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker.from_config(cfg, tmp_path) as tracker:
            tracker.log_epoch(1, {"train/loss": 0.5})
            raise RuntimeError("boom")
    logged = inspect_wandb(tmp_path)
    assert logged["exit_code"] == 1  # shown as failed
    assert logged["history"][0]["train/loss"] == 0.5


def test_csv_takes_new_metric_names_in_any_epoch(tmp_path):
    with Tracker(tmp_path) as tracker:
        tracker.log_epoch(1, {"train/loss": 1.0})
        tracker.log_epoch(2, {"train/loss": 0.5, "relax/free/max_change": 0.02, "ep/cos/synapses.0.weight": 0.9})
        tracker.log_batch(step=7, metrics={"train/loss": 0.7}, epoch=2)
        tracker.log_summary({"test/acc": 0.75})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "train/loss", "relax/free/max_change", "ep/cos/synapses.0.weight"]
    assert rows[0]["relax/free/max_change"] == "" and rows[1]["relax/free/max_change"] == "0.02"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["epoch", "epoch", "batch"] and lines[2]["step"] == 7


def test_tensorboard_backend_writes_event_files(tmp_path):
    with Tracker(tmp_path, {"tensorboard": TensorBoardLogger()}) as tracker:
        tracker.log_epoch(1, {"train/loss": 1.0, "val/acc": 0.6})
        tracker.log_summary({"test/acc": 0.7})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/acc", "summary/test/acc"} <= set(events.Tags()["scalars"])
    assert events.Scalars("val/acc")[0].value == pytest.approx(0.6)


def test_logger_options_and_resolved_config(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert WandbLogger().mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger().mode == "disabled" and WandbLogger(mode="online").mode == "online"  # explicit mode wins
    with pytest.raises(ValueError, match="mode='maybe' is not allowed; choose one of: offline, online, disabled"):
        WandbLogger(mode="maybe")
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "hydra": {"x": 1}})
    assert resolved_config(cfg) == {"a": 1, "b": 1}


def test_two_loggers_at_once(tmp_path, monkeypatch):
    """logger=[wandb,tensorboard]: both get every epoch."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    dispatch(make_cfg(run, "logger=[wandb,tensorboard]", "logger.wandb.mode=offline", "trainer.epochs=1"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = inspect_wandb(run)
    acc = float(read_csv(run / "metrics.csv")[0]["val/acc"])
    assert events.Scalars("val/acc")[0].value == pytest.approx(acc)
    assert logged["history"][0]["val/acc"] == pytest.approx(acc)


@pytest.mark.figures
def test_tensorboard_gets_the_config_the_hparams_and_the_figures(tmp_path):
    run = tmp_path / "run"
    dispatch(make_cfg(run, "logger=tensorboard", "trainer.epochs=1"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"plots/learning_curves", "plots/summary"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]
    assert "algorithm" in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert events.PluginTagToContent("hparams")  # the HPARAMS tab: config against test/val accuracy
