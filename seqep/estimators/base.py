"""The estimator interface: every learning algorithm fills `p.grad` for the optimizer to step on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from seqep.network import HopfieldEPNet, one_hot
from seqep.relax import RelaxResult, relax


@dataclass
class StepOutput:
    loss: Tensor  # scalar: ½‖s_out − e_y‖² summed over classes, batch mean, at the free equilibrium
    output: Tensor  # (B, n_classes) free-phase output neurons
    free: RelaxResult
    phases: dict[str, RelaxResult] = field(default_factory=dict)  # nudged phases ("plus", "minus", ...)


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """½‖s_out − e_y‖² summed over classes, mean over the batch (SPEC.md §4)."""
    return 0.5 * ((output - target) ** 2).sum(1).mean()


def set_grads(net: HopfieldEPNet, grads) -> None:
    for p, g in zip(net.parameters(), grads):
        p.grad = torch.zeros_like(p) if g is None else g.detach()


def grads_by_name(net: HopfieldEPNet) -> dict[str, Tensor]:
    """`{'synapses.0.weight': grad, ...}`: the old code's parameter names."""
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


class Estimator(ABC):
    """Common base: T free steps (β₁) from zero states predict; subclasses add how gradients come out."""

    name = "base"

    def __init__(self, T: int, K: int, field_mode: str = "closed", tol: float | None = None) -> None:
        if T < 1 or K < 1:
            raise ValueError(f"T and K must be positive, got T={T}, K={K}")
        self.T, self.K, self.field_mode, self.tol = T, K, field_mode, tol

    def free_phase(self, net: HopfieldEPNet, x: Tensor, steps: int | None = None, beta: float = 0.0,
                   **kw) -> RelaxResult:
        states = net.init_states(x.shape[0], device=x.device, dtype=x.dtype)
        return relax(net, x, states, self.T if steps is None else steps, beta,
                     field_mode=self.field_mode, tol=self.tol, **kw)

    @torch.no_grad()
    def predict(self, net: HopfieldEPNet, x: Tensor) -> Tensor:
        """Free phase only; returns the output neurons `(B, n_classes)` (argmax = prediction)."""
        return net.output(self.free_phase(net, x).states)

    def target(self, net: HopfieldEPNet, y: Tensor, like: Tensor) -> Tensor:
        return one_hot(y, net.n_classes, like.dtype)

    @abstractmethod
    def compute_gradients(self, net: HopfieldEPNet, x: Tensor, y: Tensor) -> StepOutput:
        """Zero, then fill `p.grad` of every parameter with the estimate of ∂loss/∂θ."""
