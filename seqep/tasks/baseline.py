"""`task=baseline`: the dataset's reference score without any network, logistic regression on mean word vectors.

    python run.py task=baseline                          # the default data: val and test accuracy, a second
    python run.py -m task=baseline dataset.split_seed=0,1,2,3,4,5   # how much the split alone moves a score

Features: the mean of a sentence's word vectors (padding left out); for NLI `[p, h, p·h, |p − h|]` of the premise
and hypothesis means. Standardised with the training split's mean and spread, then multinomial logistic regression
(softmax, cross-entropy + `l2`·‖W‖²) fitted by L-BFGS in float64 from zero weights (deterministic: no seed
matters) for every `baseline.l2`; the one with the best validation accuracy gives the test accuracy. SPEC §8's
reference number (0.706 on its split of the default data) is this baseline; README "Results" lists it per split.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from seqep.data.bundle import DataBundle
from seqep.errors import SeqepError
from seqep.training.builders import build_dataset
from seqep.training.tracking import Tracker
from seqep.utils import say


def mean_vectors(data: DataBundle, split: str) -> Tensor:
    """`(N, d)` float64: each row's mean word vector over its non-padding tokens (zeros for an empty row); for NLI
    the premise and hypothesis means combined as `[p, h, p·h, |p − h|]` `(N, 4d)`."""
    ids = data.split(split).ids
    vectors = data.vectors.to(torch.float64)

    def means(rows: Tensor) -> Tensor:  # sums by embedding_bag: no (N, L, d) tensor (IMDB: 18 GB) is built
        rows = rows.long()
        if rows.shape[0] == 0:
            return vectors.new_zeros(0, vectors.shape[1])
        count = (rows > 0).sum(1, keepdim=True).clamp(min=1)
        return F.embedding_bag(rows, vectors, mode="sum", padding_idx=0) / count

    if data.kind != "nli":
        return means(ids)
    p, h = means(ids[:, :data.seq_len]), means(ids[:, data.seq_len:])
    return torch.cat([p, h, p * h, (p - h).abs()], 1)


def fit(x: Tensor, y: Tensor, n_classes: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Softmax regression: weights `(F, C)` and bias `(C,)` minimising mean cross-entropy + `l2`·‖W‖² (L-BFGS)."""
    w = x.new_zeros(x.shape[1], n_classes, requires_grad=True)
    b = x.new_zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def accuracy(x: Tensor, y: Tensor, w: Tensor, b: Tensor) -> float:
    return float(((x @ w + b).argmax(1) == y).double().mean()) if len(y) else float("nan")


def logistic_baseline(data: DataBundle, l2_values: list[float], max_iter: int) -> dict[str, Any]:
    """`{"val/acc", "test/acc", "train/acc", "baseline/l2", "baseline/val_acc/<l2>" ...}` of the best-on-validation
    `l2`."""
    if not l2_values:
        raise SeqepError("baseline.l2 is empty: give the L2 strengths to choose from, e.g. baseline.l2=[1e-3,1e-2]")
    if len(data.train) == 0 or len(data.val) == 0:
        raise SeqepError(f"task=baseline needs training and validation examples ({data.name}: "
                         f"{len(data.train)} / {len(data.val)})")
    feats = {s: mean_vectors(data, s) for s in ("train", "val", "test")}
    labels = {s: data.split(s).labels.long() for s in ("train", "val", "test")}
    mean, spread = feats["train"].mean(0), feats["train"].std(0).clamp(min=1e-12)
    feats = {s: (f - mean) / spread for s, f in feats.items()}
    metrics: dict[str, Any] = {}
    best = None
    for l2 in l2_values:
        w, b = fit(feats["train"], labels["train"], data.n_classes, float(l2), max_iter)
        val = accuracy(feats["val"], labels["val"], w, b)
        metrics[f"baseline/val_acc/{l2:g}"] = val
        if best is None or val > best[0]:
            best = (val, float(l2), w, b)
    val, l2, w, b = best
    metrics |= {"train/acc": accuracy(feats["train"], labels["train"], w, b), "val/acc": val,
                "test/acc": accuracy(feats["test"], labels["test"], w, b), "baseline/l2": l2}
    return metrics


def run_baseline(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Load the dataset, fit the baseline, log and return the summary."""
    run_dir, started = Path(run_dir), time.time()
    data = build_dataset(cfg.dataset).load()
    with Tracker.from_config(cfg, run_dir, job_type="baseline") as tracker:
        metrics = logistic_baseline(data, list(cfg.baseline.l2), int(cfg.baseline.max_iter))
        summary = {"status": "completed", **metrics, "algorithm": "logistic regression on mean word vectors",
                   "dataset": data.name, "run_dir": str(run_dir), "time_s": time.time() - started}
        tracker.log_summary(summary)
    say(f"{data.name}: logistic regression on mean word vectors (l2 {metrics['baseline/l2']:g}, chosen on "
        f"validation): train acc {metrics['train/acc']:.4f} | val acc {metrics['val/acc']:.4f} | test acc "
        f"{metrics['test/acc']:.4f}")
    return summary
