"""Backpropagation through time through the same dynamics (SPEC.md §4, the paper's baseline).

`truncate="last_k"` (the paper): T−K free steps without a graph, then K steps with one; `"full"`: a graph
through all T steps; `"implicit"`: recurrent backpropagation (Almeida 1987, Pineda 1987) from the settled free
state, the limit K → ∞ of `last_k` there (`implicit_gradients`). Loss ½‖s_out − e_y‖² (batch mean) backpropagated
into the parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqep.estimators.base import Estimator, StepOutput, mse_loss, set_grads
from seqep.network import Network, States
from seqep.precision import resolution
from seqep.relax import converged, relax

TRUNCATIONS = ("last_k", "full", "implicit")
ADJOINT_TOL = 1e-6  # implicit: an example's adjoint is done once it is within this share of its size of its limit


def _rows(tensors, idx):
    return [t.index_select(0, idx) for t in tensors]


def implicit_gradients(net: Network, x: Tensor, states: States, target: Tensor, steps: int, *,
                       field_mode: str = "closed", updates: str = "synchronous",
                       tol: float = ADJOINT_TOL) -> tuple[list[Tensor | None], Tensor]:
    """The gradient of ½‖s_out − e_y‖² (batch mean) at a fixed point s* of the dynamics F, through s*'s dependence
    on the parameters: `F_θᵀ v` with the adjoint `v = Σ_k (F_sᵀ)ᵏ g`, g = ∂loss/∂s*, summed by the iteration
    v ← g + F_sᵀ v (one vector-Jacobian product of one step at s* per iteration). K steps of truncated BPTT from
    s* sum the first K terms, so this is their limit; and any update order with the same fixed points gives the
    same limit (the derivative of s*(θ)), the alternating one in about half the iterations.

    Per example: an example stops once its adjoint settled to `tol` times its largest entry
    (`seqep.relax.converged`: the last change and the distance estimated from its contraction) and stops
    costing (the step's graph is rebuilt for those still iterating); at most `steps` terms. A slowly contracting
    example (a trained network's stragglers) needs hundreds of terms that a fixed K cuts off: on the default run's
    weights, 40 graph steps gave one such example's projection gradient norm 1.04, 200 steps 2.56, 1000 2.79.
    Returns the parameter gradients (None where a parameter has none) and `(B,)` the terms each example used."""
    B = x.shape[0]
    drive = net.input_drive(x) if field_mode != "autograd" and hasattr(net, "input_drive") else None
    keys = net.keys(x)
    floor = resolution(x.dtype)

    def graph(idx: Tensor | None) -> tuple[States, States]:  # one step at s* (of the examples `idx`) with a graph
        pick = (lambda t: t) if idx is None else (lambda t: None if t is None else t.index_select(0, idx))
        start = [pick(s).detach().requires_grad_(idx is not None) for s in states]
        new = relax(net, pick(x), start, 1, field_mode=field_mode, drive=pick(drive),
                    keys=(pick(keys[0]), pick(keys[1])), updates=updates).states
        return start, new

    with torch.enable_grad():
        start = [s.detach().requires_grad_() for s in states]
        g = torch.autograd.grad(mse_loss(net.output(start), target), start, allow_unused=True)
    g = [torch.zeros_like(s) if d is None else d.detach() for s, d in zip(states, g)]
    v = [d.clone() for d in g]  # the adjoint of every example; rows are written back as they finish
    used = torch.ones(B, dtype=torch.long, device=x.device)
    rows = torch.arange(B, device=x.device)
    history = [x.new_full((B,), float("inf"))] * 2  # the changes of the last two terms, oldest first
    with torch.enable_grad():
        at, new = graph(rows)
        g_now, v_now = g, v
        for term in range(1, steps):
            jv = torch.autograd.grad(new, at, v_now, retain_graph=True, allow_unused=True)
            nxt = [a if b is None else a + b for a, b in zip(g_now, jv)]
            change = torch.stack([(a - b).abs().flatten(1).amax(1) for a, b in zip(nxt, v_now)]).amax(0)
            size = torch.stack([a.abs().flatten(1).amax(1) for a in nxt]).amax(0)
            done = converged(change, history[0], tol * size, floor * size) | (size == 0) | (term + 1 == steps)
            v_now, history = [a.detach() for a in nxt], [history[1], change]
            used[rows] = term + 1
            if bool(done.any()):
                idx = done.nonzero().squeeze(1)
                for whole, part in zip(v, v_now):
                    whole.index_copy_(0, rows[idx], part.index_select(0, idx))
                keep = (~done).nonzero().squeeze(1)
                if len(keep) == 0:
                    break
                rows, g_now, v_now, history = rows[keep], _rows(g_now, keep), _rows(v_now, keep), _rows(history, keep)
                at, new = graph(rows)
        params = list(net.parameters())
        _, new = graph(None)  # F_θᵀ v over the whole batch
        grads = torch.autograd.grad(new, params, v, allow_unused=True)
    return list(grads), used


class BPTT(Estimator):
    """`truncate`: one of `TRUNCATIONS` (last_k = the paper's baseline; full = all T steps; implicit = recurrent
    backpropagation from the settled free state, at most K terms: T caps the free phase, which `tol` settles
    per example)."""

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
        return {"last_k": self.K, "full": self.T, "implicit": 0}[self.truncate]

    def compute_gradients(self, net: Network, x: Tensor, y: Tensor) -> StepOutput:
        target = self.target(net, y, x)
        with torch.no_grad():
            head = self.free_phase(net, x, steps=self.T - self.graph_steps)
        if self.truncate == "implicit":
            grads, _ = implicit_gradients(net, x, head.states, target, self.K, field_mode=self.field_mode,
                                          updates=self.updates)
            set_grads(net, grads)
            return StepOutput(mse_loss(net.output(head.states), target), net.output(head.states), head)
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
