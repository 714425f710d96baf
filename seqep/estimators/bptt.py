"""Backpropagation through time through the same dynamics (SPEC.md §4, the paper's baseline).

`truncate="last_k"` (the paper): T−K free steps without a graph, then K steps with one; `"full"`: a graph
through all T steps. Loss ½‖s_out − e_y‖² (batch mean) backpropagated into the parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqep.estimators.base import Estimator, StepOutput, mse_loss, set_grads
from seqep.network import Network
from seqep.relax import relax

TRUNCATIONS = ("last_k", "full")


class BPTT(Estimator):
    """`truncate`: one of `TRUNCATIONS` (last_k = the paper's baseline; full = all T steps)."""

    def __init__(self, T: int = 20, K: int = 8, truncate: str = "last_k", field_mode: str = "closed",
                 tol: float | None = None) -> None:
        super().__init__(T, K, field_mode, tol)
        if truncate not in TRUNCATIONS:
            raise ValueError(f"truncate={truncate!r} is not allowed; choose one of: {', '.join(TRUNCATIONS)}")
        if truncate == "last_k" and K > T:
            raise ValueError(f"K={K} > T={T}: truncated BPTT backpropagates through the last K of the T free "
                             f"steps, so K must be <= T")
        self.truncate = truncate

    def describe(self) -> str:
        return f"{type(self).__name__} {self.truncate} T={self.T} K={self.K}"

    @property
    def graph_steps(self) -> int:
        return self.K if self.truncate == "last_k" else self.T

    def compute_gradients(self, net: Network, x: Tensor, y: Tensor) -> StepOutput:
        target = self.target(net, y, x)
        with torch.no_grad():
            head = self.free_phase(net, x, steps=self.T - self.graph_steps)
        start = [s.detach() for s in head.states]
        with torch.enable_grad():
            with self.low_precision_graph(x):  # bf16-mixed: the graph steps under autocast
                free = relax(net, x, start, self.graph_steps, field_mode=self.field_mode)
            loss = mse_loss(net.output(free.states).to(x.dtype), target)
            grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
        set_grads(net, grads)
        free.steps += head.steps
        free.states = [s.detach().to(x.dtype) for s in free.states]
        return StepOutput(loss.detach(), net.output(free.states), free)
