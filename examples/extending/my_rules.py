"""A learning rule of one's own: symmetric EP whose parameter updates are scaled per synapse kind.

Picked with `algorithm=my_rule` (my_conf/algorithm/my_rule.yaml); nothing in seqep is edited.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seqep.estimators import EP


class ScaledEP(EP):
    """EP with the projection synapses' gradients multiplied by `proj_scale` (a toy rule: slower attention)."""

    def __init__(self, T: int = 100, K: int = 40, betas: Sequence[float] = (0.0, 0.02), variant: str = "symmetric",
                 tol: float | None = 2e-3, proj_scale: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__(T=T, K=K, betas=betas, variant=variant, tol=tol, generator=generator)
        if proj_scale < 0:
            raise ValueError(f"proj_scale={proj_scale} must be >= 0")
        self.proj_scale = proj_scale

    def compute_gradients(self, net, x, y):
        out = super().compute_gradients(net, x, y)  # fills p.grad with EP's estimate
        for synapse in net.synapses[: net.n_proj]:
            for p in synapse.parameters():
                p.grad.mul_(self.proj_scale)
        return out

    def describe(self) -> str:
        return f"{super().describe()} proj_scale={self.proj_scale}"
