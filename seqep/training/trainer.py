"""The training loop: epochs, validation, best-on-validation checkpoints, the test split once at the end.

    trainer = Trainer(cfg.trainer, net=..., estimator=..., optimizer=..., schedule=..., data=bundle, ...)
    progress = trainer.fit(tracker, progress)     # epochs progress.epoch+1 .. settings.epochs
    test = trainer.test()                         # best.pt's weights on the test split

Per epoch: train with the estimator (it fills p.grad, the optimizer steps; a per-step schedule steps after every
batch), evaluate on the validation split, step a per-epoch schedule, write `checkpoints/last.pt` (full resume
state) and, when validation accuracy improved, `checkpoints/best.pt`. The test set never chooses anything.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seqep.data import DataBundle, iterate_batches
from seqep.diagnostics import Diagnostics
from seqep.errors import SeqepError
from seqep.estimators import Estimator
from seqep.network import Network
from seqep.training import checkpoint as ckpt
from seqep.training.builders import Schedule
from seqep.training.distributed import World
from seqep.training.stop import StopSignals
from seqep.training.tracking import Tracker
from seqep.utils import say


class NonFiniteError(SeqepError):
    """NaN or Inf in states, loss or weights: the run stops, the last good checkpoint stays."""


class DeadOutputsError(SeqepError):
    """Every output tied (all output neurons at one value, usually the activation's floor) for a whole epoch: the
    EP gradient is zero and the run cannot learn any more (`trainer.stop_on_dead`)."""


@dataclass
class Progress:
    """Where training stands: epochs done, the best validation accuracy so far, the rows of earlier epochs."""

    epoch: int = 0
    best_acc: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_good: str = "none (no epoch finished)"  # the last checkpoint written, for the NaN-stop message


def batch_stats(output: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Summed loss ½‖s_out − e_y‖², number correct and number of argmax ties (dead outputs, SPEC §8)."""
    target = torch.nn.functional.one_hot(y, output.shape[1]).to(output.dtype)
    loss = 0.5 * ((output - target) ** 2).sum(1)
    top = output.max(1, keepdim=True).values
    ties = ((output == top).sum(1) > 1).sum()
    return float(loss.sum()), float((output.argmax(1) == y).sum()), float(ties)


def nan_advice(estimator: Any) -> str:
    """What to change after a NaN: the learning rates first; the nudge only when it is large."""
    beta = abs(float(getattr(estimator, "beta", 0.0)))
    advice = "lower the learning rates (optimizer.lr or optimizer.lrs)"
    if beta > 0.5:
        advice += f" or the nudge (algorithm.betas[1]={beta:g} is large)"
    return advice


def nonfinite(out, net: Network) -> str | None:
    """What holds a NaN or Inf after a training step, if anything: the loss, a phase's states or the weights.
    Every batch asks: one fused norm of them all answers (a NaN or Inf anywhere makes it non-finite), and only
    then are they looked at one by one."""
    tensors = list(net.parameters())
    if out is not None:
        tensors += [out.loss, *(s for res in (out.free, *out.phases.values()) for s in res.states)]
    if bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, error_if_nonfinite=False))):
        return None
    if out is not None:
        if not torch.isfinite(out.loss).all():
            return f"the loss ({float(out.loss):.4g})"
        for phase, res in {"free": out.free, **out.phases}.items():
            if not all(bool(torch.isfinite(s).all()) for s in res.states):
                return f"the {phase}-phase states"
    bad = [n for n, p in net.named_parameters() if not bool(torch.isfinite(p).all())]
    return f"the weights ({', '.join(bad)})" if bad else None


def nonfinite_error(what: str, epoch: int, batch: int, last_good: str, advice: str = "") -> NonFiniteError:
    return NonFiniteError(f"NaN or Inf in {what} at epoch {epoch}, batch {batch}: training stopped; "
                          f"last good checkpoint: {last_good}; {advice or nan_advice(None)}")


def check_finite(epoch: int, batch: int, out, net: Network, last_good: str, advice: str = "") -> None:
    what = nonfinite(out, net)
    if what is not None:
        raise nonfinite_error(what, epoch, batch, last_good, advice)


@dataclass
class Feed:
    """The batches the trainer sees: a loaded dataset, its batch sizes, and where the batches go."""

    data: DataBundle
    batch_size: int
    eval_batch_size: int
    device: torch.device
    dtype: torch.dtype
    world: World = field(default_factory=World)  # data-parallel: each worker gets its share of every batch

    @property
    def part(self):
        return self.world.part if self.world.active else None

    def train(self, generator: torch.Generator):
        return iterate_batches(self.data.train, self.data.vectors, self.batch_size, shuffle=True,
                               generator=generator, device=self.device, dtype=self.dtype, part=self.part)

    def eval(self, split: str):
        return iterate_batches(self.data.split(split), self.data.vectors, self.eval_batch_size, shuffle=False,
                               device=self.device, dtype=self.dtype, part=self.part)


@dataclass
class Saving:
    """Where and how often checkpoints are written, and the resolved config stored in them."""

    run_dir: Path
    config: dict[str, Any]
    every: int = 1  # epochs between last.pt writes (the last epoch is always written)

    @property
    def best(self) -> Path:
        return Path(self.run_dir) / ckpt.CKPT_DIR / "best.pt"

    @property
    def last(self) -> Path:
        return Path(self.run_dir) / ckpt.CKPT_DIR / "last.pt"


def show_progress(setting: Any) -> bool:
    """`trainer.progress`: auto = a bar only on a terminal (no `\\r` floods in redirected logs and SLURM files)."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


class Trainer:
    """Owns the loop; the objects it drives are built by `seqep.training.builders` from the config.

    `settings`: the `trainer` section (`seqep.config.TrainerConfig`); `generators`: named seeded generators
    (`data` = batch order, `estimator` = e.g. EP's random signs), saved in and restored from last.pt."""

    def __init__(self, settings: Any, net: Network, estimator: Estimator, feed: Feed, *,
                 optimizer: torch.optim.Optimizer | None = None, schedule: Schedule | None = None,
                 diagnostics: Diagnostics | None = None, saving: Saving | None = None,
                 generators: dict[str, torch.Generator] | None = None) -> None:
        self.settings, self.net, self.estimator, self.feed = settings, net, estimator, feed
        self.optimizer, self.schedule, self.diagnostics, self.saving = optimizer, schedule, diagnostics, saving
        self.generators = generators or {}
        self.stop: StopSignals | None = None  # set by the task: a signal ends the run after the current batch

    @property
    def data(self) -> DataBundle:
        return self.feed.data

    @property
    def world(self) -> World:
        return self.feed.world

    @property
    def device(self) -> torch.device:
        return self.feed.device

    @property
    def best_path(self) -> Path:
        return self.saving.best

    @property
    def last_path(self) -> Path:
        return self.saving.last

    # ----------------------------------------------------------------------------------------- loops
    def end_epoch_schedule(self) -> None:
        """A per-epoch schedule's step, after an epoch's validation (a per-step one steps after every batch)."""
        if self.schedule is not None and self.schedule.interval == "epoch":
            self.schedule.scheduler.step()

    def fit(self, tracker: Tracker, progress: Progress) -> Progress:
        """Train epochs `progress.epoch + 1 .. settings.epochs`; returns the progress at the end."""
        epochs = int(self.settings.epochs)
        if progress.epoch >= epochs:
            say(f"nothing to train: {progress.epoch} epochs done, trainer.epochs={epochs} (raise it to continue)")
        for epoch in range(progress.epoch + 1, epochs + 1):
            self.check_stop(f"before epoch {epoch}", progress.last_good)
            t0 = time.time()
            lrs = [g["lr"] for g in self.optimizer.param_groups]
            train = self.train_epoch(epoch, tracker, progress.last_good)
            train.update(self.diagnostics.epoch_metrics(self.net, epoch))
            t_train = time.time() - t0
            val = self.evaluate("val")
            self.end_epoch_schedule()
            improved = val["val/acc"] > progress.best_acc
            if improved:
                progress.best_acc, progress.best_epoch = val["val/acc"], epoch
            if improved and self.world.main:
                ckpt.save_checkpoint(self.best_path, ckpt.weights_state(self.net, epoch, progress.best_acc,
                                                                        self.saving.config))
            progress.epoch = epoch
            if epoch % max(1, self.saving.every) == 0 or epoch == epochs:
                if self.world.main:
                    self.save_last(progress)
                progress.last_good = f"{self.last_path} (epoch {epoch})"
            row = {**train, **val, **{f"lr/{i}": lr for i, lr in enumerate(lrs)},
                   "time/train_s": t_train, "time/epoch_s": time.time() - t0}
            dead = train["train/tie_rate"] >= 1.0
            if dead:
                row["warn/dead_outputs"] = 1.0
            tracker.log_epoch(epoch, row)
            say(f"epoch {epoch:3d}/{epochs} | train loss {train['train/loss']:.4f} acc {train['train/acc']:.3f} | "
                f"val loss {val['val/loss']:.4f} acc {val['val/acc']:.3f}{' *' if improved else '  '} | "
                f"lr {lrs[-1]:.2e} | {row['time/epoch_s']:.1f}s" + (" | DEAD OUTPUTS: every example tied" if dead
                                                                     else ""))
            if dead and self.settings.stop_on_dead:
                raise DeadOutputsError(
                    f"every output was tied (dead) for all of epoch {epoch}: the gradient is zero and the run cannot "
                    f"learn; {nan_advice(self.estimator)}, or lift the outputs with model.out_bias_init=0.5 "
                    f"(trainer.stop_on_dead=false trains on); last good checkpoint: {progress.last_good}")
        return progress

    def train_epoch(self, epoch: int, tracker: Tracker, last_good: str) -> dict[str, float]:
        """One epoch of training: `train/loss`, `train/acc`, `train/tie_rate`."""
        batches = self.train_batches(epoch, tracker, last_good)
        while True:
            try:
                next(batches)
            except StopIteration as done:
                return done.value

    def train_batches(self, epoch: int, tracker: Tracker, last_good: str
                      ) -> Generator[int, None, dict[str, float]]:
        """`train_epoch` one batch at a time: yields each batch's number once it has been trained on (the
        optimizer stepped), and returns the epoch's stats (`StopIteration.value`). The time-to-accuracy bench
        takes several runs' batches in turn, so that a machine whose speed drifts slows them alike."""
        s, net = self.settings, self.net
        limit = s.limit_train_batches
        total = math.ceil(len(self.data.train) / self.feed.batch_size)
        total = total if limit is None else min(total, int(limit))
        bar = tqdm(islice(self.feed.train(self.generators["data"]), limit), total=total, desc=f"epoch {epoch}",
                   leave=False, dynamic_ncols=True, disable=not (self.world.main and show_progress(s.progress)))
        loss = correct = ties = n = 0.0
        net.train()
        params = list(net.parameters())
        for i, (x, y) in enumerate(bar, start=1):
            out = self.estimator.compute_gradients(net, x, y) if len(y) else None
            if out is None:  # an empty share of a last batch smaller than the number of workers
                for p in params:
                    p.grad = torch.zeros_like(p)
            what = nonfinite(out, net)
            stats = batch_stats(out.output.detach(), y) if out is not None else (0.0, 0.0, 0.0)
            received = self.stop.received if self.stop is not None else None
            b_loss, b_correct, b_ties, b_n, bad, stopped = self.world.reduce_sums(
                [*stats, len(y), what is not None, received is not None], self.device)
            if bad:
                raise nonfinite_error(what or "another worker's share of the batch", epoch, i, last_good,
                                      nan_advice(self.estimator))
            self.world.average_gradients(params, len(y), int(b_n))
            before = self.diagnostics.snapshot(net) if self.world.main and self.diagnostics.due(i) else None
            self.optimizer.step()
            if self.schedule is not None and self.schedule.interval == "step":
                self.schedule.scheduler.step()
            check_finite(epoch, i, None, net, last_good, nan_advice(self.estimator))  # the same on every worker
            if self.stop is not None and stopped:
                self.stop.check(f"in epoch {epoch} after batch {i}", last_good, self.saving.run_dir,
                                received=received or "SIGTERM")
            if before is not None and out is not None:
                self.diagnostics.record(net, x, y, out, before)
            loss, correct, ties, n = loss + b_loss, correct + b_correct, ties + b_ties, n + b_n
            if i % 10 == 0 or i == total:
                bar.set_postfix(loss=f"{loss / n:.4f}", acc=f"{correct / n:.3f}", refresh=False)
            if s.log_every and i % s.log_every == 0:
                tracker.log_batch((epoch - 1) * total + i, {"train/loss": b_loss / b_n,
                                                            "train/acc": b_correct / b_n}, epoch=epoch)
            yield i
        bar.close()
        if n == 0:
            raise SeqepError("no training batches: the train split is empty or trainer.limit_train_batches=0")
        return {"train/loss": loss / n, "train/acc": correct / n, "train/tie_rate": ties / n}

    @torch.no_grad()
    def evaluate(self, split: str, prefix: str | None = None) -> dict[str, float]:
        """Free phase on a split (no shuffling): `<prefix>/loss`, `<prefix>/acc`, `<prefix>/tie_rate`."""
        prefix = prefix or split
        loss = correct = ties = n = 0.0
        for x, y in islice(self.feed.eval(split), self.settings.limit_eval_batches):
            if len(y):  # each worker its share of every batch (data-parallel), summed below
                b_loss, b_correct, b_ties = batch_stats(self.estimator.predict(self.net, x), y)
                loss, correct, ties, n = loss + b_loss, correct + b_correct, ties + b_ties, n + len(y)
        loss, correct, ties, n = self.world.reduce_sums([loss, correct, ties, n], self.device)
        n = max(n, 1.0)
        return {f"{prefix}/loss": loss / n, f"{prefix}/acc": correct / n, f"{prefix}/tie_rate": ties / n}

    def test(self) -> dict[str, float]:
        """The test split, once, with the weights that were best on validation (as they are, if none was saved)."""
        self.world.barrier()  # rank 0 has written best.pt
        if self.best_path.exists():
            ckpt.load_weights(self.net, self.best_path)
        return self.evaluate("test")

    def check_stop(self, where: str, last_good: str) -> None:
        """Raise `Interrupted` when a signal came (to any worker: they all stop at the same point)."""
        if self.stop is None:
            return
        received = self.stop.received
        (stopped,) = self.world.reduce_sums([received is not None], self.device)
        if stopped:
            self.stop.check(where, last_good, self.saving.run_dir, received=received or "SIGTERM")

    # ----------------------------------------------------------------------------------------- state
    def save_last(self, progress: Progress) -> None:
        scheduler = self.schedule.scheduler if self.schedule is not None else None
        ckpt.save_checkpoint(self.last_path, ckpt.training_state(
            model=self.net, optimizer=self.optimizer, scheduler=scheduler, epoch=progress.epoch,
            best_val_acc=progress.best_acc, best_epoch=progress.best_epoch, generators=self.generators,
            config=self.saving.config))

    def resume(self, target: str) -> Progress:
        """Everything from a run dir's last.pt (or a given file): weights, optimizer, schedule, RNGs, best so far."""
        scheduler = self.schedule.scheduler if self.schedule is not None else None
        state = ckpt.restore_training(target, self.net, self.optimizer, scheduler, self.generators,
                                      self.saving.config)
        if self.world.main:
            ckpt.carry_best(state["path"], self.best_path)
        epoch, best = int(state["epoch"]), state["best"]
        say(f"resumed from {state['path']} after epoch {epoch} (best val acc {best['val_acc']:.4f} at epoch "
              f"{best['epoch']})")
        return Progress(epoch, float(best["val_acc"]), int(best["epoch"]), ckpt.read_history(state["path"], epoch),
                        f"{target} (epoch {epoch})")
