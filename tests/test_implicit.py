"""Settling to a distance, not to a step size (`seqep.relax.converged`), and recurrent backpropagation
(`BPTT(truncate="implicit")`, `seqep.estimators.bptt.implicit_gradients`): the limit of BPTT from the free
equilibrium, which the EP-vs-BPTT probe uses as its reference."""

from __future__ import annotations

import pytest
import torch

import seqep.relax as relax_module
from seqep.diagnostics import _gradients
from seqep.estimators import BPTT, EP
from seqep.estimators.base import mse_loss
from seqep.estimators.bptt import implicit_gradients
from seqep.network import one_hot
from seqep.relax import converged, largest_change, relax

from small_models import small_input, small_net


def test_converged_tests_the_estimated_distance_not_the_last_change():
    tol, inf = 1e-3, float("inf")
    change = torch.tensor([5e-4, 5e-4, 5e-4, 5e-4, 2e-3, 1e-9])
    before = torch.tensor([5e-2, 5.5e-4, 5e-4, inf, 1e-1, 1e-9])  # two steps earlier
    # rho = 0.1 (distance 5.6e-5): settled; rho = 0.95 (distance 9.8e-3): not; no shrinking: not; the first two
    # steps: the change alone; a change above tol: not; a change at the rounding noise: settled whatever rho
    assert converged(change, before, tol, floor=1e-8).tolist() == [True, False, False, True, False, True]
    assert converged(change, before, torch.full((6,), tol), floor=1e-8).tolist() == \
        [True, False, False, True, False, True]  # one tol per example


def _slow(kind):
    """A small network whose weights are tripled: its examples contract slowly (up to 150-400 steps)."""
    net = small_net(kind)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    return net


@pytest.mark.parametrize("updates", ["alternating", "synchronous"])
@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_a_settled_example_is_within_about_tol_of_its_fixed_point(kind, updates, monkeypatch):
    """Stopping on the last change alone leaves slowly contracting examples 1.7-5.5 tol from their fixed point; the
    distance estimate keeps them within tol (0.8-0.95 tol here)."""
    net = _slow(kind)
    x, _ = small_input(net, B=16)
    tol = 1e-5
    with torch.no_grad():
        fixed = relax(net, x, net.init_states(16, dtype=x.dtype), 5000, tol=1e-14, updates=updates)
        assert bool(fixed.settled.all())
        res = relax(net, x, net.init_states(16, dtype=x.dtype), 5000, tol=tol, updates=updates)
        monkeypatch.setattr(relax_module, "converged", lambda change, before, tol, floor, stall=0.0: change < tol)
        last_change = relax(net, x, net.init_states(16, dtype=x.dtype), 5000, tol=tol, updates=updates)
    assert float(largest_change(res.states, fixed.states).max()) < tol
    assert float(largest_change(last_change.states, fixed.states).max()) > 1.5 * tol


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_implicit_bptt_is_the_limit_of_bptt_from_the_free_equilibrium(kind):
    """Recurrent backpropagation equals BPTT through 1000 synchronous steps from the settled free state (float64),
    whatever order its own steps take (the limit is the derivative of the fixed point)."""
    net = _slow(kind)
    x, y = small_input(net, B=8)
    with torch.no_grad():
        settled = relax(net, x, net.init_states(8, dtype=x.dtype), 5000, tol=1e-14).states
    with torch.enable_grad():
        end = relax(net, x, settled, 1000).states
        want = torch.autograd.grad(mse_loss(net.output(end), one_hot(y, net.n_classes, x.dtype)),
                                   list(net.parameters()), allow_unused=True)
    names = [n for n, _ in net.named_parameters()]
    for updates in ("synchronous", "alternating"):
        est = BPTT(T=5000, K=5000, truncate="implicit", tol=1e-13)
        est.updates = updates
        got = _gradients(est, net, x, y)
        for name, w in zip(names, want):
            if w is not None:
                assert float((got[name] - w).norm() / w.norm()) < 2e-5, (updates, name)


def test_implicit_gradients_of_a_batch_are_the_mean_of_each_examples_own():
    """Each example stops iterating on its own (the rest go on in a smaller graph): the batch's gradient is the
    mean of the gradients each example gets alone, and the terms each used are its own."""
    net = _slow("nli")
    x, y = small_input(net, B=7)
    target = one_hot(y, net.n_classes, x.dtype)
    with torch.no_grad():
        settled = relax(net, x, net.init_states(7, dtype=x.dtype), 5000, tol=1e-14).states
    grads, used = implicit_gradients(net, x, settled, target, 3000, updates="alternating")
    assert len(set(used.tolist())) > 2 and int(used.max()) < 3000
    alone = [implicit_gradients(net, x[[i]], [s[[i]] for s in settled], target[[i]], 3000, updates="alternating")
             for i in range(7)]
    assert [int(a[1]) for a in alone] == used.tolist()
    for k, g in enumerate(grads):
        if g is not None:
            torch.testing.assert_close(g, sum(a[0][k] for a in alone) / 7, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_fully_settled_ep_at_a_small_beta_is_the_implicit_gradient(kind):
    """The EP theorem in the limit: symmetric EP at β = 1e-4 with every phase settled to 1e-11 is recurrent
    backpropagation's gradient to within O(β²)."""
    net = _slow(kind)
    x, y = small_input(net, B=6)
    ep = _gradients(EP(T=5000, K=5000, betas=[0.0, 1e-4], tol=1e-11), net, x, y)
    imp = BPTT(T=5000, K=5000, truncate="implicit", tol=1e-13)
    imp.updates = "alternating"
    ref = _gradients(imp, net, x, y)
    for name, r in ref.items():
        if r.norm() > 0:
            assert float((ep[name] - r).norm() / r.norm()) < 1e-5, name


def test_implicit_is_one_of_the_truncations_and_reports_the_free_phase():
    with pytest.raises(ValueError, match="last_k, full, implicit"):
        BPTT(truncate="infinite")
    net = small_net("sentiment")
    x, y = small_input(net, B=4)
    est = BPTT(T=200, K=500, truncate="implicit", tol=1e-10)
    out = est.compute_gradients(net, x, y)
    assert est.describe() == "BPTT implicit T=200 K=500" and est.graph_steps == 0
    assert bool(out.free.settled.all()) and out.free.steps < 200
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    assert float(out.loss) == pytest.approx(float(mse_loss(out.output, one_hot(y, net.n_classes, x.dtype))))
