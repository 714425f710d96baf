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
from seqep.network import ACTIVATION_KINKS, HopfieldEPNet, Network
from seqep.precision import LOW_DTYPE
from seqep.relax import RelaxResult, relax

VARIANTS = ("symmetric", "positive", "negative", "random_sign")
SLOW_STEPS = 10  # adaptive_beta: an example whose free phase took more steps is "slow" (default run: 4-8 on average)
KINK_ROUNDS = 2  # adaptive_beta: at most β₂/100 for an example whose ±β phases straddle a kink
KINK_SHRINK = 10.0


def kink_crossings(net: Network, plus, minus, free=None) -> Tensor | None:
    """`(B,)` bool: the examples with some dense unit on different sides of one of its activation's kinks
    (`ACTIVATION_KINKS`, e.g. the hard sigmoid's clamps at 0 and 1) in `plus` and in `minus`; None for a network
    or activation without kinks. Such a unit's ±β difference measures neither side's slope. With `free` (the free
    states), only units strictly between the kinks there: a nudge pushed one of them out of the range, so EP's
    secant underestimates a slope BPTT sees. A unit clamped in the free phase and lifted by one nudge is another
    matter: BPTT gives it no gradient, EP's secant does, and that secant is what revives a unit clamped for every
    example (an output unit dead at initialisation: rerunning those too left seed 2 of the default run at chance,
    as BPTT stays)."""
    kinks = ACTIVATION_KINKS.get(getattr(net, "activation", None)) if isinstance(net, HopfieldEPNet) else None
    if kinks is None:
        return None
    low, high = kinks
    side = lambda s: (s <= low).to(torch.int8) - (s >= high).to(torch.int8)
    rows = torch.zeros(plus[0].shape[0], dtype=torch.bool, device=plus[0].device)
    for i, (a, b) in enumerate(zip(plus[1:], minus[1:]), start=1):  # the dense layers (0: projections, no kinks)
        crossed = side(a) != side(b)
        if free is not None:
            crossed &= (free[i] > low) & (free[i] < high)
        rows |= crossed.flatten(1).any(1)
    return rows


class EP(Estimator):
    """`betas`: [β₁ of the free phase, β₂ of the nudge]; `variant`: one of `VARIANTS` (table above);
    `generator`: the random signs of `random_sign` (seqep passes a seeded one, saved in checkpoints).

    The defaults settle every phase (`tol`; the nudged phases to `nudge_tol`), so T and K are step caps that
    stragglers rarely reach, and nudge with a small β₂: together they keep EP's gradient within cosine 0.99 of
    BPTT's on the default run (README, "Settling"). With fixed T=20, K=8 (the old code's way) a quarter of the
    examples ended unsettled late in training; with β₂=0.1 the nudge crosses the hard sigmoid's kinks (output
    layer cosine 0.95 however long the phases run). `updates="alternating"` (`seqep.relax.UPDATES`) updates the
    even layers and then the odd ones from their new states: the same equilibria (EP needs nothing else) in about
    0.6 times the steps. `adaptive_beta` (on by default) gives the two kinds of example where a fixed β₂ misleads
    a smaller one: a slow example (β₂·10/its free steps past 10, `example_betas`) and, in symmetric EP, one whose ±β
    phases straddle an activation kink with a unit that was inside the range in the free phase (rerun at β₂/10,
    then β₂/100: `kink_crossings`); each example's gradient is divided by its own β. With it the default run's
    probe kept cosine ≥ 0.998 to BPTT at every epoch of three seeds, for ~12 % more time per epoch; `false` nudges
    every example with β₂. The paper presets set the old code's T, K and β, `tol: null`, `updates: synchronous`,
    `adaptive_beta: false`."""

    def __init__(self, T: int = 100, K: int = 40, betas: Sequence[float] = (0.0, 0.02), variant: str = "symmetric",
                 field_mode: str = "closed", tol: float | None = 2e-3, generator: torch.Generator | None = None,
                 updates: str = "alternating", adaptive_beta: bool = True) -> None:
        super().__init__(T, K, field_mode, tol, updates)
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} is not allowed; choose one of: {', '.join(VARIANTS)}")
        if len(betas) != 2:
            raise ValueError(f"betas={list(betas)} must be two values [beta1, beta2] (free phase, nudge), "
                             f"e.g. [0.0, 0.1]")
        self.beta_free, self.beta = float(betas[0]), float(betas[1])
        if self.beta == 0.0:
            raise ValueError("betas[1] is 0: EP needs a non-zero nudge beta2, e.g. [0.0, 0.1]")
        self.variant, self.generator, self.adaptive_beta = variant, generator, bool(adaptive_beta)

    def describe(self) -> str:
        return f"{type(self).__name__} {self.variant} T={self.T} K={self.K} betas={[self.beta_free, self.beta]}"

    @property
    def nudge_tol(self) -> float | None:
        """The nudged phases' `tol`: `tol·|β₂|`. EP's gradient is a state difference divided by β, so a state
        error of `tol·β` in a nudged phase costs the gradient what `tol` costs a state; the free phase's own error
        moves the ±β phases alike and cancels in their difference."""
        return None if self.tol is None else self.tol * abs(self.beta)

    def example_betas(self, free: RelaxResult) -> float | Tensor:
        """β₂, or with `adaptive_beta` one per example `(B,)`: β₂·min(1, m/nᵢ), where nᵢ is the number of free steps
        example i took to settle and m = `SLOW_STEPS` (10; the default run's examples take 4–8 on average, its
        stragglers 30–70). A slow example sits near the edge of stability: its states answer a nudge far more
        strongly than the others', and so does EP's finite-β error (O(β²) times a power of that response). On the
        default run one such example in 64 (70 free steps) alone took the probe's cosine to BPTT from 0.999 to
        0.974; nudged with β₂/10 it gives 0.999. Each example's gradient is divided by its own β and its nudged
        phases settle to `tol` times its own |β|. m is fixed, not taken from the batch, so an example's β does not
        depend on the others (data-parallel workers see the rule of one process). Without per-example steps
        (`tol: null`) every example keeps β₂."""
        steps = free.example_steps
        if not self.adaptive_beta or steps is None:
            return self.beta
        scale = (SLOW_STEPS / steps.to(torch.float64).clamp_min(1.0)).clamp(max=1.0)
        return (self.beta * scale).to(torch.get_default_dtype())

    def nudged_phase(self, net: Network, x: Tensor, start, beta: float | Tensor, target: Tensor,
                     drive=None, keys=None, paired: bool = False) -> RelaxResult:
        """Up to K steps from `start`, settling to `nudge_tol` (with `adaptive_beta`: `tol` times each example's
        |β|); `paired`: `x` stacks the +β and −β phases of the same examples, and each pair stops together once
        their half-difference settled to that and their mean to `tol` (`seqep.relax.relax_per_example`)."""
        tol = self.nudge_tol
        if self.adaptive_beta and tol is not None and isinstance(beta, Tensor) and beta.ndim > 0:
            tol = self.tol * beta.abs()
        return relax(net, x, start, self.K, beta, target, field_mode=self.field_mode, tol=tol,
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
            s0, beta, phases = free.states, self.example_betas(free), {}
            if isinstance(beta, Tensor):
                beta = beta.to(device=x.device, dtype=target.dtype)
            kinks = 0
            if self.variant == "symmetric":
                phases["plus"], phases["minus"], beta, kinks = self._symmetric(net, x, s0, target, drive, keys, beta)
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
        return StepOutput(mse_loss(net.output(s0), target), net.output(s0), free, phases, kinks)

    def _pair(self, net, x, s0, target, drive, keys, beta) -> tuple[RelaxResult, RelaxResult]:
        """The +β and −β phases from s⁰: as one batch of 2B on the closed path, else one after the other (the old
        code's way)."""
        if self.field_mode == "closed":
            return self._symmetric_phases(net, x, s0, target, drive, keys, beta)
        return (self.nudged_phase(net, x, s0, beta, target, drive, keys),
                self.nudged_phase(net, x, s0, -beta, target, drive, keys))

    def _symmetric(self, net, x, s0, target, drive, keys, beta):
        """The ±β phases; with `adaptive_beta`, the examples whose two phases end with some dense unit on
        different sides of one of the activation's kinks, a unit that was between the kinks in the free phase
        (`kink_crossings` with `s0`), run them again at β/`KINK_SHRINK`, up to `KINK_ROUNDS` times, from s⁰
        again (both phases from the same start, so what they leave unsettled cancels in their difference; warm
        starts cost accuracy and time). Returns the phases, the β of each
        example and how many were run again."""
        plus, minus = self._pair(net, x, s0, target, drive, keys, beta)
        reruns = 0
        for _ in range(KINK_ROUNDS if self.adaptive_beta else 0):
            rows = kink_crossings(net, plus.states, minus.states, s0)
            if rows is None or not bool(rows.any()):
                break
            idx = rows.nonzero().squeeze(1)
            beta = (beta if isinstance(beta, Tensor) else target.new_full((x.shape[0],), beta)).clone()
            beta[idx] /= KINK_SHRINK
            pick = lambda t, idx=idx: None if t is None else t.index_select(0, idx)
            again = self._pair(net, pick(x), [pick(s) for s in s0], pick(target), pick(drive),
                               (pick(keys[0]), pick(keys[1])), beta[idx])
            for whole, part in zip((plus, minus), again):
                for s, t in zip(whole.states, part.states):
                    s.index_copy_(0, idx, t)
            reruns += len(idx)
        return plus, minus, beta, reruns

    def _symmetric_phases(self, net, x, s0, target, drive, keys, beta=None) -> tuple[RelaxResult, RelaxResult]:
        """+β and −β phases from s⁰ as one batch of 2B (`beta`: β₂ or one per example)."""
        B = x.shape[0]
        two = lambda t: torch.cat([t, t]) if t is not None else None
        beta = self.beta if beta is None else beta
        rows = beta if isinstance(beta, Tensor) else x.new_full((B,), beta)
        beta = torch.cat([rows, -rows]).to(x.dtype)
        keys2 = (two(keys[0]), two(keys[1]))
        res = self.nudged_phase(net, two(x), [two(s) for s in s0], beta, two(target), two(drive), keys2, paired=True)
        return res.part(slice(0, B)), res.part(slice(B, 2 * B))

    @staticmethod
    def phi_difference_grads(net: Network, x: Tensor, a, b, c: float | Tensor, closed: bool = True):
        """`−c (⟨∂Φ/∂θ⟩(a) − ⟨∂Φ/∂θ⟩(b))` for every parameter (`c` one number or one per example): in closed form
        from the state differences (`closed=True`), or as one autograd call on Φ over the 2B stack of `a` and `b`
        (the old code's way; also for per-example `c` on a network other than HopfieldEPNet)."""
        B = x.shape[0]
        if isinstance(c, Tensor) and not isinstance(net, HopfieldEPNet):
            closed = False
        if closed:  # into last step's p.grad where it fits (the estimator overwrites p.grad anyway)
            reuse = [p.grad if p.grad is not None and (p.grad.shape, p.grad.dtype, p.grad.device)
                     == (p.shape, p.dtype, p.device) else None for p in net.parameters()]
            with torch.no_grad():
                return net.phi_grad_difference(x, a, b, scale=-c / B, out=reuse)
        with torch.enable_grad():
            phi = net.phi(torch.cat([x, x]), [torch.cat([sa, sb]) for sa, sb in zip(a, b)])
            surrogate = -(c * (phi[:B] - phi[B:])).sum() / B
            return torch.autograd.grad(surrogate, list(net.parameters()), allow_unused=True)
