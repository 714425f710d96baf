"""EP diagnostics: whether the network settled, whether outputs are dead, whether EP still tracks BPTT.

Stable metric names (metrics file and W&B; phase = free, plus, minus):

- `relax/<phase>/max_change`, `relax/<phase>/mean_change`: largest / mean |Δs| at the phase's last step (a bfloat16
  free phase with `algorithm.tol`: the largest relative to max(1, |s|), as settling tests it)
- `relax/<phase>/frac_unsettled`: fraction of examples not settled: with `algorithm.tol`, those that ran to the
  step cap (T or K) without meeting it; without, those whose last change is above `trainer.diagnostics_tol`
- `relax/<phase>/steps`: relaxation steps used (< T or K only with the early stop `algorithm.tol`)
- `relax/<phase>/mean_steps`: with `algorithm.tol`, the mean over examples of the steps each ran before it settled
- `relax/<phase>/phi`: Φ at the end of the phase, batch mean
- `out/tie_rate`: fraction of examples whose output neurons all sit at the activation's floor (dead outputs)
- `out/sat/<layer>`: fraction of a dense layer's units at the activation's floor or ceiling
- `attn/entropy/<block>`: mean entropy (nats, at most log L) of each projection block's attention rows
- `grad/norm/<param>`, `grad/weight_norm/<param>`, `grad/update_ratio/<param>` (‖Δθ‖/‖θ‖ of the step)
- `ep/probe/cos/<param>`, `ep/probe/rel_err/<param>`, `ep/probe/cos_min`: the estimate in use (at the run's
  `precision`) against float32 BPTT from equilibrium on a fixed probe batch
- `ep/probe/kink_examples`, `ep/probe/smooth/cos_min`: how many probe examples have a unit on different sides of
  an activation kink in their two nudged phases (`kink_straddles`), and `cos_min` over the other examples
- `ep/probe/f64/cos/<param>`, `ep/probe/f64/rel_err/<param>`, `ep/probe/f64/cos_min`, `ep/probe/f64/rel_err_max`:
  the same estimate against the same estimator on a float64 copy of the network, same weights and batch: what
  the precision (`precision=bf16-mixed`, float32 itself) costs the gradient (`precision_fidelity`)

SPEC.md §8 says why each matters on the default data.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor

from seqep.estimators import BPTT, Estimator, StepOutput, grads_by_name
from seqep.network import ACTIVATION_RANGE, Network, States, one_hot
from seqep.relax import RelaxResult

SATURATION_EPS = 1e-6  # exactly at the bound for the clamps; sigmoid-like units come within this of it


def block_names(net: Network) -> list[str]:
    """The old code's names of the projection blocks: s1 [.. s4]."""
    return [f"s{i + 1}" for i in range(net.n_proj)]


def dense_layer_names(net: Network) -> list[str]:
    return [f"h{i + 1}" for i in range(len(net.fc) - 1)] + ["out"]


def convergence(res: RelaxResult, tol: float) -> dict[str, float]:
    """Settling of one phase from its last step's state change. Unsettled: with per-example settling
    (`algorithm.tol`), an example that ran to the cap without meeting its criterion; otherwise one whose largest
    last-step change exceeds `tol` (`trainer.diagnostics_tol`)."""
    unsettled = ~res.settled if res.settled is not None else res.max_change > tol
    metrics = {
        "max_change": res.max_change.max().item(),
        "mean_change": res.mean_change.mean().item(),
        "frac_unsettled": unsettled.float().mean().item(),
        "steps": float(res.steps),
    }
    if res.example_steps is not None:
        metrics["mean_steps"] = res.example_steps.float().mean().item()
    return metrics


def output_health(net: Network, states: States) -> dict[str, float]:
    """Dead outputs (all output neurons at the floor: argmax ties) and saturation of every dense layer."""
    floor, ceil = ACTIVATION_RANGE[net.activation]
    out = net.output(states)
    metrics = {"out/tie_rate": (out <= floor + SATURATION_EPS).all(1).float().mean().item()}
    for name, s in zip(dense_layer_names(net), states[1:]):
        at_bound = (s <= floor + SATURATION_EPS) | (s >= ceil - SATURATION_EPS)
        metrics[f"out/sat/{name}"] = at_bound.float().mean().item()
    return metrics


def attention_entropy(net: Network, x: Tensor, states: States) -> dict[str, float]:
    """Mean entropy of the attention rows each block would use for its next update, per block."""
    logp = torch.log_softmax(net.attention_scores(net.fields(x, states)[0], *net.keys(x)), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1).mean((0, 2))  # (n_proj,)
    return {f"attn/entropy/{n}": e.item() for n, e in zip(block_names(net), entropy)}


def phase_metrics(net: Network, x: Tensor, y: Tensor, out: StepOutput, tol: float,
                  beta: float | None = None) -> dict[str, float]:
    """Everything measurable from one training step's phases (no extra relaxation)."""
    metrics: dict[str, float] = {}
    target = one_hot(y, net.n_classes, x.dtype)
    with torch.no_grad():
        for phase, res in {"free": out.free, **out.phases}.items():
            for key, value in convergence(res, tol).items():
                metrics[f"relax/{phase}/{key}"] = value
            b = 0.0 if phase == "free" or beta is None else (beta if phase == "plus" else -beta)
            xs = x[: res.states[0].shape[0]]
            metrics[f"relax/{phase}/phi"] = net.phi(xs, res.states, b, target).mean().item()
        metrics.update(output_health(net, out.free.states))
        metrics.update(attention_entropy(net, x, out.free.states))
    return metrics


def gradient_metrics(net: Network, before: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Gradient and weight norms per parameter; with the weights from before the optimizer step, the
    update/weight ratio ‖Δθ‖/‖θ‖ too."""
    metrics = {}
    for name, p in net.named_parameters():
        weight_norm = p.detach().norm().item()
        metrics[f"grad/norm/{name}"] = p.grad.norm().item() if p.grad is not None else 0.0
        metrics[f"grad/weight_norm/{name}"] = weight_norm
        if before is not None:
            metrics[f"grad/update_ratio/{name}"] = (p.detach() - before[name]).norm().item() / max(weight_norm, 1e-12)
    return metrics


def agreement(est: dict[str, Tensor], ref: dict[str, Tensor], prefix: str) -> dict[str, float]:
    """`<prefix>cos/<param>`, `<prefix>rel_err/<param>` per tensor (in float64), `<prefix>cos_min`."""
    metrics = {}
    for name in ref:
        a, b = est[name].flatten().double(), ref[name].flatten().double()
        metrics[f"{prefix}cos/{name}"] = F.cosine_similarity(a, b, dim=0, eps=1e-30).item()
        metrics[f"{prefix}rel_err/{name}"] = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    metrics[f"{prefix}cos_min"] = min(v for k, v in metrics.items() if k.startswith(f"{prefix}cos/"))
    return metrics


def _gradients(estimator: Estimator, net: Network, x: Tensor, y: Tensor,
               outputs: list[StepOutput] | None = None) -> dict[str, Tensor]:
    """The estimator's gradients by name, with `p.grad` and the estimator's generator (random signs) left as
    they were found, so two calls see the same draw (`outputs`: a list the step's output is appended to)."""
    saved = [None if p.grad is None else p.grad.clone() for p in net.parameters()]  # EP writes into p.grad
    generator = getattr(estimator, "generator", None)
    state = generator.get_state() if generator is not None else None
    out = estimator.compute_gradients(net, x, y)
    if outputs is not None:
        outputs.append(out)
    grads = grads_by_name(net)
    for p, g in zip(net.parameters(), saved):
        p.grad = g
    if state is not None:
        generator.set_state(state)
    return grads


def precision_fidelity(net: Network, estimator: Estimator, x: Tensor, y: Tensor,
                       prefix: str = "ep/probe/f64/") -> dict[str, float]:
    """Cosine and relative error, per tensor, of the estimator's gradient (at its `precision`, on `net`) against
    the same estimator at fp32 on a float64 copy of `net` with the batch in float64: what the run's precision
    costs the gradient. Also `<prefix>rel_err_max`. Leaves `p.grad` (and a generator's state) as it found them."""
    est = _gradients(estimator, net, x, y)
    reference = copy.copy(estimator)
    reference.__dict__.pop("_bf16", None)
    if hasattr(reference, "precision"):
        reference.precision = "fp32"
    net64 = copy.deepcopy(net).to(torch.float64)
    ref = _gradients(reference, net64, x.to(torch.float64), y)
    metrics = agreement(est, ref, prefix)
    metrics[f"{prefix}rel_err_max"] = max(v for k, v in metrics.items() if k.startswith(f"{prefix}rel_err/"))
    return metrics


REFERENCE_CAP = 10  # the probe's BPTT settles its free phase for up to this many times the estimator's T steps
REFERENCE_TOL = 4e-6  # ... to this tol (about float32's rounding of the largest states; a smaller one never settles)
REFERENCE_TERMS = 5000  # ... and sums at most this many terms of recurrent backpropagation (`implicit_gradients`)


def probe_reference(estimator: Estimator) -> BPTT:
    """The probe's BPTT: a free phase without a graph that settles every example (alternating updates, to float32's
    resolution, up to `REFERENCE_CAP`·T steps), then recurrent backpropagation from there until each example's
    adjoint converged (`seqep.estimators.bptt.implicit_gradients`, at most `REFERENCE_TERMS` terms): the limit of
    BPTT over more and more steps from the free equilibrium, the gradient EP approximates. T + K synchronous steps
    from zero (the probe of sessions 1-7) left a slowly creeping example of a trained network ~0.07 from its
    equilibrium (cosine 0.49 to EP on a hidden layer); K graph steps from equilibrium (sessions 7-9) cut off a
    slowly contracting example's sum (its projection gradient: norm 1.04 over 40 steps, 2.79 in the limit)."""
    reference = BPTT(REFERENCE_CAP * estimator.T, REFERENCE_TERMS, truncate="implicit",
                     field_mode=estimator.field_mode, tol=REFERENCE_TOL)
    reference.updates = "alternating"  # the same equilibria and the same limit, in about half the steps
    return reference


def probe_estimator(estimator: Estimator) -> Estimator:
    """What the probe compares with BPTT: the estimator in use, or for a BPTT run symmetric EP at β = 0.01 with EP's
    own settling defaults (step caps, `tol`, alternating updates) at the run's precision and field mode. The
    BPTT run's T, K and synchronous updates would leave EP's phases short of equilibrium late in training (a
    synchronous phase can stop a creeping example far from it), and the probe would measure that, not EP."""
    if not isinstance(estimator, BPTT):
        return estimator
    from seqep.estimators import EP

    ep = EP(betas=[0.0, 0.01], field_mode=estimator.field_mode)
    ep.precision = estimator.precision
    return ep


def kink_straddles(net: Network, out: StepOutput) -> Tensor | None:
    """`(B,)` bool: the examples whose two nudged phases (symmetric EP; else the nudged phase and the free one) end
    with some unit on different sides of a kink of the activation (`seqep.estimators.ep.kink_crossings`); None
    where there is nothing to compare or no kink. There EP's finite β measures a secant across the kink, not the
    slope on either side: a unit clamped at the hard sigmoid's floor in the free phase and lifted by one nudge
    gets a gradient from EP and none from BPTT (one such example of 64 took a default run's probe to 0.63), which
    is also what lets EP revive an output unit that is dead for every example; a unit inside the range that one
    nudge pushes out gets half its slope (`adaptive_beta` reruns those at a smaller β)."""
    from seqep.estimators.ep import kink_crossings

    phases = out.phases
    if "plus" in phases and "minus" in phases:
        a, b = phases["plus"].states, phases["minus"].states
    elif len(phases) == 1:
        a, b = next(iter(phases.values())).states, out.free.states
    else:
        return None
    return kink_crossings(net, a, b)


def probe(net: Network, estimator: Estimator, x: Tensor, y: Tensor, f64: bool = True) -> dict[str, float]:
    """Cosine and relative error between the estimator in use and BPTT from the free equilibrium, per tensor
    (`ep/probe/...`, `probe_reference`), and with `f64` of the same estimate against float64 (`ep/probe/f64/...`,
    `precision_fidelity`: it costs a float64 copy of the model and as much time again). Leaves `p.grad` as it found
    it."""
    reference = probe_reference(estimator)
    estimator = probe_estimator(estimator)
    seen: list[StepOutput] = []
    metrics = agreement(_gradients(estimator, net, x, y, seen), _gradients(reference, net, x, y), "ep/probe/")
    straddle = kink_straddles(net, seen[0])
    if straddle is not None:  # how much of the agreement the examples at a kink cost (`kink_straddles`)
        metrics["ep/probe/kink_examples"] = float(straddle.sum())
        keep = (~straddle).nonzero().squeeze(1)
        smooth = metrics["ep/probe/cos_min"]
        if 0 < len(keep) < len(y):
            pick = lambda t: t.index_select(0, keep)
            smooth = agreement(_gradients(estimator, net, pick(x), pick(y)),
                               _gradients(reference, net, pick(x), pick(y)), "")["cos_min"]
        metrics["ep/probe/smooth/cos_min"] = smooth
    if f64:
        metrics |= precision_fidelity(net, estimator, x, y)
    return metrics


class EpochAverager:
    """Running means of per-batch metrics over an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] += v
            self.counts[k] += 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


class Diagnostics:
    """The trainer's hook: every `every`-th batch (the first included) it records the phase, output, attention
    and gradient metrics; at the end of an epoch it returns their means, plus the EP-vs-BPTT probe on a fixed
    batch every `probe_every` epochs (with `probe_f64`, against float64 too). `every=0` and `probe_every=0` switch
    the parts off."""

    def __init__(self, estimator: Estimator, every: int, tol: float, probe_every: int,
                 probe_batch: tuple[Tensor, Tensor] | None, probe_f64: bool = True) -> None:
        self.estimator, self.every, self.tol = estimator, every, tol
        self.probe_every, self.probe_batch, self.probe_f64 = probe_every, probe_batch, probe_f64
        self.beta = getattr(estimator, "beta", None)
        self.averager = EpochAverager()
        self.seconds = 0.0  # time spent here this epoch, reported as time/diagnostics_s

    def due(self, batch_index: int) -> bool:
        """Batch indices start at 1."""
        return self.every > 0 and (batch_index - 1) % self.every == 0

    def snapshot(self, net: Network) -> dict[str, Tensor]:
        start = time.perf_counter()
        weights = {n: p.detach().clone() for n, p in net.named_parameters()}
        self.seconds += time.perf_counter() - start
        return weights

    def record(self, net: Network, x: Tensor, y: Tensor, out: StepOutput, before: dict[str, Tensor]) -> None:
        """After the optimizer step: `before` holds the weights the step started from."""
        start = time.perf_counter()
        metrics = {**phase_metrics(net, x, y, out, self.tol, self.beta), **gradient_metrics(net, before)}
        if getattr(self.estimator, "adaptive_beta", False):  # share of the batch rerun at a smaller β (kinks)
            metrics["ep/kink_reruns"] = out.kink_reruns / max(len(y), 1)
        self.averager.add(metrics)
        self.seconds += time.perf_counter() - start

    def epoch_metrics(self, net: Network, epoch: int) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.averager.means()
        if self.probe_batch is not None and self.probe_every > 0 and epoch % self.probe_every == 0:
            metrics.update(probe(net, self.estimator, *self.probe_batch, f64=self.probe_f64))
        metrics["time/diagnostics_s"] = self.seconds + time.perf_counter() - start
        self.averager, self.seconds = EpochAverager(), 0.0
        return metrics
