"""The GDU check (SPEC.md §4): per-step EP updates against per-step BPTT gradients, in O(K) relaxation steps.

Time line. The free phase runs `T` steps at β = 0 from zero states: `s_0, s_1, ..., s_T = s⁰`. BPTT backpropagates
the loss `L = ½‖s_T,out − e_y‖²` through the last `K` of them; the nudged phases run `K` steps at ±β from `s⁰`:
`s^±_0 = s⁰, s^±_1, ..., s^±_K`. The t-th nudged step (`s^±_t -> s^±_{t+1}`, t = 0..K−1) pairs with the t-th
free step counted backwards from the end (`s_{T−t−1} -> s_{T−t}`), because BPTT runs backwards in time.

What is compared, per step t (every tensor has a leading step axis of length K):

| kind  | BPTT side                                   | EP side (variant "positive"; see below)            |
|-------|---------------------------------------------|----------------------------------------------------|
| state | `−∂L_b/∂s_{T−t}` per example                | `(s⁺_{t+1} − s⁺_t) / β`                            |
| field | `−∂L_b/∂g_{T−t}` per example                | the same state update                              |
| param | `∂L/∂θ` through the copy of θ of that step  | `−(⟨∂Φ/∂θ⟩(s⁺_{t+1}) − ⟨∂Φ/∂θ⟩(s⁺_t)) / β`         |

`L_b` is example b's own loss (so state tensors keep their batch axis); `L` is the batch mean and `⟨·⟩` the batch
mean (so parameters compare like the gradients an optimizer sees). `g_{T−t}` is the local field from which step
`T−t` computed `s_{T−t}` (SPEC.md §3). Variants:

    positive   (s⁺_{t+1} − s⁺_t) / β                               θ: −(⟨∂Φ/∂θ⟩(s⁺_{t+1}) − ⟨∂Φ/∂θ⟩(s⁺_t)) / β
    negative   (s⁻_{t+1} − s⁻_t) / (−β)                            θ: −(⟨∂Φ/∂θ⟩(s⁻_{t+1}) − ⟨∂Φ/∂θ⟩(s⁻_t)) / (−β)
    symmetric  ((s⁺_{t+1} − s⁻_{t+1}) − (s⁺_t − s⁻_t)) / (2β)     θ: −(Δ⟨∂Φ/∂θ⟩(s⁺) − Δ⟨∂Φ/∂θ⟩(s⁻)) / (2β)

so symmetric = (positive + negative) / 2 and each variant's steps sum to that estimator's gradient (SPEC.md §4).

Why the "field" rows: the update `s <- f(g)` has Jacobian `D = ∂f/∂g` (σ' for dense layers, the softmax Jacobian
for Hopfield blocks), and to first order in β the EP state update is `D (−∂L/∂s)` = `−∂L/∂g`, not `−∂L/∂s`. The
old code compares states with `−∂L/∂s` (kept, as SPEC.md asks); with `my_hard_sig` that is off by σ' = ½ in the
linear range and by the whole value for saturated units. Parameters are unaffected by `D`.

BPTT in O(K): one graph through the K steps, each step run with its own fresh copy of the parameters
(`torch.func.functional_call`) and with `retain_grad` on every state and field, so one backward gives every
step's contribution. `bptt_per_step_reference` is the O(K²) procedure of the old code (truncated BPTT over the
last k steps for k = 1..K, consecutive differences), kept to test the O(K) result against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from seqep.network import HopfieldEPNet, States, one_hot
from seqep.relax import relax

VARIANTS = ("positive", "negative", "symmetric")
KINDS = ("state", "field", "param")


@dataclass
class GDUResult:
    """Per-step EP updates and BPTT gradients of one batch, keyed by tensor name.

    Names: state layers in the old code's order (`s1` [.. `s4`], `h1`, ..., `out`), the fields as
    `field.<layer>`, parameters as `synapses.<i>.weight|bias`. Every tensor is `(K, *shape)`: step t (counted from
    the start of the nudged phase, i.e. backwards from the end of the free phase) first; states and fields keep
    the batch axis, `(K, B, ...)`; parameters are batch means, `(K, *param.shape)`.
    """

    beta: float
    T: int
    K: int
    kinds: dict[str, str]  # name -> "state" | "field" | "param", in report order
    bptt: dict[str, Tensor]  # name -> (K, ...), signed to compare directly with EP (table in the module doc)
    ep: dict[str, dict[str, Tensor]]  # variant -> name -> (K, ...)
    loss: float  # batch-mean loss at the free equilibrium
    free_max_change: float  # largest |Δs| over all units and examples at the last free step (≈ 0: converged)
    nudged_max_change: dict[str, float] = field(default_factory=dict)  # "plus"/"minus": at the last nudged step

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n, k in self.kinds.items() if kind is None or k == kind]


@dataclass
class BPTTSteps:
    """Per-step BPTT targets of one batch, shared by every β of a sweep (they do not depend on β)."""

    targets: dict[str, Tensor]  # name -> (K, ...)
    kinds: dict[str, str]
    equilibrium: States  # s_T = s⁰, where the nudged phases start
    loss: float
    free_max_change: float


def state_names(net: HopfieldEPNet) -> list[str]:
    """The old code's layer names, in `net.layer_states` order: `s1` [.. `s4`], `h1`, ..., `out`."""
    hidden = [f"h{i + 1}" for i in range(len(net.fc) - 1)]
    return [f"s{p + 1}" for p in range(net.n_proj)] + hidden + ["out"]


class _Step(nn.Module):
    """`forward = one closed-form step` so `functional_call` can run it with substituted parameters.

    The input drive is recomputed from the (substituted) projection weights inside every step, so each step's
    copy of `W_P` receives its own gradient.
    """

    def __init__(self, net: HopfieldEPNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, states: States, keys: tuple[Tensor, Tensor | None]) -> tuple[States, States]:
        fields = self.net.fields(x, states)
        return fields, self.net.update(fields, *keys)


def _per_example_loss(net: HopfieldEPNet, states: States, target: Tensor) -> Tensor:
    """½‖s_out − e_y‖² per example, `(B,)`."""
    return 0.5 * ((net.output(states) - target) ** 2).sum(1)


def _layers(net: HopfieldEPNet, tensors: States, like: States) -> list[Tensor]:
    """Old-code layer order; a missing gradient (the tensor does not reach the loss) becomes zeros."""
    filled = [torch.zeros_like(s) if g is None else g for g, s in zip(tensors, like)]
    return net.layer_states(filled)


def free_trajectory(net: HopfieldEPNet, x: Tensor, steps: int) -> tuple[list[States], float]:
    """`[s_0 = 0, s_1, ..., s_steps]` at β = 0 (no graph) and the largest |Δs| at the last step."""
    with torch.no_grad():
        start = net.init_states(x.shape[0], device=x.device, dtype=x.dtype)
        res = relax(net, x, start, steps, record=True)
    change = float(res.max_change.max()) if res.max_change is not None else float("nan")
    return [start, *res.trajectory], change


def bptt_steps(net: HopfieldEPNet, x: Tensor, y: Tensor, T: int, K: int) -> BPTTSteps:
    """Free phase, then one backward through its last K steps with a fresh parameter copy per step: O(T + K).

    x `(B, S, d)`, y `(B,)`. Targets (module doc table): `−∂L_b/∂s_{T−t}` `(K, B, ...)` per state layer,
    `−∂L_b/∂g_{T−t}` per field, `∂L/∂θ` of the step `s_{T−t−1} -> s_{T−t}` `(K, *θ.shape)` per parameter.
    """
    if not 1 <= K <= T:
        raise ValueError(f"the GDU check needs 1 <= K <= T (got T={T}, K={K})")
    B = x.shape[0]
    target = one_hot(y, net.n_classes, x.dtype)
    with torch.no_grad():
        head = net.init_states(B, device=x.device, dtype=x.dtype)
        head = relax(net, x, head, T - K).states if T > K else head
    keys, stepper = net.keys(x), _Step(net)
    named = dict(net.named_parameters())
    copies = [{n: p.detach().clone().requires_grad_(True) for n, p in named.items()} for _ in range(K)]
    fields, states = [], []  # after free step T−K+1+j, j = 0..K−1
    with torch.enable_grad():
        s = [t.detach() for t in head]
        for j in range(K):
            g, s = functional_call(stepper, {f"net.{n}": v for n, v in copies[j].items()}, (x, s, keys))
            for tensor in (*g, *s):
                tensor.retain_grad()
            fields.append(g)
            states.append(s)
        loss_b = _per_example_loss(net, s, target)
        loss_b.sum().backward()  # per-example losses: states get ∂L_b/∂s; parameters are divided by B below
    previous = states[-2] if K > 1 else head
    last_change = max(float((a - b).detach().abs().max()) for a, b in zip(states[-1], previous))
    order = range(K - 1, -1, -1)  # t = 0 is the last free step
    targets: dict[str, Tensor] = {}
    kinds: dict[str, str] = {}
    for prefix, kind, graph in (("", "state", states), ("field.", "field", fields)):
        per_step = [_layers(net, [None if t.grad is None else -t.grad for t in graph[j]], graph[j]) for j in order]
        for i, name in enumerate(state_names(net)):
            targets[prefix + name] = torch.stack([layers[i] for layers in per_step]).detach()
            kinds[prefix + name] = kind
    for name, p in named.items():
        grads = [copies[j][name].grad for j in order]
        targets[name] = torch.stack([torch.zeros_like(p) if g is None else g / B for g in grads]).detach()
        kinds[name] = "param"
    equilibrium = [t.detach() for t in s]
    return BPTTSteps(targets, kinds, equilibrium, float(loss_b.detach().mean()), last_change)


def nudged_trajectories(net: HopfieldEPNet, x: Tensor, y: Tensor, start: States, K: int,
                        beta: float) -> tuple[list[States], list[States], dict[str, float]]:
    """`[s^±_0 = start, ..., s^±_K]` for +β and −β, run as one batch of 2B; also the last-step max |Δs|."""
    B = x.shape[0]
    target = one_hot(y, net.n_classes, x.dtype)
    two = lambda t: torch.cat([t, t])
    betas = torch.cat([x.new_full((B,), beta), x.new_full((B,), -beta)])
    with torch.no_grad():
        res = relax(net, two(x), [two(s) for s in start], K, betas, two(target), record=True)
    plus = [list(start)] + [[s[:B] for s in st] for st in res.trajectory]
    minus = [list(start)] + [[s[B:] for s in st] for st in res.trajectory]
    change = {"plus": float(res.max_change[:B].max()), "minus": float(res.max_change[B:].max())}
    return plus, minus, change


def phi_param_grads(net: HopfieldEPNet, x: Tensor, states: States) -> list[Tensor]:
    """`⟨∂Φ/∂θ⟩` (batch mean) at fixed states, one tensor per parameter in `named_parameters` order.

    The nudge term of Φ does not depend on θ, so Φ is taken at β = 0.
    """
    with torch.enable_grad():
        phi = net.phi(x, [s.detach() for s in states]).mean()
        return list(torch.autograd.grad(phi, list(net.parameters())))


def _step_differences(seq: list[list[Tensor]]) -> list[Tensor]:
    """`[a_0, ..., a_K]` (each a list of tensors) -> per tensor `(K, ...)` of `a_{t+1} − a_t`."""
    stacked = [torch.stack(parts) for parts in zip(*seq)]
    return [a[1:] - a[:-1] for a in stacked]


def ep_steps(net: HopfieldEPNet, x: Tensor, plus: list[States], minus: list[States], beta: float,
             variants: Sequence[str] = VARIANTS, kinds: Sequence[str] = KINDS) -> dict[str, dict[str, Tensor]]:
    """Per-step EP updates of every variant (module doc), from the K+1 recorded states of each phase.

    Returns variant -> name -> `(K, ...)` for the requested `kinds`; `field.<layer>` entries are the state
    updates again (the same tensors).
    """
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown GDU variants {sorted(unknown)}; choose from {VARIANTS}")
    # one-sided raw differences per step, (K, ...): d⁺ = a(s⁺_{t+1}) − a(s⁺_t), d⁻ likewise
    names, d_plus, d_minus, sign = [], [], [], []
    if "state" in kinds or "field" in kinds:
        names += state_names(net)
        d_plus += _step_differences([net.layer_states(s) for s in plus])
        d_minus += _step_differences([net.layer_states(s) for s in minus])
        sign += [1.0] * (len(names) - len(sign))
    if "param" in kinds:
        names += [n for n, _ in net.named_parameters()]
        phi0 = phi_param_grads(net, x, plus[0])  # s⁺_0 = s⁻_0 = s⁰
        d_plus += _step_differences([phi0] + [phi_param_grads(net, x, s) for s in plus[1:]])
        d_minus += _step_differences([phi0] + [phi_param_grads(net, x, s) for s in minus[1:]])
        sign += [-1.0] * (len(names) - len(sign))  # parameters: ΔEP = −Δ⟨∂Φ/∂θ⟩ / β
    out: dict[str, dict[str, Tensor]] = {}
    for variant in variants:
        if variant == "positive":
            updates = {n: c * dp / beta for n, c, dp in zip(names, sign, d_plus)}
        elif variant == "negative":
            updates = {n: c * dm / (-beta) for n, c, dm in zip(names, sign, d_minus)}
        else:  # ((a⁺_{t+1} − a⁻_{t+1}) − (a⁺_t − a⁻_t)) / (2β)
            updates = {n: c * (dp - dm) / (2 * beta) for n, c, dp, dm in zip(names, sign, d_plus, d_minus)}
        if "field" in kinds:
            updates |= {f"field.{n}": updates[n] for n in state_names(net)}
        if "state" not in kinds:
            for n in state_names(net):
                updates.pop(n, None)
        out[variant] = updates
    return out


def gdu_check(net: HopfieldEPNet, x: Tensor, y: Tensor, T: int, K: int, beta: float,
              variants: Sequence[str] = VARIANTS, bptt: BPTTSteps | None = None,
              kinds: Sequence[str] = KINDS) -> GDUResult:
    """EP per-step updates vs BPTT per-step gradients on one batch, in O(T + 3K) relaxation steps.

    x `(B, S, d)` in the parameters' dtype (float64 recommended), y `(B,)` class indices. `T` free steps (the
    GDU property needs them to reach equilibrium: check `free_max_change`), `K` nudged / backpropagated steps,
    nudge `beta > 0`. Pass `bptt` (from `bptt_steps`) to reuse the BPTT side across several β; `kinds` limits
    the EP side (and the result) to some of "state", "field", "param".
    """
    if beta <= 0:
        raise ValueError(f"the GDU check needs a positive nudge beta (got {beta}); the variants set the sign")
    bptt = bptt_steps(net, x, y, T, K) if bptt is None else bptt
    plus, minus, nudged_change = nudged_trajectories(net, x, y, bptt.equilibrium, K, beta)
    ep = ep_steps(net, x, plus, minus, beta, variants, kinds)
    names = {n: k for n, k in bptt.kinds.items() if k in kinds}
    return GDUResult(beta=beta, T=T, K=K, kinds=names, bptt={n: bptt.targets[n] for n in names}, ep=ep,
                     loss=bptt.loss,
                     free_max_change=bptt.free_max_change, nudged_max_change=nudged_change)


def gdu_sweep(net: HopfieldEPNet, x: Tensor, y: Tensor, T: int, K: int, betas: Sequence[float],
              variants: Sequence[str] = VARIANTS, kinds: Sequence[str] = KINDS,
              bptt: BPTTSteps | None = None) -> dict[float, GDUResult]:
    """`gdu_check` for every β, sharing the (β-independent) BPTT side: O(T + K + 2K·len(betas)) steps."""
    bptt = bptt_steps(net, x, y, T, K) if bptt is None else bptt
    return {float(b): gdu_check(net, x, y, T, K, float(b), variants, bptt=bptt, kinds=kinds) for b in betas}


def bptt_steps_reference(net: HopfieldEPNet, x: Tensor, y: Tensor, T: int, K: int) -> dict[str, Tensor]:
    """The old code's O(K²) procedure, through the engine's own `relax`: for k = 0..K, truncated BPTT over the
    last k free steps; the parameter contribution of step t = k−1 is `grad_k − grad_{k−1}` and the state target
    for t = k is `−∂L_b/∂s_{T−k}`, the gradient into the start of the k-step graph. States and parameters only.
    """
    if not 1 <= K <= T:
        raise ValueError(f"the GDU check needs 1 <= K <= T (got T={T}, K={K})")
    B = x.shape[0]
    target = one_hot(y, net.n_classes, x.dtype)
    trajectory, _ = free_trajectory(net, x, T)
    params = list(net.parameters())
    previous = [torch.zeros_like(p) for p in params]
    state_steps: list[list[Tensor]] = []
    param_steps: list[list[Tensor]] = []
    for k in range(K + 1):
        with torch.enable_grad():
            start = [s.detach().requires_grad_(True) for s in trajectory[T - k]]
            end = relax(net, x, start, k).states if k else start
            loss = _per_example_loss(net, end, target).sum()
            wrt = start + (params if k else [])
            grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        if k < K:
            state_steps.append(_layers(net, [None if g is None else -g for g in grads[:len(start)]], start))
        if k:
            current = [torch.zeros_like(p) if g is None else g / B for g, p in zip(grads[len(start):], params)]
            param_steps.append([c - p for c, p in zip(current, previous)])
            previous = current
    out = {name: torch.stack([layers[i] for layers in state_steps]).detach()
           for i, name in enumerate(state_names(net))}
    for i, (name, _) in enumerate(net.named_parameters()):
        out[name] = torch.stack([step[i] for step in param_steps]).detach()
    return out
