"""Metrics sinks: `metrics.csv` and `metrics.jsonl` always, plus W&B or TensorBoard as `cfg.logger` says.

One `Tracker` per job. Metric names are free-form strings with a `/` namespace (`train/loss`, `val/acc`,
`lr/0`, `time/epoch_s`, and later `relax/...`, `ep/...`, `grad/...`, `attn/...`): a name may first appear in
any epoch; the CSV is rewritten with the union of columns, so adding a metric never needs a schema change.

    with Tracker(cfg, run_dir) as tracker:        # W&B run finished (exit code 1 on an exception) on exit
        tracker.log_epoch(1, {"train/loss": 0.2, "val/acc": 0.7})
        tracker.log_batch(step=50, metrics={"train/loss": 0.21}, epoch=1)   # metrics.jsonl only
        tracker.log_summary({"test/acc": 0.76})
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqep.errors import SeqepError

BACKENDS = ("wandb", "tensorboard", "none")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved where possible, without the `hydra` node."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside a Hydra app (e.g. ${hydra:...})
        data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data


def logger_backend(cfg: DictConfig) -> str:
    """`cfg.logger.name` when the schema has it, else inferred from which sub-node the logger group set."""
    name = OmegaConf.select(cfg, "logger.name", default=None)
    if name is None:
        if OmegaConf.select(cfg, "logger.wandb", default=None) is not None:
            name = "wandb"
        elif OmegaConf.select(cfg, "logger.tensorboard", default=None) is not None:
            name = "tensorboard"
        else:
            name = "none"
    if name not in BACKENDS:
        raise SeqepError(f"logger.name={name!r} is not a logger; choose one of {', '.join(BACKENDS)}")
    return str(name)


def _clean(value: Any) -> Any:
    """JSON-friendly scalar: tensors and numpy scalars become floats; NaN/Inf stay (json writes NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


class Tracker:
    """Writes one row per epoch to metrics.csv/metrics.jsonl and forwards it to the configured backend."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, history: Iterable[dict] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        self.backend = logger_backend(cfg)
        self._wandb_run = None
        self._tb_writer = None
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        if self.backend == "wandb":
            self._wandb_run = _start_wandb(cfg, self.run_dir)
        elif self.backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb_writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        for row in history:  # epochs carried over from a resumed run, so the curves stay whole
            row = dict(row)
            self.log_epoch(int(row.pop("epoch")), row)

    # ----------------------------------------------------------------------------------------- logging
    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        row = {"epoch": epoch, **{k: _clean(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._write_jsonl({"kind": "epoch", **row})
        self._write_csv()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in row.items() if k != "epoch"} | {"epoch": epoch}, step=epoch)
        if self._tb_writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb_writer.add_scalar(key, value, global_step=epoch)
            self._tb_writer.flush()

    def log_batch(self, step: int, metrics: dict[str, Any], epoch: int) -> None:
        """A per-N-batch row (metrics.jsonl only: W&B steps are epochs)."""
        self._write_jsonl({"kind": "batch", "epoch": epoch, "step": step,
                           **{k: _clean(v) for k, v in metrics.items()}})

    def log_summary(self, summary: dict[str, Any]) -> None:
        summary = {k: _clean(v) for k, v in summary.items()}
        if self._wandb_run is not None:
            for key, value in summary.items():
                self._wandb_run.summary[key] = value
        if self._tb_writer is not None:
            step = self.rows[-1]["epoch"] if self.rows else 0
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb_writer.add_scalar(f"summary/{key}", value, global_step=step)
            self._tb_writer.flush()

    # ------------------------------------------------------------------------------------------- files
    def _write_jsonl(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    # ----------------------------------------------------------------------------------------- closing
    def close(self, exit_code: int = 0) -> None:
        """Always call (the context manager does): finishes the W&B run, failed when exit_code != 0."""
        self._jsonl.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
        if self._wandb_run is not None:
            run, self._wandb_run = self._wandb_run, None
            run.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


def _start_wandb(cfg: DictConfig, run_dir: Path):
    """wandb.init with the resolved config; files under <run_dir>/wandb; offline unless asked otherwise."""
    import wandb

    wb = cfg.logger.wandb
    tags = OmegaConf.select(wb, "tags", default=None)
    group = OmegaConf.select(wb, "group", default=None)
    name = OmegaConf.select(cfg, "name", default=None) or run_dir.name
    if group:  # jobs of one sweep share cfg.name; their run dirs (job numbers) tell them apart
        name = f"{name}-{run_dir.name}"
    try:
        return wandb.init(
            project=OmegaConf.select(wb, "project", default="seqep"),
            entity=OmegaConf.select(wb, "entity", default=None),
            group=group,
            job_type=OmegaConf.select(cfg, "algorithm.name", default=None),
            name=name,
            notes=OmegaConf.select(wb, "notes", default=None),
            tags=list(tags) if tags else None,
            config=resolved_config(cfg),
            dir=str(run_dir),
            mode=OmegaConf.select(wb, "mode", default="offline"),
            reinit="finish_previous",
        )
    except Exception as err:  # e.g. online without credentials
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SeqepError(
            f"could not start the W&B run ({first}); run `wandb login` or set WANDB_API_KEY for "
            "logger.wandb.mode=online, or use logger.wandb.mode=offline (sync later with `wandb sync`)"
        ) from err

