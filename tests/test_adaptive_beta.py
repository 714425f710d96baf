"""EP's `adaptive_beta` (`algorithm.adaptive_beta`): an example whose free phase was slow is nudged with a smaller
β, β₂·min(1, 10/steps); its gradient is divided by its own β and its nudged phases settle to `tol`·|its β|.
Examples of a batch do not interact, so the batch gradient must be the mean of each example's own EP gradient at
its own β."""

from __future__ import annotations

import pytest
import torch

from seqep.estimators import EP
from seqep.relax import RelaxResult, relax

from small_models import small_input, small_net


def _free(steps: list[int]) -> RelaxResult:
    return RelaxResult([], max(steps), example_steps=torch.tensor(steps))


def test_slow_examples_get_a_beta_scaled_by_ten_over_their_steps():
    ep = EP(betas=[0.0, 0.02], adaptive_beta=True)  # slow: more than SLOW_STEPS = 10 free steps
    got = ep.example_betas(_free([5, 10, 10, 20, 100]))
    torch.testing.assert_close(got, torch.tensor([0.02, 0.02, 0.02, 0.01, 0.002]), rtol=1e-6, atol=0)
    alone = [float(ep.example_betas(_free([n]))) for n in (5, 20, 100)]
    assert alone == pytest.approx([0.02, 0.01, 0.002])  # an example's β does not depend on its batch
    assert EP(betas=[0.0, 0.02], adaptive_beta=False).example_betas(_free([5, 70])) == 0.02
    no_steps = RelaxResult([], 20)  # tol: null runs fixed steps: nothing to scale by
    assert ep.example_betas(no_steps) == 0.02


@pytest.mark.parametrize("variant,field_mode", [("symmetric", "closed"), ("symmetric", "autograd"),
                                                ("positive", "closed"), ("negative", "autograd")])
@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_batch_gradient_is_the_mean_of_each_examples_own_ep_gradient(kind, variant, field_mode):
    net = small_net(kind)
    x, y = small_input(net, B=5)
    betas = torch.tensor([0.02, 0.005, 0.01, 0.02, 0.0025], dtype=x.dtype)
    adaptive = EP(40, 40, [0.0, 0.02], variant=variant, field_mode=field_mode, tol=1e-3, adaptive_beta=True)
    adaptive.example_betas = lambda free: betas  # the rule is tested above; here what it feeds
    adaptive.compute_gradients(net, x, y)
    got = [p.grad.clone() for p in net.parameters()]
    want = [torch.zeros_like(p) for p in net.parameters()]
    for i, beta in enumerate(betas.tolist()):
        alone = EP(40, 40, [0.0, beta], variant=variant, field_mode=field_mode, tol=1e-3, adaptive_beta=False)
        alone.compute_gradients(net, x[i:i + 1], y[i:i + 1])  # nudge_tol = tol·β: its own β's tolerance
        for w, p in zip(want, net.parameters()):
            w += p.grad / len(betas)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_per_example_tolerances_stop_each_row_at_its_own():
    net = small_net("sentiment")
    x, _ = small_input(net, B=4)
    tol = torch.tensor([1e-1, 1e-8, 1e-3, 1e-8], dtype=x.dtype)
    with torch.no_grad():
        rows = relax(net, x, net.init_states(4, dtype=x.dtype), 500, tol=tol)
        for i in range(4):
            one = relax(net, x[i:i + 1], net.init_states(1, dtype=x.dtype), 500, tol=float(tol[i]))
            assert int(rows.example_steps[i]) == one.steps
            for a, b in zip(rows.states, one.states):
                torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
    steps = rows.example_steps.tolist()
    assert steps[0] < steps[2] < steps[1] and rows.settled.all()


def _unit_at_kink(offset: float):
    """A one-example sentiment net whose output unit of its own class has the field `offset` at equilibrium (the
    bias set so): below the hard sigmoid's kink at 0 for offset < 0 (clamped), just inside it for offset > 0."""
    net = small_net("sentiment")
    x, y = small_input(net, B=1)
    out = net.dense[-1]
    with torch.no_grad():
        free = relax(net, x, net.init_states(1, dtype=x.dtype), 3000).states
        unit = int(y[0])
        field = free[-2][0] @ out.weight[unit] + out.bias[unit]
        out.bias[unit] -= field - offset  # only that unit's state moves (by offset/2 at most), nothing else
        free2 = relax(net, x, net.init_states(1, dtype=x.dtype), 3000).states
    return net, x, y, float(free2[-1][0, unit])


def _errors(net, x, y, *estimators):
    from seqep.diagnostics import _gradients, probe_reference

    reference = _gradients(probe_reference(estimators[0]), net, x, y)
    error = lambda g: max(float((g[k] - r).norm() / r.norm()) for k, r in reference.items() if r.norm() > 0)
    return [error(_gradients(e, net, x, y)) for e in estimators]


def test_an_output_unit_just_inside_its_kink_is_rerun_at_a_smaller_beta():
    """Example 0's output unit of its own class sits 0.005 inside the hard sigmoid's kink at 0 (its state
    0.0025): the −β nudge pushes it out of the range, the +β one does not, and symmetric EP's difference halves a
    slope BPTT sees. adaptive_beta finds it (its ±β states on different sides, the unit inside in the free
    phase), reruns it at β/10, and its gradient then matches BPTT's from the free equilibrium; plain EP's does
    not."""
    from seqep.estimators.ep import kink_crossings

    net, x, y, state = _unit_at_kink(+5e-3)
    assert 0.0 < state < 0.01
    plain = EP(500, 500, [0.0, 0.02], tol=1e-9, adaptive_beta=False)
    adaptive = EP(500, 500, [0.0, 0.02], tol=1e-9, adaptive_beta=True)
    result = plain.compute_gradients(net, x, y)
    plus, minus = result.phases["plus"].states, result.phases["minus"].states
    assert kink_crossings(net, plus, minus).tolist() == kink_crossings(net, plus, minus, result.free.states).tolist() \
        == [True]
    assert adaptive.compute_gradients(net, x, y).kink_reruns == 1
    errors = _errors(net, x, y, plain, adaptive)
    assert errors[0] > 0.1 > 0.01 > errors[1], errors


def test_a_unit_clamped_in_the_free_phase_and_lifted_by_a_nudge_is_left_to_eps_secant():
    """The same unit 0.005 below the kink (clamped at 0 in the free phase): +β lifts it, −β does not. BPTT gives
    it no gradient, EP's secant one — what revives an output unit dead for every example — so adaptive_beta does
    not rerun it (`kink_crossings` with the free states), and its gradient stays EP's."""
    from seqep.estimators.ep import kink_crossings

    net, x, y, state = _unit_at_kink(-5e-3)
    assert state == 0.0
    plain = EP(500, 500, [0.0, 0.02], tol=1e-9, adaptive_beta=False)
    adaptive = EP(500, 500, [0.0, 0.02], tol=1e-9, adaptive_beta=True)
    result = plain.compute_gradients(net, x, y)
    plus, minus = result.phases["plus"].states, result.phases["minus"].states
    assert kink_crossings(net, plus, minus).tolist() == [True]
    assert kink_crossings(net, plus, minus, result.free.states).tolist() == [False]
    assert adaptive.compute_gradients(net, x, y).kink_reruns == 0
    assert min(_errors(net, x, y, plain, adaptive)) > 0.1
