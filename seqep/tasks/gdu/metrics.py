"""Distances between per-step EP updates and per-step BPTT gradients (both `(K, ...)`, step axis first).

Definitions (docs/gdu.md), for EP `e` and BPTT `b` of one tensor, elements i, steps t = 0..K−1:

    rmse            mean_i  rms_t(e − b)_i / (1e-10 + max(rms_t(e)_i, rms_t(b)_i))      the old code's "RMSE"
                    with rms_t(v)_i = sqrt(mean_t v_{t,i}²); 0 = identical, 1 = as far as the larger is big
    sign_agree_pct  100 · fraction of (t, i) with e_{t,i} · b_{t,i} >= 0  (= 100 − the old code's sign error)
    rel_err         ‖e − b‖ / ‖b‖ over all (t, i) (Frobenius); what the β sweep fits its slope on
    cos_cumulative  cos(Σ_t e_t, Σ_t b_t): the K-step EP gradient against the K-step truncated BPTT gradient
    cos_steps       [cos(e_t, b_t) for t]; NaN for a step where either side is exactly zero
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

RMSE_EPS = 1e-10  # the old code's guard in the denominator: an element where both sides are 0 scores 0


def relative_rmse(ep: Tensor, bptt: Tensor) -> float:
    """The old code's per-element relative RMSE over the K steps, averaged over elements (module doc)."""
    rms = lambda v: torch.linalg.vector_norm(v, dim=0) / math.sqrt(v.shape[0])
    per_element = rms(ep - bptt) / (RMSE_EPS + torch.maximum(rms(ep), rms(bptt)))
    return float(per_element.mean())


def sign_agreement(ep: Tensor, bptt: Tensor) -> float:
    """Percent of (step, element) pairs whose signs do not disagree (`e·b >= 0`)."""
    return 100.0 * float((ep * bptt >= 0).double().mean())


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two tensors flattened; NaN when either is exactly zero (no eps clamp: gradients may be tiny)."""
    a, b = a.flatten(), b.flatten()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float((a @ b) / (na * nb))


def relative_error(ep: Tensor, bptt: Tensor) -> float:
    """‖e − b‖ / ‖b‖ over every step and element; NaN if BPTT is exactly zero."""
    norm = float(torch.linalg.vector_norm(bptt))
    return float(torch.linalg.vector_norm(ep - bptt)) / norm if norm > 0 else math.nan


def compare(ep: Tensor, bptt: Tensor) -> dict[str, Any]:
    """Every metric of one tensor pair `(K, ...)` (module doc)."""
    if ep.shape != bptt.shape:
        raise ValueError(f"EP {tuple(ep.shape)} and BPTT {tuple(bptt.shape)} shapes differ")
    steps = [cosine(e, b) for e, b in zip(ep, bptt)]
    finite = [c for c in steps if not math.isnan(c)]
    return {
        "rmse": relative_rmse(ep, bptt),
        "sign_agree_pct": sign_agreement(ep, bptt),
        "rel_err": relative_error(ep, bptt),
        "cos_cumulative": cosine(ep.sum(0), bptt.sum(0)),
        "cos_step_mean": float(np.mean(finite)) if finite else math.nan,
        "cos_step_min": float(np.min(finite)) if finite else math.nan,
        "cos_steps": steps,
        "ep_norm": float(torch.linalg.vector_norm(ep.sum(0))),
        "bptt_norm": float(torch.linalg.vector_norm(bptt.sum(0))),
    }


def fit_slope(betas: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of log(error) against log(β), over the finite positive points; NaN if < 2."""
    pairs = [(math.log(b), math.log(e)) for b, e in zip(betas, errors) if b > 0 and e > 0 and math.isfinite(e)]
    if len(pairs) < 2:
        return math.nan
    lb, le = np.array(pairs).T
    return float(np.polyfit(lb, le, 1)[0])


def geometric_mean(values: Sequence[float]) -> float:
    """Of the finite positive values; NaN if none (used to pool per-tensor errors in the β sweep)."""
    logs = [math.log(v) for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan
