"""Equilibrium Propagation estimators (SPEC.md §4).

All variants compare ⟨∂Φ/∂θ⟩ at two state sets `a`, `b` with a coefficient `c`:
`θ.grad = −c (⟨∂Φ/∂θ⟩(a) − ⟨∂Φ/∂θ⟩(b))` (states held fixed; the nudge term of Φ does not depend on θ): in closed
form from the state differences with `field_mode="closed"`, by autograd of Φ over the stacked batch of 2B with
`"autograd"`.

| variant      | a    | b    | c       |
|--------------|------|------|---------|
| symmetric    | s⁺β  | s⁻β  | 1/(2β)  |  the paper's default (three phases)
| positive     | s⁺β  | s⁰   | 1/β     |  two-phase EP
| negative     | s⁰   | s⁻β  | 1/β     |  one-sided with −β
| random_sign  | s^±β | s⁰   | 1/(±β)  |  sign of β drawn per batch (Laborieux et al. 2021)

The symmetric variant runs its +β and −β phases as one batch of 2B (one set of large matmuls per step); with
`field_mode="autograd"` (the old code's way, kept as oracle and speed baseline) it runs them one after another.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seqep.estimators.base import Estimator, StepOutput, mse_loss, set_grads
from seqep.network import Network
from seqep.precision import LOW_DTYPE
from seqep.relax import RelaxResult, relax

VARIANTS = ("symmetric", "positive", "negative", "random_sign")


class EP(Estimator):
    """`betas`: [β₁ of the free phase, β₂ of the nudge]; `variant`: one of `VARIANTS` (table above);
    `generator`: the random signs of `random_sign` (seqep passes a seeded one, saved in checkpoints).

    The defaults settle every phase (`tol`; the nudged phases to `nudge_tol`), so T and K are step caps that
    stragglers rarely reach, and nudge with a small β₂: together they keep EP's gradient within cosine 0.99 of
    BPTT's on the default run (README, "Settling"). With fixed T=20, K=8 (the old code's way) a quarter of the
    examples ended unsettled late in training; with β₂=0.1 the nudge crosses the hard sigmoid's kinks (output
    layer cosine 0.95 however long the phases run). `updates="alternating"` (`seqep.relax.UPDATES`) updates the
    even layers and then the odd ones from their new states: the same equilibria (EP needs nothing else) in about
    0.6 times the steps. The paper presets set the old code's T, K and β, `tol: null`, `updates: synchronous`."""

    def __init__(self, T: int = 100, K: int = 40, betas: Sequence[float] = (0.0, 0.02), variant: str = "symmetric",
                 field_mode: str = "closed", tol: float | None = 2e-3, generator: torch.Generator | None = None,
                 updates: str = "alternating") -> None:
        super().__init__(T, K, field_mode, tol, updates)
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not allowed; choose one of: {', '.join(VARIANTS)}")
        if len(betas) != 2:
            raise ValueError(f"betas={list(betas)} must be two values [beta1, beta2] (free phase, nudge), "
                             f"e.g. [0.0, 0.1]")
        self.beta_free, self.beta = float(betas[0]), float(betas[1])
        if self.beta == 0.0:
            raise ValueError("betas[1] is 0: EP needs a non-zero nudge beta2, e.g. [0.0, 0.1]")
        self.variant, self.generator = variant, generator

    def describe(self) -> str:
        return f"{type(self).__name__} {self.variant} T={self.T} K={self.K} betas={[self.beta_free, self.beta]}"

    @property
    def nudge_tol(self) -> float | None:
        """The nudged phases' `tol`: `tol·|β₂|`. EP's gradient is a state difference divided by β, so a state
        error of `tol·β` in a nudged phase costs the gradient what `tol` costs a state; the free phase's own error
        moves the ±β phases alike and cancels in their difference."""
        return None if self.tol is None else self.tol * abs(self.beta)

    def nudged_phase(self, net: Network, x: Tensor, start, beta: float | Tensor, target: Tensor,
                     drive=None, keys=None, paired: bool = False) -> RelaxResult:
        """Up to K steps from `start`, settling to `nudge_tol`; `paired`: `x` stacks the +β and −β phases of the
        same examples, and each pair stops together once their half-difference settled to `nudge_tol` and their
        mean to `tol` (`seqep.relax.relax_per_example`)."""
        return relax(net, x, start, self.K, beta, target, field_mode=self.field_mode, tol=self.nudge_tol,
                     drive=drive, keys=keys, pair_tol=self.tol if paired else None,
                     delta_weight=self.delta_weight(net, x), updates=self.updates)

    def delta_weight(self, net: Network, x: Tensor) -> Tensor | None:
        """In `precision=bf16-delta` on the closed path: a bfloat16 copy of the first dense weight, whose products
        the nudged phases take on the deviation from the free state (`seqep.precision`); else None."""
        if self.field_mode != "closed" or self.precision_for(x) != "bf16-delta" or not hasattr(net, "dense"):
            return None
        return net.dense[0].weight.detach().to(LOW_DTYPE)

    def compute_gradients(self, net: Network, x: Tensor, y: Tensor) -> StepOutput:
        target = self.target(net, y, x)
        closed = self.field_mode == "closed"
        with torch.no_grad():
            drive = net.input_drive(x) if closed else None
            keys = net.keys(x)
            free = self.free_phase(net, x, beta=self.beta_free, target=target, drive=drive, keys=keys)
            s0, beta, phases = free.states, self.beta, {}
            if self.variant == "symmetric" and closed:
                phases["plus"], phases["minus"] = self._symmetric_phases(net, x, s0, target, drive, keys)
                a, b, c = phases["plus"].states, phases["minus"].states, 1.0 / (2 * beta)
            elif self.variant == "symmetric":  # the old code's way: one phase after the other
                phases["plus"] = self.nudged_phase(net, x, s0, beta, target, drive, keys)
                phases["minus"] = self.nudged_phase(net, x, s0, -beta, target, drive, keys)
                a, b, c = phases["plus"].states, phases["minus"].states, 1.0 / (2 * beta)
            elif self.variant == "positive":
                phases["plus"] = self.nudged_phase(net, x, s0, beta, target, drive, keys)
                a, b, c = phases["plus"].states, s0, 1.0 / beta
            elif self.variant == "negative":
                phases["minus"] = self.nudged_phase(net, x, s0, -beta, target, drive, keys)
                a, b, c = s0, phases["minus"].states, 1.0 / beta
            else:  # random_sign
                sign = 1.0 if torch.rand((), generator=self.generator).item() < 0.5 else -1.0
                key = "plus" if sign > 0 else "minus"
                phases[key] = self.nudged_phase(net, x, s0, sign * beta, target, drive, keys)
                a, b, c = phases[key].states, s0, 1.0 / (sign * beta)
        set_grads(net, self.phi_difference_grads(net, x, a, b, c, closed))
        return StepOutput(mse_loss(net.output(s0), target), net.output(s0), free, phases)

    def _symmetric_phases(self, net, x, s0, target, drive, keys) -> tuple[RelaxResult, RelaxResult]:
        """+β and −β phases from s⁰ as one batch of 2B."""
        B = x.shape[0]
        two = lambda t: torch.cat([t, t]) if t is not None else None
        beta = torch.cat([x.new_full((B,), self.beta), x.new_full((B,), -self.beta)])
        keys2 = (two(keys[0]), two(keys[1]))
        res = self.nudged_phase(net, two(x), [two(s) for s in s0], beta, two(target), two(drive), keys2, paired=True)
        return res.part(slice(0, B)), res.part(slice(B, 2 * B))

    @staticmethod
    def phi_difference_grads(net: Network, x: Tensor, a, b, c: float, closed: bool = True):
        """`−c (⟨∂Φ/∂θ⟩(a) − ⟨∂Φ/∂θ⟩(b))` for every parameter: in closed form from the state differences
        (`closed=True`), or as one autograd call on Φ over the 2B stack of `a` and `b` (the old code's way)."""
        B = x.shape[0]
        if closed:  # into last step's p.grad where it fits (the estimator overwrites p.grad anyway)
            reuse = [p.grad if p.grad is not None and (p.grad.shape, p.grad.dtype, p.grad.device)
                     == (p.shape, p.dtype, p.device) else None for p in net.parameters()]
            with torch.no_grad():
                return net.phi_grad_difference(x, a, b, scale=-c / B, out=reuse)
        with torch.enable_grad():
            phi = net.phi(torch.cat([x, x]), [torch.cat([sa, sb]) for sa, sb in zip(a, b)])
            surrogate = -c * (phi[:B].sum() - phi[B:].sum()) / B
            return torch.autograd.grad(surrogate, list(net.parameters()), allow_unused=True)
