"""Time to accuracy: wall time of training until the validation accuracy first reaches `bench.tta_target`, for
ways of running the same learning rule, on the run's own data (the default: rt_snippets), median over seeds.

    python run.py task=bench bench.tta_target=0.72 bench.shapes=[] bench.memory_T=[]

The ways (`bench.tta_variants`, defined once in `VARIANTS` as config overrides on top of the run's config):

    autograd      the original algorithm as the old code ran it: fields by autograd of Φ, fixed T=20 and K=8 of
                  synchronous steps, one β for every example (`FIXED`), the ±β phases one after the other
                  (`algorithm.field_mode=autograd`)
    closed        the same fixed steps with closed-form fields, ±β as one batch
    mixed         closed + `precision=bf16-mixed`: free phase and evaluation in bfloat16
    delta         closed + `precision=bf16-delta`: also the nudged phases' first-weight products in bfloat16, on
                  the deviation from the free state
    settle-sync   per-example settling (EP's defaults for `tol` and the step caps T and K), synchronous steps, one
                  β for every example (session 7's default)
    settle        EP's defaults (`SETTLE`): settling in alternating order (`seqep.relax.UPDATES`), a smaller β
                  for slow examples and for a unit a nudge pushes out of the activation's range (`adaptive_beta`)
    settle+mixed  settle + bf16-mixed
    settle+delta  settle + bf16-delta
    settle-onebeta  settle with `algorithm.adaptive_beta=false`: β₂ for every example (the default before
                  session 11)

Everything else (β, the model, the optimizer, the data) is the run's own, so every way runs the same learning
rule.

Timed: every training epoch and its validation pass, from the first batch to the epoch whose validation accuracy
first reaches the target (data loading and building are not timed; diagnostics and probes are off; every variant
first runs `WARMUP_BATCHES` untimed batches on a throw-away copy, `warm_up`). A run that does
not reach it within `bench.tta_max_epochs` epochs counts as not reached (its time is then null). The variants of
a seed take their batches in turn (batch 1 of each one's epoch 1, then batch 2, ...; epoch 2 of those still below
the target after that), so a machine whose speed drifts slows them alike; each trains exactly as a run of its own
would.
"""

from __future__ import annotations

import copy
import inspect
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seqep.errors import SeqepError
from seqep.estimators import EP
from seqep.training.tracking import NullTracker

# the old code's way: SPEC §8's T and K, every step synchronous
FIXED = {"algorithm.tol": None, "algorithm.T": 20, "algorithm.K": 8, "algorithm.updates": "synchronous",
         "algorithm.adaptive_beta": False}
SETTLE = {f"algorithm.{k}": inspect.signature(EP).parameters[k].default
          for k in ("tol", "T", "K", "updates", "adaptive_beta")}
VARIANTS: dict[str, dict[str, Any]] = {
    "autograd": {**FIXED, "algorithm.field_mode": "autograd"},
    "closed": FIXED,
    "mixed": {**FIXED, "precision": "bf16-mixed"},
    "delta": {**FIXED, "precision": "bf16-delta"},
    "settle-sync": {**SETTLE, "algorithm.updates": "synchronous", "algorithm.adaptive_beta": False},
    "settle": SETTLE,
    "settle+mixed": {**SETTLE, "precision": "bf16-mixed"},
    "settle+delta": {**SETTLE, "precision": "bf16-delta"},
    "settle-onebeta": {**SETTLE, "algorithm.adaptive_beta": False},
}


def variant_config(cfg: DictConfig, name: str, seed: int) -> DictConfig:
    """The run's config with a variant's overrides, a seed, and nothing but training (task=train, no probes,
    diagnostics, loggers or progress bars)."""
    if name not in VARIANTS:
        raise SeqepError(f"bench.tta_variants: unknown {name!r}; choose from {', '.join(VARIANTS)}")
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for key, value in {**VARIANTS[name], "seed": seed, "task": "train", "trainer.probe_every": 0,
                           "trainer.diagnostics_every": 0, "trainer.progress": False, "trainer.log_every": 0,
                           "trainer.devices": 1, "checkpoint.resume": None, "checkpoint.load": None}.items():
            OmegaConf.update(out, key, value, force_add=True)
        out.logger = {}
    return out


WARMUP_BATCHES = 2  # untimed training batches (and evaluation batches) of each variant before any is timed


def variant_trainer(cfg: DictConfig, name: str, seed: int, root: str, limit: int | None = None):
    """A variant's trainer, built as a run of its own would be (seeded, then its weights drawn) in `root`/`name`;
    `limit`: that many training and evaluation batches per epoch."""
    from seqep.tasks.train import build_trainer
    from seqep.utils import seed_everything

    vc = variant_config(cfg, name, seed)
    if limit is not None:
        with open_dict(vc):
            vc.trainer.limit_train_batches = vc.trainer.limit_eval_batches = limit
    seed_everything(seed)
    return build_trainer(vc, Path(root) / name)


def warm_up(cfg: DictConfig, names: list[str], seed: int) -> None:
    """`WARMUP_BATCHES` batches of training and of evaluation of every variant on throw-away trainers, untimed: the
    first calls of a process pay for CUDA's context and cuBLAS handles, oneDNN's kernels and the allocator's first
    pages (on an H200 seed 0's first autograd epoch took 8.8-9.3 s against 7.0-8.1 s for seeds 1 and 2, which
    flattered every ratio to it). The timed trainers are built afresh and seeded as before, so they train exactly
    as without the warm-up."""
    with tempfile.TemporaryDirectory(prefix="seqep-tta-warmup-") as tmp:
        for name in names:
            trainer = variant_trainer(cfg, name, seed, tmp, limit=WARMUP_BATCHES)
            trainer.train_epoch(1, NullTracker(), "none (warm-up)")
            trainer.evaluate("val")


def time_to_accuracy(cfg: DictConfig, names: list[str], seed: int, target: float, max_epochs: int
                     ) -> list[dict[str, Any]]:
    """Train every variant with one seed until validation accuracy >= `target`, batch by batch in turn (batch 1 of
    each variant's epoch 1, then batch 2 of each, ...; an epoch's validation pass when its last batch is done): a
    machine whose speed drifts within seconds (a shared VM) then slows every variant alike (taken an epoch at a
    time, two runs of the bench on one evening put the default's ratio at 2.47x and 2.84x with the same work).
    Each variant still trains exactly as a run of its own would. The timings, one dict per variant."""
    with tempfile.TemporaryDirectory(prefix="seqep-tta-") as tmp:
        trainers, runs = {}, {}
        for name in names:
            trainers[name] = variant_trainer(cfg, name, seed, tmp)
            runs[name] = {"variant": name, "seed": seed, "seconds": None, "epochs": None, "curve": []}
        for epoch in range(1, max_epochs + 1):
            active = {n: trainers[n].train_batches(epoch, NullTracker(), "none (time-to-accuracy run)")
                      for n in names if runs[n]["epochs"] is None}
            spent = dict.fromkeys(active, 0.0)
            while active:
                for name, batches in list(active.items()):
                    t0 = time.perf_counter()
                    if next(batches, None) is not None:  # a batch trained
                        spent[name] += time.perf_counter() - t0
                        continue
                    # the epoch's batches are done: its validation pass, then the schedule as `Trainer.fit` does
                    acc = trainers[name].evaluate("val")["val/acc"]
                    trainers[name].end_epoch_schedule()
                    spent[name] += time.perf_counter() - t0
                    del active[name]
                    run = runs[name]
                    elapsed = (run["curve"][-1]["seconds"] if run["curve"] else 0.0) + spent[name]
                    run["curve"].append({"epoch": epoch, "val_acc": acc, "seconds": elapsed})
                    if acc >= target:
                        run["seconds"], run["epochs"] = elapsed, epoch
    for run in runs.values():
        run["best_val_acc"] = max(c["val_acc"] for c in run["curve"])
        print(f"bench: time to val acc {target:g}  {run['variant']:12s} seed {seed}: "
              + (f"{run['curve'][-1]['seconds']:7.1f} s ({run['epochs']} epochs)" if run["epochs"] else
                 f"not reached in {max_epochs} epochs (best {run['best_val_acc']:.3f})"), flush=True)
    return list(runs.values())


def bench_time_to_accuracy(cfg: DictConfig, target: float, variants: list[str], seeds: list[int],
                           max_epochs: int) -> dict[str, Any]:
    """Every variant x seed, the variants of a seed interleaved batch by batch (`time_to_accuracy`); per variant
    the median seconds over the seeds that reached the target, the speed-up of that median over `autograd`'s, and
    the speed-up seed by seed (`seed_speedups`, None where either did not reach it: each seed's variants ran side by
    side, so these ratios drift least)."""
    for name in variants:
        variant_config(cfg, name, 0)  # unknown names fail before anything runs
    warm_up(cfg, variants, seeds[0])
    runs = [run for seed in seeds for run in time_to_accuracy(cfg, variants, seed, target, max_epochs)]
    table = []
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        times = [r["seconds"] for r in mine if r["seconds"] is not None]
        table.append({"variant": name, "overrides": VARIANTS[name], "reached": len(times), "runs": len(mine),
                      "median_s": statistics.median(times) if times else None,
                      "median_epochs": statistics.median([r["epochs"] for r in mine if r["epochs"]]) if times
                      else None})
    base = next((t["median_s"] for t in table if t["variant"] == "autograd"), None)
    seconds = {(r["variant"], r["seed"]): r["seconds"] for r in runs}
    for t in table:
        t["speedup_vs_autograd"] = base / t["median_s"] if base and t["median_s"] else None
        pairs = [(seconds.get(("autograd", seed)), seconds[(t["variant"], seed)]) for seed in seeds]
        t["seed_speedups"] = [a / v if a and v else None for a, v in pairs]
    return {"target": target, "max_epochs": max_epochs, "seeds": seeds, "warmup_batches": WARMUP_BATCHES,
            "table": table, "runs": runs}
