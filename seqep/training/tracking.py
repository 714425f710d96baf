"""Metrics: `metrics.csv` and `metrics.jsonl` always, plus every logger of `cfg.logger` (W&B, TensorBoard, or a
class of one's own with the same methods), several at once with `logger=[wandb,tensorboard]`.

One `Tracker` per job. Metric names are free-form strings with a `/` namespace (`train/loss`, `val/acc`,
`lr/0`, `time/epoch_s`, `relax/...`, `ep/...`, `grad/...`, `attn/...`): a name may first appear in any epoch; the
CSV is rewritten with the union of columns, so adding a metric never needs a schema change.

    with Tracker.from_config(cfg, run_dir) as tracker:   # loggers finished (failed on an exception) on exit
        tracker.log_epoch(1, {"train/loss": 0.2, "val/acc": 0.7})
        tracker.log_batch(step=50, metrics={"train/loss": 0.21}, epoch=1)   # metrics.jsonl only
        tracker.log_summary({"test/acc": 0.76})
        tracker.log_images({"plots/summary": path})

A logger is any object with `start(run: RunInfo)`, `log_metrics(metrics, step)`, `log_summary(summary)`,
`log_images(images, step)` and `finish(exit_code)` (`log_table(name, dataframe)` optional).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqep.errors import SeqepError
from seqep.utils import flatten

WANDB_MODES = ("offline", "online", "disabled")


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved where possible, without the `hydra` node."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation that only resolves inside a Hydra app (e.g. ${hydra:...})
        data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return data


@dataclass
class RunInfo:
    """What a logger is told about the run when it starts."""

    run_dir: Path
    name: str
    job_type: str | None = None  # the learning rule's class, lower case (ep, bptt, myrule)
    config: dict[str, Any] = field(default_factory=dict)


def _clean(value: Any) -> Any:
    """JSON-friendly scalar: tensors and numpy scalars become floats; NaN/Inf stay (json writes NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    return value


# ------------------------------------------------------------------------------------------ loggers
class WandbLogger:
    """Weights & Biases; files under `<run dir>/wandb`. `mode=None` takes `$WANDB_MODE`, else offline; `group=None`
    is the sweep in a multirun (set by seqep.tasks), else no group."""

    def __init__(self, mode: str | None = None, project: str = "seqep", entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, notes: str | None = None) -> None:
        mode = mode if mode is not None else os.environ.get("WANDB_MODE", "offline")
        if mode not in WANDB_MODES:
            raise ValueError(f"mode={mode!r} is not allowed; choose one of: {', '.join(WANDB_MODES)}")
        self.mode, self.project, self.entity, self.group = mode, project, entity, group
        self.tags, self.notes, self.run = list(tags or []), notes, None

    def start(self, run: RunInfo) -> None:
        import wandb

        name = f"{run.name}-{run.run_dir.name}" if self.group else run.name  # jobs of a sweep share run.name
        try:
            self.run = wandb.init(project=self.project, entity=self.entity, group=self.group, job_type=run.job_type,
                                  name=name, notes=self.notes, tags=self.tags or None, config=run.config,
                                  dir=str(run.run_dir), mode=self.mode, reinit="finish_previous")
        except Exception as err:  # e.g. online without credentials
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SeqepError(
                f"could not start the W&B run ({first}); run `wandb login` or set WANDB_API_KEY for "
                "logger.wandb.mode=online, or use logger.wandb.mode=offline (sync later with `wandb sync`)"
            ) from err

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log({**metrics, "epoch": step}, step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value

    def log_images(self, images: Mapping[str, Path], step: int | None = None) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path)) for key, path in images.items()})

    def log_table(self, name: str, frame: Any) -> None:
        import wandb

        self.run.log({name: wandb.Table(dataframe=frame)})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)


class TensorBoardLogger:
    """TensorBoard event files under `<run dir>/<subdir>` (`tensorboard --logdir outputs`)."""

    def __init__(self, subdir: str = "tensorboard") -> None:
        self.subdir, self.writer, self.step, self.config = subdir, None, 0, {}

    def start(self, run: RunInfo) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.run_dir / self.subdir))
        self.config = run.config
        if run.config:  # the TEXT tab shows the whole config; the HPARAMS tab gets it with the summary
            self.writer.add_text("config", "```\n" + yaml.safe_dump(run.config, sort_keys=False) + "```")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        self.step = step
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        metrics = {}
        for key, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"summary/{key}", value, global_step=self.step)
                if key.startswith(("test/", "val/")):
                    metrics[f"hparam/{key}"] = value
        if self.config:  # the config as hyper-parameters, against the final accuracies
            hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                       for k, v in flatten(self.config).items() if not k.startswith(("paths.", "logger."))}
            self.writer.add_hparams(hparams, metrics, run_name=".", global_step=self.step)
        self.writer.flush()

    def log_images(self, images: Mapping[str, Path], step: int | None = None) -> None:
        import matplotlib.image as mpimg

        for key, path in images.items():
            self.writer.add_image(key, mpimg.imread(str(path))[..., :3], global_step=step or self.step,
                                  dataformats="HWC")
        self.writer.flush()

    def finish(self, exit_code: int = 0) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------------ the tracker
class Tracker:
    """Writes one row per epoch to metrics.csv/metrics.jsonl and forwards it to every logger."""

    def __init__(self, run_dir: str | os.PathLike, loggers: Mapping[str, Any] | None = None,
                 run: RunInfo | None = None, history: Iterable[dict] = ()) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        self.loggers: dict[str, Any] = {}
        # written anew: a resumed run replays its history rows below (into its own directory too, without doubles)
        self._jsonl = open(self.jsonl_path, "w", encoding="utf-8")
        run = run or RunInfo(self.run_dir, self.run_dir.name)
        try:
            for name, logger in (loggers or {}).items():
                logger.start(run)
                self.loggers[name] = logger
        except BaseException:
            self.close(exit_code=1)
            raise
        for row in history:  # epochs carried over from a resumed run, so the curves stay whole
            row = dict(row)
            self.log_epoch(int(row.pop("epoch")), row)

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: str | os.PathLike, history: Iterable[dict] = (),
                    job_type: str | None = None) -> Tracker:
        """The loggers of `cfg.logger`, told the run's name and resolved config."""
        from seqep.training.builders import build_loggers

        loggers = build_loggers(OmegaConf.select(cfg, "logger", default=None))
        run = RunInfo(Path(run_dir), str(OmegaConf.select(cfg, "name", default=None) or Path(run_dir).name),
                      job_type, resolved_config(cfg))
        return cls(run_dir, loggers, run, history)

    # ----------------------------------------------------------------------------------------- logging
    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        row = {"epoch": epoch, **{k: _clean(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._write_jsonl({"kind": "epoch", **row})
        self._write_csv()
        for logger in self.loggers.values():
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, epoch)

    def log_batch(self, step: int, metrics: dict[str, Any], epoch: int) -> None:
        """A per-N-batch row (metrics.jsonl only: logger steps are epochs)."""
        self._write_jsonl({"kind": "batch", "epoch": epoch, "step": step,
                           **{k: _clean(v) for k, v in metrics.items()}})

    def log_summary(self, summary: dict[str, Any]) -> None:
        summary = {k: _clean(v) for k, v in summary.items()}
        for logger in self.loggers.values():
            logger.log_summary(summary)

    def log_images(self, images: dict[str, Path]) -> None:
        """Figures already written to disk; a logger that fails to take one only warns (the files stay)."""
        step = self.rows[-1]["epoch"] if self.rows else 0
        for name, logger in self.loggers.items():
            try:
                logger.log_images(images, step)
            except Exception as err:
                print(f"warning: could not log the figures to {name} ({type(err).__name__}: {err})")

    def log_table(self, name: str, frame: Any) -> None:
        for logger in self.loggers.values():
            if hasattr(logger, "log_table"):
                logger.log_table(name, frame)

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
        """Always call (the context manager does): finishes every logger, failed when exit_code != 0."""
        if not self._jsonl.closed:
            self._jsonl.close()
        loggers, self.loggers = self.loggers, {}
        for logger in loggers.values():
            logger.finish(exit_code=exit_code)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=0 if exc_type is None else 1)


class NullTracker(Tracker):
    """What the workers other than rank 0 of a data-parallel run log to: nothing (rank 0 writes every file)."""

    def __init__(self) -> None:
        self.rows, self.loggers = [], {}

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        pass

    def log_batch(self, step: int, metrics: dict[str, Any], epoch: int) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass

    def log_images(self, images: dict[str, Path]) -> None:
        pass

    def log_table(self, name: str, frame: Any) -> None:
        pass

    def close(self, exit_code: int = 0) -> None:
        pass
