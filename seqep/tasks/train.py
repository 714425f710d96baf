"""`task=train` and `task=test`: build the objects from the config, run the `Trainer`, return the summary
(`seqep.tasks.dispatch` writes it to `summary.json`; a stopped or failed run writes its own here).

    run_training(cfg, run_dir) -> summary dict
    run_test(cfg, run_dir)     -> summary dict     (evaluates checkpoint.load on the validation and test splits)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seqep.config import target_name
from seqep.data import iterate_batches
from seqep.diagnostics import Diagnostics
from seqep.errors import SeqepError
from seqep.training import checkpoint as ckpt
from seqep.training import distributed
from seqep.training.builders import (
    build_dataset,
    build_estimator,
    build_model,
    build_optimizer,
    build_scheduler,
    describe,
)
from seqep.training.distributed import World
from seqep.training.stop import Interrupted, StopSignals
from seqep.training.tracking import NullTracker, Tracker, resolved_config
from seqep.training.trainer import Feed, Progress, Saving, Trainer
from seqep.utils import resolve_device, resolve_dtype, say, seed_everything


def build_trainer(cfg: DictConfig, run_dir: Path, world: World | None = None) -> Trainer:
    """Data, network (weights from `checkpoint.load` if given), learning rule, optimizer, schedule, diagnostics.
    `world`: this worker's place in a data-parallel run (`seqep.training.distributed`)."""
    world = world or World()
    device = resolve_device(distributed.worker_device(str(cfg.device), world))
    dtype = resolve_dtype(str(cfg.dtype))
    dataset = build_dataset(cfg.dataset)
    data = dataset.load()
    net = build_model(cfg.model, seq_len=data.seq_len, embed_dim=data.embed_dim).to(device=device, dtype=dtype)
    if cfg.checkpoint.load:
        meta = ckpt.load_weights(net, cfg.checkpoint.load)
        say(f"loaded weights from {meta['path']} ({meta['kind']})")
    world.broadcast_parameters(net)
    optimizer = build_optimizer(cfg.optimizer, net)
    schedule = build_scheduler(cfg.scheduler, optimizer)
    generators = {"data": torch.Generator().manual_seed(cfg.seed),  # batch order
                  "estimator": torch.Generator().manual_seed(cfg.seed + 1)}  # e.g. EP random_sign
    estimator = build_estimator(cfg.algorithm, generators["estimator"], str(cfg.precision))
    t = cfg.trainer
    probe_batch = None
    if t.probe_every > 0 and len(data.val) > 0:  # the first validation examples, fixed for the whole run
        probe_batch = next(iterate_batches(data.val, data.vectors, t.probe_size, shuffle=False, device=device,
                                           dtype=dtype))
    diagnostics = Diagnostics(estimator, every=t.diagnostics_every, tol=t.diagnostics_tol,
                              probe_every=t.probe_every, probe_batch=probe_batch, probe_f64=t.probe_f64)
    return Trainer(t, net, estimator, feed(dataset, data, device, dtype, world), optimizer=optimizer, schedule=schedule,
                   diagnostics=diagnostics, saving=Saving(run_dir, resolved_config(cfg), cfg.checkpoint.save_every),
                   generators=generators)


def feed(dataset: Any, data: Any, device: torch.device, dtype: torch.dtype, world: World | None = None) -> Feed:
    """The batches of a loaded dataset at the dataset's batch sizes (evaluation: `eval_batch_size` or the same);
    in a data-parallel run each worker's share of them."""
    return Feed(data, int(dataset.batch_size), int(dataset.eval_batch_size or dataset.batch_size), device, dtype,
                world or World())


def train_on_workers(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """`trainer.devices=N`: the training in N worker processes on this machine (this process waits for them);
    rank 0's summary. A failed worker stops them all: summary.json says which rank and why."""
    devices, device = int(cfg.trainer.devices), str(cfg.device)
    plain = OmegaConf.create(resolved_config(cfg))  # plain values: the workers need no resolvers
    say(f"training on {devices} worker processes ({distributed.backend_for(device)}; global batch "
        f"{cfg.dataset.batch_size}, each worker a share of it)")
    try:
        return distributed.launch(run_training, (plain, run_dir), devices, device, run_dir)
    except distributed.WorkerFailed as err:
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if err.signal_name is None or summary.get("status") != "interrupted":
            write_json(path, {**summary, "status": "failed", "error": str(err), "workers": devices})
        raise


def workers(world: World, cfg: DictConfig) -> str:
    """The run header's note on a data-parallel run."""
    if not world.active:
        return ""
    return f" | {world.size} workers ({distributed.backend_for(str(cfg.device))}), {world.size // world.local_size} " \
           f"machine(s)"


def job_type(cfg: DictConfig) -> str:
    """The learning rule's class name in lower case (`ep`, `bptt`, `myrule`): W&B's job type."""
    return target_name(cfg.algorithm._target_)


def run_training(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train per `cfg`, select on validation, report test accuracy of the best checkpoint; returns the summary.

    `trainer.devices=N` (N > 1): N worker processes run this same function as one data-parallel training
    (`seqep.training.distributed`); rank 0 writes and returns the summary, the others return {}."""
    run_dir, started = Path(run_dir), time.time()
    if cfg.checkpoint.resume and cfg.checkpoint.load:
        raise SeqepError("give checkpoint.resume (continue a run) or checkpoint.load (start from weights), not both")
    if distributed.in_torchrun():
        raise SeqepError("torchrun starts one Hydra run (and run directory) per process: run one process with "
                         "trainer.devices=N instead (or, on SLURM, launcher=slurm with hydra.launcher.tasks_per_node)")
    world = distributed.current()
    if int(cfg.trainer.devices) > 1 and not world.active:
        return train_on_workers(cfg, run_dir)
    if world.active:
        seed_everything(int(cfg.seed))  # every worker builds the same model and draws the same batch order
    trainer = build_trainer(cfg, run_dir, world)
    resume = cfg.checkpoint.resume
    if not resume and trainer.last_path.is_file():  # this very job ran before (a SLURM requeue): go on from there
        say(f"{trainer.last_path} exists: this job ran before (e.g. requeued after its time limit); resuming it")
        resume = str(trainer.last_path)
    progress = trainer.resume(resume) if resume else Progress()
    data, net, estimator = trainer.data, trainer.net, trainer.estimator
    n_params = sum(p.numel() for p in net.parameters())
    say(f"{data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test, L={data.seq_len}, "
          f"d={data.embed_dim} | model {net.kind} fc={net.fc} ({n_params:,} parameters) | {describe(estimator)} | "
          f"{trainer.device} {precision_of(estimator, trainer.device)}{workers(world, cfg)} | {run_dir}")

    tracking = Tracker.from_config(cfg, run_dir, history=progress.history, job_type=job_type(cfg)) \
        if world.main else NullTracker()
    with StopSignals(distributed.stop_signals()) as stop, tracking as tracker:
        trainer.stop = stop
        try:
            trainer.fit(tracker, progress)
        except SeqepError as err:  # a signal, a NaN stop and the like: what finished is kept, and said
            if not world.main:
                raise
            write_json(run_dir / "summary.json", {
                "status": "interrupted" if isinstance(err, Interrupted) else "failed", "error": str(err),
                "epochs": progress.epoch, "val/best_acc": progress.best_acc if progress.best_epoch else None,
                "best_epoch": progress.best_epoch, "last_checkpoint": progress.last_good})
            raise
        test = trainer.test()
        if not world.main:
            return {}
        last = tracker.rows[-1] if tracker.rows else {}
        summary = {
            "status": "completed",
            **test,
            "val/best_acc": progress.best_acc if progress.best_epoch else None,
            "best_epoch": progress.best_epoch,
            "train/acc": last.get("train/acc"),
            "train/loss": last.get("train/loss"),
            "val/acc": last.get("val/acc"),
            "epochs": cfg.trainer.epochs,
            "time_s": time.time() - started,
            "time/epoch_s_mean": _mean(r.get("time/epoch_s") for r in tracker.rows[len(progress.history):]),
            **algorithm_summary(cfg, estimator),
            "optimizer": cfg.optimizer._target_,
            "scheduler": cfg.scheduler._target_ if cfg.scheduler is not None else None,
            "seed": cfg.seed,
            "dataset": data.name,
            "model.fc": list(net.fc),
            "n_params": n_params,
            "workers": world.size,
            "checkpoint": str(trainer.best_path) if trainer.best_path.exists() else None,
            "run_dir": str(run_dir),
        }
        tracker.log_summary(summary)
        chosen = (f"epoch {progress.best_epoch}, val acc {progress.best_acc:.4f}" if progress.best_epoch
                  else "no epoch trained")
        say(f"test acc {test['test/acc']:.4f} (loss {test['test/loss']:.4f}) with the best-on-validation "
              f"checkpoint ({chosen}) | {summary['time_s']:.0f}s total")
        images = _plot(tracker.rows, run_dir)
        if images:
            tracker.log_images(images)
    return summary


def algorithm_summary(cfg: DictConfig, estimator: Any) -> dict[str, Any]:
    """The learning rule as summary.json records it: its own description, its `_target_`, and T, K, betas if it has
    them."""
    betas = [estimator.beta_free, estimator.beta] if hasattr(estimator, "beta") else None
    return {"algorithm": describe(estimator), "algorithm._target_": cfg.algorithm._target_,
            "T": getattr(estimator, "T", None), "K": getattr(estimator, "K", None), "betas": betas,
            "precision": precision_of(estimator, resolve_device(str(cfg.device)))}


def precision_of(estimator: Any, device: torch.device) -> str:
    """The precision the learning rule runs at on `device` (`seqep.precision`: fp32 where the asked one falls back)."""
    from seqep.precision import effective_precision

    return effective_precision(getattr(estimator, "precision", "fp32"), device)


def run_test(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate `checkpoint.load` (a run dir means its best.pt) on the validation and test splits."""
    run_dir = Path(run_dir)
    target = cfg.checkpoint.load or cfg.checkpoint.resume
    if not target:
        raise SeqepError("task=test needs a checkpoint: checkpoint.load=<run dir or checkpoint file>")
    device, dtype = resolve_device(str(cfg.device)), resolve_dtype(str(cfg.dtype))
    dataset = build_dataset(cfg.dataset)
    data = dataset.load()
    net = build_model(cfg.model, seq_len=data.seq_len, embed_dim=data.embed_dim).to(device=device, dtype=dtype)
    meta = ckpt.load_weights(net, target)
    estimator = build_estimator(cfg.algorithm, torch.Generator().manual_seed(cfg.seed), str(cfg.precision))
    trainer = Trainer(cfg.trainer, net, estimator, feed(dataset, data, device, dtype))
    with Tracker.from_config(cfg, run_dir, job_type=job_type(cfg)) as tracker:
        metrics = {**trainer.evaluate("val"), **trainer.evaluate("test")}
        summary = {"status": "completed", **metrics, "checkpoint": meta["path"], "checkpoint_kind": meta["kind"],
                   "checkpoint_epoch": meta.get("epoch"), **algorithm_summary(cfg, estimator), "dataset": data.name,
                   "run_dir": str(run_dir)}
        tracker.log_summary(summary)
    say(f"{meta['path']} ({meta['kind']}): val acc {metrics['val/acc']:.4f} | test acc {metrics['test/acc']:.4f} "
          f"(loss {metrics['test/loss']:.4f})")
    return summary


# ------------------------------------------------------------------------------------------ helpers
def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _plot(rows: list[dict], run_dir: Path) -> dict[str, Path]:
    """plots/learning_curves.png and plots/summary.png (docs/dashboards.md); returns what was drawn."""
    try:
        from seqep.plots import plot_learning_curves, plot_run_summary
    except Exception as err:  # a figure must never cost a finished run (e.g. a broken matplotlib install)
        print(f"warning: could not draw the figures ({type(err).__name__}: {err})")
        return {}
    drawn = {}
    for key, draw, what in (("plots/learning_curves", plot_learning_curves, "the learning curves"),
                            ("plots/summary", plot_run_summary, "the summary figure")):
        try:
            drawn[key] = draw(rows, run_dir / f"{key}.png")
        except Exception as err:  # a figure must never cost a finished run
            print(f"warning: could not draw {what} ({type(err).__name__}: {err})")
    return drawn

