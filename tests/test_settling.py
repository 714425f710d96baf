"""Per-example settling (`algorithm.tol`, seqep.relax.relax_per_example): every example of a batch ends where a run
of its own would, settled examples stop costing, and the nudged phases settle too."""

from __future__ import annotations

import pytest
import torch

from seqep.estimators import EP
from seqep.relax import relax

from small_models import small_input, small_net


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_each_example_ends_where_a_run_of_its_own_ends(kind):
    net = small_net(kind)
    x, _ = small_input(net, B=9)
    with torch.no_grad():
        res = relax(net, x, net.init_states(9, dtype=x.dtype), 300, tol=1e-7)
        assert len(set(res.example_steps.tolist())) > 1  # examples settle at different steps
        assert res.steps == int(res.example_steps.max()) < 300
        assert bool((res.max_change < 1e-7).all())
        for i in range(9):
            alone = relax(net, x[i:i + 1], net.init_states(1, dtype=x.dtype), 300, tol=1e-7)
            assert alone.steps == int(res.example_steps[i])
            for a, b in zip(res.states, alone.states):
                torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)


def test_a_step_cap_leaves_the_stragglers_unsettled_and_says_so():
    net = small_net("sentiment")
    x, _ = small_input(net, B=9)
    with torch.no_grad():
        res = relax(net, x, net.init_states(9, dtype=x.dtype), 15, tol=1e-7)
        fixed = relax(net, x, net.init_states(9, dtype=x.dtype), 15)
    unsettled = res.max_change >= 1e-7
    assert res.steps == 15 and bool(unsettled.any()) and not bool(unsettled.all())
    assert bool((res.example_steps[unsettled] == 15).all()) and bool((res.example_steps[~unsettled] < 16).all())
    for a, b in zip(res.states, fixed.states):  # the stragglers ran exactly the fixed-step dynamics up to the cap
        torch.testing.assert_close(a[unsettled], b[unsettled], rtol=0, atol=1e-12)


def test_settled_examples_stop_costing(monkeypatch):
    """The phase is rebuilt for the examples still moving: the steps run over examples are about the examples'
    own step counts, not batch size x the slowest example's."""
    import seqep.relax as relax_module

    net = small_net("nli")
    x, _ = small_input(net, B=32)
    rows = []
    original = relax_module.ClosedFormPhase.__call__
    monkeypatch.setattr(relax_module.ClosedFormPhase, "__call__",
                        lambda self, states: rows.append(states[0].shape[0]) or original(self, states))
    with torch.no_grad():
        res = relax(net, x, net.init_states(32, dtype=x.dtype), 300, tol=1e-7)
    own = int(res.example_steps.sum())
    assert own <= sum(rows) < 32 * res.steps
    assert sum(rows) <= own / relax_module.COMPACT_AT + 32  # at most a quarter more than each example's own


def test_ep_with_tol_settles_the_nudged_phases_and_keeps_the_gradient():
    net = small_net("nli")
    x, y = small_input(net, B=8)
    long = EP(T=400, K=200, betas=[0.0, 0.05])
    settle = EP(T=400, K=200, betas=[0.0, 0.05], tol=1e-9)
    long.compute_gradients(net, x, y)
    reference = [p.grad.clone() for p in net.parameters()]
    out = settle.compute_gradients(net, x, y)
    for phase in ("free", "plus", "minus"):
        res = out.free if phase == "free" else out.phases[phase]
        assert res.steps < (400 if phase == "free" else 200), phase  # every phase stopped early
        assert bool((res.max_change < 1e-9).all()), phase
    for p, g in zip(net.parameters(), reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-9)


def test_a_bfloat16_free_phase_settles_to_what_bfloat16_can_show(monkeypatch):
    """bf16-mixed: a tol below bfloat16's resolution could never be met (every example would run to the cap); the
    bfloat16 free phase settles to `LOW_RESOLUTION` instead, the float32 nudged phases to `tol`."""
    import seqep.precision as precision

    monkeypatch.setattr(precision, "fast_bf16", lambda kind: True)  # bfloat16 runs anywhere, if slowly
    net = small_net("sentiment", dtype=torch.float32)
    x, y = small_input(net, B=16, dtype=torch.float32)
    est = EP(T=300, K=300, betas=[0.0, 0.05], tol=1e-6)
    est.precision = "bf16-mixed"
    out = est.compute_gradients(net, x, y)
    assert out.free.steps < 300 and bool((out.free.max_change < precision.LOW_RESOLUTION).all())
    assert out.phases["plus"].steps < 300 and bool((out.phases["plus"].max_change < 1e-6).all())
