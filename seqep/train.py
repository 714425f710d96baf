"""Training and evaluation: epochs, validation, best-on-validation checkpoints, resume, test.

    run_training(cfg, run_dir) -> summary dict    (task=train)
    run_test(cfg, run_dir)     -> summary dict    (task=test: evaluates checkpoint.load)

Per epoch: train with the configured estimator (EP or BPTT fills p.grad, the optimizer steps), evaluate on
the validation split, step the cosine schedule, write `checkpoints/last.pt` (full resume state) and, when
validation accuracy improved, `checkpoints/best.pt`. At the end the best-on-validation weights are evaluated
once on the test split: the test set never chooses anything.
"""

from __future__ import annotations

import json
import math
import os
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from seqep import checkpoint as ckpt
from seqep.data import iterate_batches, load_dataset
from seqep.diagnostics import Diagnostics
from seqep.errors import SeqepError
from seqep.estimators import Estimator, build_estimator
from seqep.network import HopfieldEPNet, build_model
from seqep.track import Tracker, resolved_config

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NonFiniteError(SeqepError):
    """NaN or Inf in states, loss or weights: the run stops, the last good checkpoint stays."""


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, key, default=default)


# ------------------------------------------------------------------------------------------ building
def make_model(cfg: DictConfig, bundle) -> HopfieldEPNet:
    kind = _get(cfg, "model.kind", bundle.kind)
    if kind != bundle.kind:
        raise SeqepError(f"model.kind={kind} does not fit dataset {bundle.name} ({bundle.kind} data); "
                         f"use model={bundle.kind}")
    fc = list(cfg.model.fc)
    if not fc or fc[-1] != bundle.n_classes:
        raise SeqepError(f"model.fc={fc} must end with the number of classes of {bundle.name} "
                         f"({bundle.n_classes}), e.g. model.fc=[128,{bundle.n_classes}]")
    try:
        net = build_model(kind=kind, seq_len=bundle.seq_len, embed_dim=bundle.embed_dim, fc=fc,
                          activation=_get(cfg, "model.activation", "my_hard_sig"),
                          attn_scale=_get(cfg, "model.attn_scale"),
                          mask_padding=bool(_get(cfg, "model.mask_padding", False)))
    except ValueError as err:
        raise SeqepError(str(err)) from None
    bias = _get(cfg, "model.out_bias_init")
    if bias is not None:  # SPEC §8 pitfall 2: a positive output bias keeps outputs off the floor at init
        with torch.no_grad():
            net.synapses[-1].bias.fill_(float(bias))
    return net


def make_optimizer(cfg: DictConfig, net: HopfieldEPNet) -> torch.optim.Optimizer:
    """One parameter group per synapse with its own learning rate (`optimizer.lrs`, projections first)."""
    lrs = list(cfg.optimizer.lrs)
    if len(lrs) != len(net.synapses):
        names = ", ".join(f"{i}: {_synapse_name(net, i)}" for i in range(len(net.synapses)))
        raise SeqepError(f"optimizer.lrs has {len(lrs)} entries but the model has {len(net.synapses)} synapses "
                         f"({names}); give one learning rate per synapse in that order, projections first")
    groups = [{"params": list(syn.parameters()), "lr": float(lr)} for syn, lr in zip(net.synapses, lrs)]
    name = _get(cfg, "optimizer.name", "adam")
    wd = float(_get(cfg, "optimizer.weight_decay", 0.0) or 0.0)
    if name == "adam":
        # fused: one kernel for all tensors (SNLI's 12 M parameters: 7 ms instead of 42 ms per step, docs/benchmarks.md)
        return torch.optim.Adam(groups, eps=float(_get(cfg, "optimizer.eps", 1e-8)), weight_decay=wd, fused=True)
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=float(_get(cfg, "optimizer.momentum", 0.0) or 0.0),
                               weight_decay=wd)
    raise SeqepError(f"optimizer.name={name!r} is not supported; use optimizer=adam or optimizer=sgd")


def _synapse_name(net: HopfieldEPNet, i: int) -> str:
    w = net.synapses[i].weight
    kind = "projection" if i < net.n_proj else "dense"
    return f"{kind} {w.shape[1]}->{w.shape[0]}"


def make_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer):
    name = _get(cfg, "scheduler.name", "none")
    if name in (None, "none"):
        return None
    if name == "cosine":
        t_max, eta_min = int(_get(cfg, "scheduler.T_max", 100)), float(_get(cfg, "scheduler.eta_min", 1e-5))
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
    raise SeqepError(f"scheduler.name={name!r} is not supported; use scheduler=cosine or scheduler=none")


def make_estimator(cfg: DictConfig, generator: torch.Generator) -> Estimator:
    try:
        return build_estimator(cfg.algorithm, generator=generator)
    except ValueError as err:
        raise SeqepError(str(err)) from None


def make_diagnostics(cfg: DictConfig, estimator: Estimator, bundle, device, dtype) -> Diagnostics:
    """EP diagnostics (seqep/diagnostics.py); the probe batch is the first examples of the validation split."""
    probe_every = int(_get(cfg, "trainer.probe_every", 1) or 0)
    probe_batch = None
    if probe_every > 0 and len(bundle.val.labels) > 0:
        size = int(_get(cfg, "trainer.probe_size", 64))
        probe_batch = next(iterate_batches(bundle.val, bundle.vectors, size, shuffle=False, device=device,
                                           dtype=dtype))
    return Diagnostics(estimator, every=int(_get(cfg, "trainer.diagnostics_every", 10) or 0),
                       tol=float(_get(cfg, "trainer.diagnostics_tol", 1e-3)), probe_every=probe_every,
                       probe_batch=probe_batch)


def _device_dtype(cfg: DictConfig) -> tuple[torch.device, torch.dtype]:
    device = str(_get(cfg, "device", "cpu"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device), DTYPES[str(_get(cfg, "dtype", "float32"))]


# ------------------------------------------------------------------------------------------ loops
def _batch_stats(output: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Summed loss ½‖s_out − e_y‖², number correct and number of argmax ties (dead outputs, SPEC §8)."""
    target = torch.nn.functional.one_hot(y, output.shape[1]).to(output.dtype)
    loss = 0.5 * ((output - target) ** 2).sum(1)
    top = output.max(1, keepdim=True).values
    ties = ((output == top).sum(1) > 1).sum()
    return float(loss.sum()), float((output.argmax(1) == y).sum()), float(ties)


def _n_batches(split, batch_size: int, limit: int | None) -> int:
    n = math.ceil(len(split.labels) / batch_size)
    return n if limit is None else min(n, int(limit))


@torch.no_grad()
def evaluate(net: HopfieldEPNet, estimator: Estimator, split, bundle, cfg: DictConfig,
             device: torch.device, dtype: torch.dtype, prefix: str) -> dict[str, float]:
    """Free phase on a split (no shuffling): `<prefix>/loss`, `<prefix>/acc`, `<prefix>/tie_rate`."""
    batch_size = int(_get(cfg, "dataset.eval_batch_size") or cfg.dataset.batch_size)
    limit = _get(cfg, "trainer.limit_eval_batches")
    batches = iterate_batches(split, bundle.vectors, batch_size, shuffle=False, device=device, dtype=dtype)
    loss = correct = ties = n = 0.0
    for x, y in islice(batches, limit):
        b_loss, b_correct, b_ties = _batch_stats(estimator.predict(net, x), y)
        loss, correct, ties, n = loss + b_loss, correct + b_correct, ties + b_ties, n + len(y)
    n = max(n, 1.0)
    return {f"{prefix}/loss": loss / n, f"{prefix}/acc": correct / n, f"{prefix}/tie_rate": ties / n}


def _check_finite(epoch: int, batch: int, out, net: HopfieldEPNet, last_good: str) -> None:
    what = None
    if not torch.isfinite(out.loss).all():
        what = f"the loss ({float(out.loss):.4g})"
    else:
        results = {"free": out.free, **out.phases}
        for phase, res in results.items():
            if not all(bool(torch.isfinite(s).all()) for s in res.states):
                what = f"the {phase}-phase states"
                break
        else:
            bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                what = f"the weights ({', '.join(bad)})"
    if what is not None:
        raise NonFiniteError(f"NaN or Inf in {what} at epoch {epoch}, batch {batch}: training stopped; "
                             f"last good checkpoint: {last_good}. Lower optimizer.lrs or algorithm.betas[1]")


def train_epoch(net, estimator, optimizer, bundle, cfg, device, dtype, generator, epoch: int,
                tracker: Tracker, last_good: str, diagnostics: Diagnostics) -> dict[str, float]:
    batch_size = int(cfg.dataset.batch_size)
    limit = _get(cfg, "trainer.limit_train_batches")
    log_every = int(_get(cfg, "trainer.log_every", 0) or 0)
    total = _n_batches(bundle.train, batch_size, limit)
    batches = iterate_batches(bundle.train, bundle.vectors, batch_size, shuffle=True, generator=generator,
                              device=device, dtype=dtype)
    bar = tqdm(islice(batches, limit), total=total, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=not bool(_get(cfg, "trainer.progress", True)))
    loss = correct = ties = n = 0.0
    net.train()
    for i, (x, y) in enumerate(bar, start=1):
        out = estimator.compute_gradients(net, x, y)
        _check_finite(epoch, i, out, net, last_good)
        before = diagnostics.snapshot(net) if diagnostics.due(i) else None
        optimizer.step()
        _check_finite(epoch, i, out, net, last_good)
        if before is not None:
            diagnostics.record(net, x, y, out, before)
        b_loss, b_correct, b_ties = _batch_stats(out.output.detach(), y)
        loss, correct, ties, n = loss + b_loss, correct + b_correct, ties + b_ties, n + len(y)
        if i % 10 == 0 or i == total:
            bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{correct / n:.3f}", refresh=False)
        if log_every and i % log_every == 0:
            tracker.log_batch((epoch - 1) * total + i, {"train/loss": b_loss / len(y),
                                                        "train/acc": b_correct / len(y)}, epoch=epoch)
    bar.close()
    if n == 0:
        raise SeqepError("no training batches: the train split is empty or trainer.limit_train_batches=0")
    return {"train/loss": loss / n, "train/acc": correct / n, "train/tie_rate": ties / n}


# ------------------------------------------------------------------------------------------ tasks
def run_training(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Train per `cfg`, select on validation, report test accuracy of the best checkpoint; write summary.json."""
    run_dir, started = Path(run_dir), time.time()
    ckpt_dir = run_dir / ckpt.CKPT_DIR
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    device, dtype = _device_dtype(cfg)
    seed = int(_get(cfg, "seed", 0))
    epochs = int(_get(cfg, "trainer.epochs", 10))
    resume, load = _get(cfg, "checkpoint.resume"), _get(cfg, "checkpoint.load")
    if resume and load:
        raise SeqepError("give checkpoint.resume (continue a run) or checkpoint.load (start from weights), not both")

    bundle = load_dataset(cfg.dataset)
    net = make_model(cfg, bundle).to(device=device, dtype=dtype)
    if load:
        meta = ckpt.load_weights(net, load)
        print(f"loaded weights from {meta['path']} ({meta['kind']})")
    optimizer = make_optimizer(cfg, net)
    scheduler = make_scheduler(cfg, optimizer)
    generators = {"data": torch.Generator().manual_seed(seed),  # batch order
                  "estimator": torch.Generator().manual_seed(seed + 1)}  # e.g. EP random_sign
    data_gen = generators["data"]
    estimator = make_estimator(cfg, generators["estimator"])
    diagnostics = make_diagnostics(cfg, estimator, bundle, device, dtype)
    start_epoch, best_acc, best_epoch, history = 0, -math.inf, 0, []
    if resume:
        start_epoch, best_acc, best_epoch, history = _resume(resume, net, optimizer, scheduler, generators,
                                                             best_path)
    last_good = f"{resume} (epoch {start_epoch})" if resume else "none (no epoch finished)"
    config = resolved_config(cfg)
    n_params = sum(p.numel() for p in net.parameters())
    print(f"{bundle.name}: {len(bundle.train.labels)} train / {len(bundle.val.labels)} val / "
          f"{len(bundle.test.labels)} test, L={bundle.seq_len}, d={bundle.embed_dim} | model {net.kind} "
          f"fc={net.fc} ({n_params:,} parameters) | {_describe_algorithm(cfg)} | {device} | {run_dir}")

    summary: dict[str, Any] = {}
    with Tracker(cfg, run_dir, history=history) as tracker:
        epoch = start_epoch
        if start_epoch >= epochs:
            print(f"nothing to train: {start_epoch} epochs done, trainer.epochs={epochs} (raise it to continue)")
        try:
            for epoch in range(start_epoch + 1, epochs + 1):
                t0 = time.time()
                lrs = [g["lr"] for g in optimizer.param_groups]
                train = train_epoch(net, estimator, optimizer, bundle, cfg, device, dtype, data_gen, epoch,
                                    tracker, last_good, diagnostics)
                train.update(diagnostics.epoch_metrics(net, epoch))
                t_train = time.time() - t0
                val = evaluate(net, estimator, bundle.val, bundle, cfg, device, dtype, "val")
                if scheduler is not None:
                    scheduler.step()
                improved = val["val/acc"] > best_acc
                if improved:
                    best_acc, best_epoch = val["val/acc"], epoch
                    ckpt.save_checkpoint(best_path, ckpt.weights_state(net, epoch, best_acc, config))
                save_every = int(_get(cfg, "checkpoint.save_every", 1) or 1)
                if epoch % save_every == 0 or epoch == epochs:
                    ckpt.save_checkpoint(last_path, ckpt.training_state(
                        model=net, optimizer=optimizer, scheduler=scheduler, epoch=epoch, best_val_acc=best_acc,
                        best_epoch=best_epoch, generators=generators, config=config))
                    last_good = f"{last_path} (epoch {epoch})"
                row = {**train, **val, **{f"lr/{i}": lr for i, lr in enumerate(lrs)},
                       "time/train_s": t_train, "time/epoch_s": time.time() - t0}
                tracker.log_epoch(epoch, row)
                print(f"epoch {epoch:3d}/{epochs} | train loss {train['train/loss']:.4f} acc "
                      f"{train['train/acc']:.3f} | val loss {val['val/loss']:.4f} acc {val['val/acc']:.3f}"
                      f"{' *' if improved else '  '} | lr {lrs[-1]:.2e} | {row['time/epoch_s']:.1f}s", flush=True)
        except NonFiniteError as err:
            _write_json(run_dir / "summary.json", {"status": "failed", "error": str(err), "epochs": epoch - 1,
                                                   "val/best_acc": best_acc if best_epoch else None,
                                                   "best_epoch": best_epoch})
            raise

        # Test once, with the weights that were best on validation.
        if best_path.exists():
            ckpt.load_weights(net, best_path)
        test = evaluate(net, estimator, bundle.test, bundle, cfg, device, dtype, "test")
        last = tracker.rows[-1] if tracker.rows else {}
        summary = {
            "status": "completed",
            **test,
            "val/best_acc": best_acc if best_epoch else None,
            "best_epoch": best_epoch,
            "train/acc": last.get("train/acc"),
            "train/loss": last.get("train/loss"),
            "val/acc": last.get("val/acc"),
            "epochs": epochs,
            "time_s": time.time() - started,
            "time/epoch_s_mean": _mean(r.get("time/epoch_s") for r in tracker.rows[len(history):]),
            "algorithm": _describe_algorithm(cfg),
            "algorithm.name": _get(cfg, "algorithm.name"),
            "T": _get(cfg, "algorithm.T"),
            "K": _get(cfg, "algorithm.K"),
            "betas": list(_get(cfg, "algorithm.betas", []) or []),
            "seed": seed,
            "dataset": bundle.name,
            "model.fc": list(net.fc),
            "n_params": n_params,
            "checkpoint": str(best_path) if best_path.exists() else None,
            "run_dir": str(run_dir),
        }
        _write_json(run_dir / "summary.json", summary)
        tracker.log_summary(summary)
        chosen = f"epoch {best_epoch}, val acc {best_acc:.4f}" if best_epoch else "no epoch trained"
        print(f"test acc {test['test/acc']:.4f} (loss {test['test/loss']:.4f}) with the best-on-validation "
              f"checkpoint ({chosen}) | {summary['time_s']:.0f}s total")
        _plot(tracker.rows, run_dir)
    return summary


def run_test(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate `checkpoint.load` (a run dir means its best.pt) on the validation and test splits."""
    run_dir = Path(run_dir)
    target = _get(cfg, "checkpoint.load") or _get(cfg, "checkpoint.resume")
    if not target:
        raise SeqepError("task=test needs a checkpoint: checkpoint.load=<run dir or checkpoint file>")
    device, dtype = _device_dtype(cfg)
    bundle = load_dataset(cfg.dataset)
    net = make_model(cfg, bundle).to(device=device, dtype=dtype)
    meta = ckpt.load_weights(net, target)
    estimator = make_estimator(cfg, torch.Generator().manual_seed(int(_get(cfg, "seed", 0))))
    with Tracker(cfg, run_dir) as tracker:
        metrics = {**evaluate(net, estimator, bundle.val, bundle, cfg, device, dtype, "val"),
                   **evaluate(net, estimator, bundle.test, bundle, cfg, device, dtype, "test")}
        summary = {"status": "completed", **metrics, "checkpoint": meta["path"], "checkpoint_kind": meta["kind"],
                   "checkpoint_epoch": meta.get("epoch"), "algorithm": _describe_algorithm(cfg),
                   "dataset": bundle.name, "run_dir": str(run_dir)}
        _write_json(run_dir / "summary.json", summary)
        tracker.log_summary(summary)
    print(f"{meta['path']} ({meta['kind']}): val acc {metrics['val/acc']:.4f} | test acc {metrics['test/acc']:.4f} "
          f"(loss {metrics['test/loss']:.4f})")
    return summary


# ------------------------------------------------------------------------------------------ helpers
def _resume(target, net, optimizer, scheduler, generators, best_path: Path):
    """Restore everything from a run dir's last.pt (or a given file); returns epoch, best and old metrics."""
    path = ckpt.resolve_checkpoint_path(target, name="last.pt")
    state = ckpt.read_checkpoint(path)
    if state.get("format") != ckpt.FORMAT or state.get("optimizer") is None:
        raise SeqepError(f"{path} is not a full seqep training checkpoint (no optimizer state); resume from a "
                         "run's checkpoints/last.pt, or start from its weights with checkpoint.load")
    ckpt.load_weights(net, path)
    for group, now in (("optimizer", _opt_name(optimizer)), ("scheduler", "none" if scheduler is None else "cosine")):
        then = str((state.get("config") or {}).get(group, {}).get("name", now))
        if then != now:
            raise SeqepError(f"{path} was trained with {group}={then}, this run has {group}={now}: resume with "
                             f"{group}={then}, or start from its weights with checkpoint.load")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise SeqepError(f"the optimizer state in {path} does not fit this run's optimizer ({err}); "
                         "start from its weights with checkpoint.load instead") from None
    ckpt.restore_rng(state["rng"], generators)
    epoch, best = int(state["epoch"]), state["best"]
    old_dir = path.parent.parent if path.parent.name == ckpt.CKPT_DIR else path.parent
    old_best = old_dir / ckpt.CKPT_DIR / "best.pt"
    if old_best.is_file() and old_best.resolve() != best_path.resolve():
        ckpt.copy_checkpoint(old_best, best_path)
    history = {}
    if (old_dir / "metrics.jsonl").is_file():
        for line in (old_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.pop("kind", "epoch") == "epoch" and row["epoch"] <= epoch:
                history[row["epoch"]] = row
    print(f"resumed from {path} after epoch {epoch} (best val acc {best['val_acc']:.4f} at epoch {best['epoch']})")
    return epoch, float(best["val_acc"]), int(best["epoch"]), [history[k] for k in sorted(history)]


def _opt_name(optimizer: torch.optim.Optimizer) -> str:
    return "adam" if isinstance(optimizer, torch.optim.Adam) else "sgd"


def _describe_algorithm(cfg: DictConfig) -> str:
    a = cfg.algorithm
    if a.name == "ep":
        return f"EP {_get(a, 'variant', 'symmetric')} T={a.T} K={a.K} betas={list(a.betas)}"
    return f"BPTT {_get(a, 'truncate', 'last_k')} T={a.T} K={a.K}"


def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _plot(rows: list[dict], run_dir: Path) -> None:
    """plots/learning_curves.png and plots/summary.png (docs/dashboards.md), also to the active W&B run."""
    import sys

    try:
        from seqep.plots import plot_learning_curves, plot_run_summary
    except Exception as err:  # a figure must never cost a finished run (e.g. a broken matplotlib install)
        print(f"warning: could not draw the figures ({type(err).__name__}: {err})")
        return
    drawn = {}
    for key, draw, what in (("plots/learning_curves", plot_learning_curves, "the learning curves"),
                            ("plots/summary", plot_run_summary, "the summary figure")):
        try:
            drawn[key] = draw(rows, run_dir / f"{key}.png")
        except Exception as err:  # a figure must never cost a finished run
            print(f"warning: could not draw {what} ({type(err).__name__}: {err})")
    wandb = sys.modules.get("wandb")  # imported by the tracker when logger=wandb; never imported here
    if drawn and wandb is not None and wandb.run is not None:
        try:
            wandb.run.log({key: wandb.Image(str(path)) for key, path in drawn.items()})
        except Exception as err:
            print(f"warning: could not log the figures to W&B ({type(err).__name__}: {err})")
