"""The estimator interface: every learning algorithm fills `p.grad` for the optimizer to step on."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from seqep.network import Network, one_hot
from seqep.precision import BF16_FREE, LOW_DTYPE, Bf16Copy, check_precision, effective_precision, tf32_matmuls
from seqep.relax import FIELD_MODES, UPDATES, RelaxResult, relax


@dataclass
class StepOutput:
    loss: Tensor  # scalar: ½‖s_out − e_y‖² summed over classes, batch mean, at the free equilibrium
    output: Tensor  # (B, n_classes) free-phase output neurons
    free: RelaxResult
    phases: dict[str, RelaxResult] = field(default_factory=dict)  # nudged phases ("plus", "minus", ...)
    kink_reruns: int = 0  # EP's adaptive_beta: examples whose ±β phases ran again at a smaller β (kinks)


def mse_loss(output: Tensor, target: Tensor) -> Tensor:
    """½‖s_out − e_y‖² summed over classes, mean over the batch (SPEC.md §4)."""
    return 0.5 * ((output - target) ** 2).sum(1).mean()


def laid_out_as(p: Tensor, g: Tensor) -> Tensor:
    """`g` with `p`'s strides: `g` itself where they agree, else a copy. The fused Adam/AdamW that seqep uses by
    default need it: torch 2.13's CPU kernel reads a gradient's memory as if it were laid out like its parameter
    (a transposed gradient silently steps the weight along its transpose), and CUDA's refuses the mismatch
    ("params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout", pytorch#106951).
    Autograd returns the projection weight's gradient transposed (the weight enters the attention as `Wᵀ`)."""
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)  # empty_like keeps p's strides


def set_grads(net: Network, grads) -> None:
    """`p.grad = g` for every parameter (zeros for None), each laid out as its parameter (`laid_out_as`)."""
    for p, g in zip(net.parameters(), grads):
        p.grad = torch.zeros_like(p) if g is None else laid_out_as(p, g.detach())


def grads_by_name(net: Network) -> dict[str, Tensor]:
    """`{'synapses.0.weight': grad, ...}`: the old code's parameter names."""
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


class Estimator(ABC):
    """Common base: T free steps from zero states predict; subclasses add how gradients come out.

    The interface the trainer, diagnostics and tasks use: `T`, `K`, `field_mode`, `precision`, `updates` (the
    order of a step's layer updates, `seqep.relax.UPDATES`; synchronous here and in BPTT, alternating in EP),
    `predict(net, x)`, `compute_gradients(net, x, y) -> StepOutput` and `describe()`. A learning rule of one's own
    subclasses this (or `EP`) and is picked with `algorithm=<its yaml>` (README, "Extending seqep"); the defaults
    below are the only place they are written (the config schema is read from this signature).

    `precision` (one of `seqep.precision.PRECISIONS`, default fp32) is an attribute, not a constructor argument:
    seqep's builder sets it from the top-level key, so a subclass gets it without taking it. It acts through
    `free_phase` (so `predict` and every rule that starts from `free_phase`) and `low_precision_graph` (BPTT).
    """

    _precision = "fp32"

    @property
    def precision(self) -> str:
        """fp32 | bf16-mixed | bf16-delta | tf32 (`seqep.precision`): what the free phase and evaluation run in."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value)

    def __init__(self, T: int = 20, K: int = 8, field_mode: str = "closed", tol: float | None = None,
                 updates: str = "synchronous") -> None:
        for key, value in (("T", T), ("K", K)):
            if value < 1:
                raise ValueError(f"{key}={value} must be > 0")
        if field_mode not in FIELD_MODES:
            raise ValueError(f"field_mode={field_mode!r} is not allowed; choose one of: {', '.join(FIELD_MODES)}")
        if tol is not None and tol <= 0:
            raise ValueError(f"tol={tol} must be > 0 (or null for fixed step counts)")
        if updates not in UPDATES:
            raise ValueError(f"updates={updates!r} is not allowed; choose one of: {', '.join(UPDATES)}")
        self.T, self.K, self.field_mode, self.tol, self.updates = T, K, field_mode, tol, updates

    def describe(self) -> str:
        """One line for the run header and summary.json, from the object itself (its class name first)."""
        return f"{type(self).__name__} T={self.T} K={self.K}"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    def precision_for(self, x: Tensor) -> str:
        """The precision this estimator runs at for inputs like `x` (fp32 where `precision` cannot help)."""
        return effective_precision(self.precision, x.device, x.dtype)

    def free_phase(self, net: Network, x: Tensor, steps: int | None = None, beta: float = 0.0,
                   **kw) -> RelaxResult:
        """`steps` (default T) steps from zero states; in bf16-mixed (and bf16-delta) on a bfloat16 copy of `net`
        (a `drive` and `keys` passed in are then recomputed from it), the result cast back to `x`'s dtype."""
        steps = self.T if steps is None else steps
        mode = self.precision_for(x)
        if mode in BF16_FREE:
            return self._bf16_free_phase(net, x, steps, beta, **kw)
        states = net.init_states(x.shape[0], device=x.device, dtype=x.dtype)
        with tf32_matmuls(mode == "tf32"):
            return relax(net, x, states, steps, beta, field_mode=self.field_mode, tol=self.tol,
                         updates=self.updates, **kw)

    def _bf16_free_phase(self, net: Network, x: Tensor, steps: int, beta: float | Tensor, target=None,
                         drive=None, keys=None, **kw) -> RelaxResult:
        if not hasattr(self, "_bf16"):
            self._bf16 = Bf16Copy()
        low, xl = self._bf16.of(net), x.to(LOW_DTYPE)
        cast = lambda t: t.to(LOW_DTYPE) if isinstance(t, Tensor) and t.is_floating_point() else t
        res = relax(low, xl, low.init_states(x.shape[0], device=x.device, dtype=LOW_DTYPE), steps, cast(beta),
                    cast(target), field_mode=self.field_mode, tol=self.tol, updates=self.updates, **kw)
        back = lambda t: None if t is None else t.to(x.dtype)
        return RelaxResult([back(s) for s in res.states], res.steps, back(res.max_change), back(res.mean_change),
                           [[back(s) for s in states] for states in res.trajectory], res.example_steps, res.settled)

    def low_precision_graph(self, x: Tensor) -> contextlib.AbstractContextManager:
        """The context for graph-building steps (BPTT): autocast to bfloat16 in bf16-mixed (and bf16-delta),
        TF32 matmuls in tf32, nothing in fp32."""
        mode = self.precision_for(x)
        if mode in BF16_FREE:
            return torch.autocast(x.device.type, dtype=LOW_DTYPE)
        return tf32_matmuls(mode == "tf32")

    @torch.no_grad()
    def predict(self, net: Network, x: Tensor) -> Tensor:
        """Free phase only (in the estimator's precision); returns the output neurons `(B, n_classes)` in `x`'s
        dtype (argmax = prediction)."""
        return net.output(self.free_phase(net, x).states)

    def target(self, net: Network, y: Tensor, like: Tensor) -> Tensor:
        return one_hot(y, net.n_classes, like.dtype)

    @abstractmethod
    def compute_gradients(self, net: Network, x: Tensor, y: Tensor) -> StepOutput:
        """Zero, then fill `p.grad` of every parameter with the estimate of ∂loss/∂θ."""
