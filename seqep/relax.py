"""Relaxation: run a network's synchronous dynamics for a given β (SPEC.md §3-4).

Free phase = `relax(..., beta=0)` from zero states; nudged phases = `relax(..., beta=±β)` from the free
equilibrium. The constant input drive and the Hopfield keys are computed once per call (or passed in, to share
them between phases). Runs in whatever grad mode the caller chose: under `torch.no_grad()` for EP (closed-form
steps into two reused buffers, `ClosedFormPhase`), with a graph for BPTT (functional steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from seqep.network import HopfieldEPNet, Network, States
from seqep.phase import ClosedFormPhase

FIELD_MODES = ("closed", "autograd")


@dataclass
class RelaxResult:
    states: States
    steps: int  # steps actually run (fewer than asked only when `tol` stopped it early)
    max_change: Tensor | None = None  # (B,) largest |Δs| over all units at the last step
    mean_change: Tensor | None = None  # (B,) mean |Δs| over all units at the last step
    trajectory: list[States] = field(default_factory=list)  # states after every step when record=True


def state_change(new: States, old: States) -> tuple[Tensor, Tensor]:
    """Per-example largest and mean absolute change over every unit of every layer, each `(B,)`."""
    diffs = [(a - b).abs().flatten(1) for a, b in zip(new, old)]
    largest = torch.stack([d.amax(1) for d in diffs], 1).amax(1)
    mean = torch.cat(diffs, 1).mean(1)
    return largest, mean


def relax(
    net: Network,
    x: Tensor,
    states: States,
    steps: int,
    beta: float | Tensor = 0.0,
    target: Tensor | None = None,
    *,
    field_mode: str = "closed",
    tol: float | None = None,
    record: bool = False,
    drive: Tensor | None = None,
    keys: tuple[Tensor, Tensor | None] | None = None,
) -> RelaxResult:
    """Run up to `steps` synchronous steps; stop early when the largest change of every example < `tol`."""
    if field_mode not in FIELD_MODES:
        raise ValueError(f"field_mode must be one of {FIELD_MODES}, got {field_mode!r}")
    keys = net.keys(x) if keys is None else keys
    if field_mode == "autograd":  # the old code's way: Φ (input drive included) rebuilt and differentiated
        step = partial(net.step_autograd, x, beta=beta, target=target, keys=keys)
    elif torch.is_grad_enabled():  # BPTT's graph steps: functional, so autograd can go back through them
        drive = net.input_drive(x) if drive is None else drive
        step = partial(net.step, x, beta=beta, target=target, drive=drive, keys=keys)
    elif isinstance(net, HopfieldEPNet):  # EP phases: no graph, two reused state buffers (seqep/phase.py)
        step = ClosedFormPhase(net, x, beta, target, drive, keys)
    else:  # any other Network: its functional step
        step = partial(net.step, x, beta=beta, target=target, drive=drive, keys=keys)
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
        if tol is not None and bool(largest.max() < tol):
            return RelaxResult(states, t + 1, largest, mean, trajectory)
    return RelaxResult(states, steps, largest, mean, trajectory)
