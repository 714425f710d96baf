"""Estimators: how parameter gradients come out of the dynamics. One interface (`compute_gradients` fills
`p.grad`), so EP variants and BPTT swap without touching a model."""

from __future__ import annotations

from typing import Any

from seqep.estimators.base import Estimator, StepOutput, grads_by_name, mse_loss
from seqep.estimators.bptt import BPTT, TRUNCATIONS
from seqep.estimators.ep import EP, VARIANTS

__all__ = ["BPTT", "EP", "Estimator", "StepOutput", "TRUNCATIONS", "VARIANTS", "build_estimator",
           "grads_by_name", "mse_loss"]


def build_estimator(cfg: Any, generator=None) -> Estimator:
    """From an `algorithm` config node (keys name, T, K, betas, variant, truncate, field_mode, tol)."""
    get = (lambda k, d=None: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    common = dict(T=int(get("T")), K=int(get("K")), field_mode=get("field_mode", "closed"), tol=get("tol"))
    if get("name") == "ep":
        return EP(betas=list(get("betas", [0.0, 0.1])), variant=get("variant", "symmetric"), generator=generator,
                  **common)
    if get("name") == "bptt":
        return BPTT(truncate=get("truncate", "last_k"), **common)
    raise ValueError(f"algorithm.name must be 'ep' or 'bptt', got {get('name')!r}")
