"""Relaxation: run a network's synchronous dynamics for a given β (SPEC.md §3-4).

Free phase = `relax(..., beta=0)` from zero states; nudged phases = `relax(..., beta=±β)` from the free
equilibrium. The constant input drive and the Hopfield keys are computed once per call (or passed in, to share
them between phases). Runs in whatever grad mode the caller chose: under `torch.no_grad()` for EP (closed-form
steps into two reused buffers, `ClosedFormPhase`), with a graph for BPTT (functional steps).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from seqep.network import ACTIVATION_RANGE, HopfieldEPNet, Network, States
from seqep.phase import ClosedFormPhase
from seqep.precision import LOW_DTYPE, LOW_STALL, resolution, settle_tol

FIELD_MODES = ("closed", "autograd")
# the order of a step's layer updates: every layer from the last states (the paper's), or the even layers (the
# projections, the second dense layer, ...) first and the odd ones from the even layers' new states
UPDATES = ("synchronous", "alternating")


@dataclass
class RelaxResult:
    states: States
    steps: int  # steps actually run (fewer than asked only when `tol` stopped it early)
    max_change: Tensor | None = None  # (B,) largest |Δs| over all units at the last step (a bfloat16 phase
    # settling per example: relative to max(1, |s|), as it tested it; `_layer_changes`)
    mean_change: Tensor | None = None  # (B,) mean |Δs| over all units at the last step
    trajectory: list[States] = field(default_factory=list)  # states after every step when record=True
    example_steps: Tensor | None = None  # (B,) steps each example ran before it settled (per-example `tol`)
    settled: Tensor | None = None  # (B,) bool: met its `tol` before the cap (per-example `tol`)

    def part(self, rows: slice) -> RelaxResult:
        """The result of some examples only (e.g. the +β half of a stacked ±β batch)."""
        pick = (lambda t: None if t is None else t[rows])
        return RelaxResult([s[rows] for s in self.states], self.steps, pick(self.max_change),
                           pick(self.mean_change), [], pick(self.example_steps), pick(self.settled))


def _differences(new: States, old: States) -> Tensor:
    """`new − old` of every unit of every layer, one row per example: `(B, units)`."""
    return torch.cat([(a - b).flatten(1) for a, b in zip(new, old)], 1)


def state_change(new: States, old: States) -> tuple[Tensor, Tensor]:
    """Per-example largest and mean absolute change over every unit of every layer, each `(B,)`."""
    change = _differences(new, old).abs()
    return change.amax(1), change.mean(1)


def _layer_changes(new: States, old: States, relative: bool | Sequence[bool] = False):
    """Per layer, `new − old` with one row per example, `(B, units of the layer)`; `relative` (for every layer, or
    one flag per layer): divided by `max(1, |new|)`, how a bfloat16 phase tests settling: bfloat16 rounds a state s
    to steps of ~|s|·2⁻⁸, so a large state (the attention blocks' reach 5–10 on trained weights) can flip between
    two neighbours forever; in absolute terms such an example never met `LOW_RESOLUTION` and ran to the cap (6 % of
    them on the default run's epoch-15 weights, 0 % with this test). Layer by layer, not concatenated: the
    settling test runs every step."""
    flags = relative if isinstance(relative, Sequence) else [relative] * len(new)
    for a, b, rel in zip(new, old, flags):
        change = torch.sub(a, b).flatten(1)
        yield change.div_(a.flatten(1).abs().clamp_min(1.0)) if rel else change


def _relative_layers(net: Network, n_layers: int) -> tuple[bool, ...]:
    """The layers a bfloat16 settling test divides by `max(1, |s|)`: all, except a HopfieldEPNet's dense layers,
    whose activations keep them within [-1, 1] (`ACTIVATION_RANGE`), where that divisor is 1 (the same numbers,
    three passes fewer per layer)."""
    low, high = ACTIVATION_RANGE.get(getattr(net, "activation", None), (-math.inf, math.inf))
    bounded = isinstance(net, HopfieldEPNet) and -1.0 <= low and high <= 1.0
    return (True, *[not bounded] * (n_layers - 1))


def largest_change(new: States, old: States, relative: bool = False) -> Tensor:
    """Per example, the largest absolute change over every unit of every layer, `(B,)` (`relative`: as in
    `_layer_changes`)."""
    return torch.stack([c.abs_().amax(1) for c in _layer_changes(new, old, relative)]).amax(0)


def pair_changes(new: States, old: States, relative: bool = False) -> Tensor:
    """For a batch of two halves (row i pairs with row i + B/2): per pair, the largest absolute change of the
    half-difference `(a − b)/2` (row 0) and of the mean `(a + b)/2` (row 1) over every unit, `(2, B/2)`."""
    parts = []
    for change in _layer_changes(new, old, relative):
        first, second = change.chunk(2)
        parts += [torch.sub(first, second).abs_().amax(1), torch.add(first, second).abs_().amax(1)]
    return torch.stack(parts).view(-1, 2, parts[0].shape[0]).amax(0).mul_(0.5)


def relax(
    net: Network,
    x: Tensor,
    states: States,
    steps: int,
    beta: float | Tensor = 0.0,
    target: Tensor | None = None,
    *,
    field_mode: str = "closed",
    tol: float | Tensor | None = None,
    record: bool = False,
    drive: Tensor | None = None,
    keys: tuple[Tensor, Tensor | None] | None = None,
    pair_tol: float | None = None,
    delta_weight: Tensor | None = None,
    updates: str = "synchronous",
) -> RelaxResult:
    """Run up to `steps` steps (in the order `updates`, below). With `tol` (one number or one per example `(B,)`;
    never below what `x`'s dtype can show, `seqep.precision.settle_tol`), each example stops once it settled to its
    `tol` (its largest state change and its estimated distance to the fixed point below it, `converged`; its
    states stay as they were then) and stops costing: the batch is compacted to the examples still moving
    (`relax_per_example`, where `pair_tol` makes rows i and i + B/2 one pair); under autograd (BPTT's graph) or
    `record`, the whole batch stops together, once every largest change is below `tol`. `delta_weight`: a
    low-precision copy of the first dense weight, whose products the closed-form engine then takes on the
    deviation from the start `states` (`ClosedFormPhase`'s `around`; `precision=bf16-delta`); other steppers
    ignore it.

    `updates` (one of `UPDATES`): "synchronous" computes every layer of a step from the last states (the paper's
    dynamics; what BPTT and the GDU check differentiate); "alternating" first the even layers (the projections,
    the second dense layer, ...) and then the odd ones from the even layers' new states: a red-black Gauss-Seidel
    sweep with the same fixed points, which on a layered network contracts about twice as fast per step
    (`alternating`)."""
    if field_mode not in FIELD_MODES:
        raise ValueError(f"field_mode must be one of {FIELD_MODES}, got {field_mode!r}")
    if updates not in UPDATES:
        raise ValueError(f"updates must be one of {UPDATES}, got {updates!r}")
    tol, pair_tol = settle_tol(tol, x.dtype), settle_tol(pair_tol, x.dtype)
    if tol is not None and not record and not torch.is_grad_enabled():
        return relax_per_example(net, x, states, steps, beta, target, field_mode=field_mode, tol=tol, drive=drive,
                                 keys=keys, pair_tol=pair_tol, delta_weight=delta_weight, updates=updates)
    keys = net.keys(x) if keys is None else keys
    step = _stepper(net, x, beta, target, field_mode, drive, keys, _around(states, delta_weight), updates)
    reused = isinstance(step, ClosedFormPhase)
    trajectory, largest, mean = [], None, None
    for t in range(steps):
        new = step(states)
        if tol is not None or t == steps - 1:
            with torch.no_grad():
                largest, mean = state_change(new, states)
        states = new
        if record:
            trajectory.append([s.clone() for s in states] if reused else states)
        if tol is not None and bool((largest < tol).all()):
            return RelaxResult(states, t + 1, largest, mean, trajectory)
    return RelaxResult(states, steps, largest, mean, trajectory)


def converged(change: Tensor, before: Tensor, tol: float | Tensor, floor: float, stall: float = 0.0) -> Tensor:
    """Per example: has it settled to `tol`? Its last `change` is below `tol`, and so is its estimated distance to
    the fixed point, `change·ρ/(1−ρ)` with the contraction per step ρ = √(`change`/`before`), `before` being the
    change two steps earlier (two steps: a synchronous step on a layered network moves the even and the odd
    layers as two interleaved sequences). A slowly contracting example (ρ near 1) moves little per step while
    still far from its equilibrium: on small networks with scaled-up weights the last change alone stopped
    examples up to 5.5·tol from their fixed point, this test within 1.2·tol, for 0-12 % more steps. A change that
    did not shrink is never settled, unless it is below `floor`, the rounding noise of the dtype (where ρ means
    nothing). With `stall` (a bfloat16 phase passes `seqep.precision.LOW_STALL`), also a change that stopped
    shrinking within `stall` times `floor`: a cycle of roundings (one bfloat16 example in ~1000 of the default run
    ran to the cap of 100 steps alone: a tenth of the phase's time). Not any change of one `floor`: a state moving
    by that much while still shrinking is not done (letting it stop cost the mixed mode's gradient 0.0006 of cosine
    to float64 on the default run's weights). The first two steps (`before` = inf) test the change alone."""
    rho = (change / before).sqrt()
    settled = ((change < tol) & (change * rho < tol * (1 - rho))) | (change < floor)
    return settled | ((change >= before) & (change <= stall * floor)) if stall else settled


COMPACT_AT = 0.75  # rebuild the phase for the moving examples once at most this share of its batch still moves


def _around(states: States, delta_weight: Tensor | None) -> tuple[States, Tensor] | None:
    return None if delta_weight is None else (states, delta_weight)


def alternating(step):
    """A step function in the alternating order from any synchronous one (`step(states) -> states`), for networks
    and paths without the closed-form engine's own (`ClosedFormPhase(alternate=True)`): the even layers of one
    synchronous step, then the odd layers of a second step taken from them. Two steps' cost per step, so only the
    closed-form engine gains time from the order; this keeps its meaning the same everywhere."""
    def step_alternating(states: States) -> States:
        first = step(states)
        second = step([new if i % 2 == 0 else old for i, (new, old) in enumerate(zip(first, states))])
        return [a if i % 2 == 0 else b for i, (a, b) in enumerate(zip(first, second))]
    return step_alternating


def _stepper(net: Network, x: Tensor, beta, target, field_mode: str, drive, keys, around=None,
             updates: str = "synchronous", twin: bool = False):
    """One phase's step function, in the order `updates`: the old code's autograd of Φ (input drive included,
    rebuilt every step); without a graph, the closed-form engine with two reused state buffers for a HopfieldEPNet
    (seqep/phase.py; `around` as there); else the network's functional step (BPTT's graph steps, so autograd can go
    back through them, and any other Network), its input drive computed once."""
    if field_mode == "autograd":
        step = partial(net.step_autograd, x, beta=beta, target=target, keys=keys)
    elif isinstance(net, HopfieldEPNet) and not torch.is_grad_enabled():
        return ClosedFormPhase(net, x, beta, target, drive, keys, around, alternate=updates == "alternating",
                               twin=twin)
    else:
        drive = net.input_drive(x) if drive is None and hasattr(net, "input_drive") else drive
        step = partial(net.step, x, beta=beta, target=target, drive=drive, keys=keys)
    return alternating(step) if updates == "alternating" else step


@torch.no_grad()
def relax_per_example(net: Network, x: Tensor, states: States, steps: int, beta: float | Tensor = 0.0,
                      target: Tensor | None = None, *, field_mode: str = "closed", tol: float | Tensor,
                      drive: Tensor | None = None, keys: tuple[Tensor, Tensor | None] | None = None,
                      pair_tol: float | None = None, delta_weight: Tensor | None = None,
                      updates: str = "synchronous") -> RelaxResult:
    """Up to `steps` steps; an example that settled to `tol` keeps the states it had then: its largest change, and
    the distance to its fixed point estimated from how fast those changes shrink, fell below `tol` (`converged`).

    Examples of a batch do not interact, so each one's states are those of a run of its own. The phase runs on
    the examples still moving: once at most `COMPACT_AT` of its batch still moves, it shrinks to those
    (`ClosedFormPhase.select` indexes the constants it prepared; other steppers are rebuilt). `steps` of the
    result is the longest any example ran; `example_steps` is each one's, `settled` whether it met its criterion
    before the cap.

    `tol` may be one number per row `(B,)` (EP's `adaptive_beta`: each example settles to `tol·β` of its own β).
    `pair_tol`: the batch is two halves of the same examples (symmetric EP's +β and −β phases: the same x; when
    they start from the same states too, the engine's first step takes their shared products once); row i and row
    i + B/2 stop together, once the largest change of their half-difference is below `tol` (row i's) and that of their
    mean below `pair_tol`. EP's gradient is the difference of the two, so it needs `tol` there, while what the
    free phase left unsettled moves both halves alike: it only has to settle as far as the free phase did."""
    B = x.shape[0]
    # bfloat16: changes relative to max(1, |s|) (`_layer_changes`), where |s| may exceed 1
    relative = _relative_layers(net, len(states)) if x.dtype == LOW_DTYPE else False
    keys = net.keys(x) if keys is None else keys
    if drive is None and field_mode != "autograd" and hasattr(net, "input_drive"):
        drive = net.input_drive(x)
    # every row is written exactly once (when it settles, or at the cap), so `out` starts uninitialised
    out = [s.new_empty(s.shape) for s in states] if steps > 0 else [s.clone() for s in states]
    largest = x.new_zeros(B)
    mean = x.new_zeros(B)
    ran = torch.zeros(B, dtype=torch.long, device=x.device)
    met = torch.zeros(B, dtype=torch.bool, device=x.device)
    rows = torch.arange(B, device=x.device)  # the examples the phase runs on
    beta_rows = beta if isinstance(beta, Tensor) and beta.ndim > 0 else None
    tol_rows = tol if isinstance(tol, Tensor) and tol.ndim > 0 else None

    def tolerance(rows):  # what the settling test compares with on `rows`. Pairs: laid out as `pair_changes`,
        # `(2, pairs)` or `(2, 1)`: the first halves' tolerances (the half-difference's) over `pair_tol` (the mean's)
        if pair_tol is None:
            return tol if tol_rows is None else tol_rows[rows]
        if tol_rows is None:
            return x.new_tensor([[float(tol)], [float(pair_tol)]])
        first = tol_rows[rows[:len(rows) // 2]].to(x.dtype)
        return torch.stack([first, torch.full_like(first, pair_tol)])

    def build(idx):  # the phase of some examples (None: all, as given)
        pick = (lambda t: t) if idx is None else (lambda t: None if t is None else t[idx])
        b = pick(beta_rows) if beta_rows is not None else beta
        # only the first build can make a ClosedFormPhase (it shrinks by `select`), the one stepper using `around`
        around = _around(states, delta_weight) if idx is None else None
        return _stepper(net, pick(x), b, pick(target), field_mode, pick(drive), (pick(keys[0]), pick(keys[1])),
                        around, updates, twin=pair_tol is not None)

    step, cur = build(None), list(states)  # phases never write their start states
    tol_now, floor, stall = tolerance(rows), resolution(x.dtype), LOW_STALL if x.dtype == LOW_DTYPE else 0.0
    moving = torch.ones(B, dtype=torch.bool, device=x.device)  # over `rows`
    # the changes of the last two steps, oldest first, over `rows` (pairs: `(2, pairs)`, the half-difference's
    # and the mean's over the first halves): what `converged` estimates the contraction from
    history = [x.new_full((2, B // 2) if pair_tol is not None else (B,), float("inf")) for _ in range(2)]
    n_moving, used = B, 0
    for t in range(steps):
        new = step(cur)
        if pair_tol is not None:  # `rows` keeps both halves' rows in step: a pair always leaves together
            change = pair_changes(new, cur, relative)
            both = converged(change, history[0], tol_now, floor, stall).all(0)  # the half-difference's and the mean's
            settled = moving & torch.cat([both, both])
        else:
            change = largest_change(new, cur, relative)
            settled = moving & converged(change, history[0], tol_now, floor, stall)
        history = [history[1], change]
        moving &= ~settled
        still = int(moving.sum())  # the one host sync of a step
        used, last = t + 1, t + 1 == steps
        if still < n_moving or last:  # written back once: when settled, or at the cap
            done = (settled | moving if last else settled).nonzero().squeeze(1)  # positions in `rows`
            idx = rows[done]
            ended, before = [n.index_select(0, done) for n in new], [c.index_select(0, done) for c in cur]
            for o, n in zip(out, ended):
                o.index_copy_(0, idx, n)
            # the reported changes, of the rows written back only (bfloat16: the largest as it was tested; one
            # phase's test measured exactly that, `largest_change`, so it is taken from there)
            if pair_tol is None:
                largest[idx], mean[idx] = change[done], _differences(ended, before).abs_().mean(1)
            else:
                largest[idx], mean[idx] = state_change(ended, before)
                if relative:
                    largest[idx] = largest_change(ended, before, relative)
            ran[idx], met[idx] = t + 1, settled[done]
        n_moving = still
        if n_moving == 0:
            break
        if n_moving <= COMPACT_AT * len(rows) and t + 1 < steps:
            keep = moving.nonzero().squeeze(1)
            rows, cur = rows[keep], [n.index_select(0, keep) for n in new]  # copies: the old buffers are left
            pairs = keep[:len(keep) // 2] if pair_tol is not None else keep  # a pair's halves leave together
            history = [h.index_select(-1, pairs) for h in history]
            tol_now = tolerance(rows)
            step = step.select(keep) if isinstance(step, ClosedFormPhase) else build(rows)
            moving = torch.ones(len(rows), dtype=torch.bool, device=x.device)
        else:
            cur = new
    return RelaxResult(out, used, largest, mean, [], ran, met)
