"""The order of a step's layer updates (`algorithm.updates`, seqep.relax.UPDATES): "alternating" updates the even
layers (projections, second dense layer, ...) from the last states and then the odd ones from the even layers' new
states; it has the synchronous dynamics' fixed points, so EP's gradient is the same, and it settles in fewer
steps."""

from __future__ import annotations

import pytest
import torch

from seqep.estimators import EP
from seqep.phase import TWIN_MIN, ClosedFormPhase
from seqep.relax import relax

from small_models import CountRows, small_input, small_net


def _by_hand(net, x, states, beta, target):
    """One alternating step from the network's own synchronous step: even layers of a step from `states`, odd
    layers of a step from (new even, old odd)."""
    first = net.step(x, states, beta, target)
    mixed = [f if i % 2 == 0 else s for i, (f, s) in enumerate(zip(first, states))]
    second = net.step(x, mixed, beta, target)
    return [f if i % 2 == 0 else s for i, (f, s) in enumerate(zip(first, second))]


@pytest.mark.parametrize("kind", ["sentiment", "nli"])  # 3 and 4 state layers: the top is odd, then even
def test_an_alternating_step_is_the_even_layers_then_the_odd_ones_from_them(kind):
    net = small_net(kind, mask_padding=True)
    x, y = small_input(net, B=6)
    x[:, -1] = 0.0  # a padding token, so the mask has something to mask
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    beta = torch.linspace(-0.3, 0.3, 6, dtype=x.dtype)  # per-row nudge, as symmetric EP's stacked phases
    g = torch.Generator().manual_seed(0)
    states = [torch.rand(s.shape, generator=g, dtype=x.dtype) for s in net.init_states(6, dtype=x.dtype)]
    with torch.no_grad():
        want = _by_hand(net, x, states, beta, target)
        closed = ClosedFormPhase(net, x, beta, target, alternate=True)(states)
        autograd = relax(net, x, states, 1, beta, target, field_mode="autograd", updates="alternating").states
        around = ClosedFormPhase(net, x, beta, target, alternate=True,
                                 around=(states, net.dense[0].weight.detach().clone()))(states)
        sync = ClosedFormPhase(net, x, beta, target)(states)
    for w, c, a, r in zip(want, closed, autograd, around):
        torch.testing.assert_close(c, w, rtol=0, atol=1e-13)
        torch.testing.assert_close(a, w, rtol=0, atol=1e-13)
        torch.testing.assert_close(r, w, rtol=0, atol=1e-13)
    # the even layers are the synchronous step's; the odd ones differ (they read the new even states)
    for i, (w, s) in enumerate(zip(want, sync)):
        gap = float((w - s).abs().max())
        assert gap < 1e-13 if i % 2 == 0 else gap > 1e-3, (i, gap)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_both_orders_reach_the_same_equilibrium_and_alternating_in_fewer_steps(kind):
    net = small_net(kind)
    x, _ = small_input(net, B=9)
    start = net.init_states(9, dtype=x.dtype)
    with torch.no_grad():
        fixed = {u: relax(net, x, start, 300, updates=u).states for u in ("synchronous", "alternating")}
        settled = {u: relax(net, x, start, 300, tol=1e-9, updates=u) for u in ("synchronous", "alternating")}
    for a, b in zip(fixed["synchronous"], fixed["alternating"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    steps = {u: settled[u].example_steps.double().mean().item() for u in settled}
    assert bool(settled["alternating"].settled.all()) and bool(settled["synchronous"].settled.all())
    assert steps["alternating"] < 0.75 * steps["synchronous"], steps


def test_ep_gradient_is_the_same_in_both_orders_and_bptt_stays_synchronous():
    from seqep.estimators import BPTT

    net = small_net("nli")
    x, y = small_input(net, B=7)

    def grads(est):
        est.compute_gradients(net, x, y)
        return {n: p.grad.clone() for n, p in net.named_parameters()}

    # one β for every example: adaptive_beta's follows the step counts, which the order changes
    sync = grads(EP(300, 100, [0.0, 0.05], tol=1e-10, updates="synchronous", adaptive_beta=False))
    alt = grads(EP(300, 100, [0.0, 0.05], tol=1e-10, adaptive_beta=False))  # EP's default order
    for n in sync:
        torch.testing.assert_close(alt[n], sync[n], rtol=1e-6, atol=1e-9)
    assert EP().updates == "alternating" and BPTT().updates == "synchronous"
    with pytest.raises(ValueError, match="updates='red-black' is not allowed; choose one of: synchronous, "
                                         "alternating"):
        EP(updates="red-black")


def test_alternating_steps_cost_what_synchronous_ones_do(monkeypatch):
    """The closed-form engine's alternating step runs the same products as a synchronous one (no second step):
    counted as calls of the large first-weight product."""
    net = small_net("sentiment")
    x, _ = small_input(net, B=4)
    calls = {"mm": 0}
    real = torch.mm

    def counting(*a, **k):
        calls["mm"] += 1
        return real(*a, **k)

    counts = {}
    with torch.no_grad():
        for updates in ("synchronous", "alternating"):
            phase = ClosedFormPhase(net, x, alternate=updates == "alternating")
            monkeypatch.setattr(torch, "mm", counting)
            calls["mm"] = 0
            s = [torch.rand_like(t) for t in net.init_states(4, dtype=x.dtype)]  # not zero: no shortcut
            for _ in range(5):
                s = phase(s)
            counts[updates] = calls["mm"]
            monkeypatch.setattr(torch, "mm", real)
    assert counts["synchronous"] == counts["alternating"] == 5


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
@pytest.mark.parametrize("updates", ["synchronous", "alternating"])
def test_a_first_step_from_zero_states_skips_the_products_with_them_and_changes_nothing(kind, updates, monkeypatch):
    net = small_net(kind, mask_padding=True)
    x, y = small_input(net, B=6)
    x[:, -1] = 0.0
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    zero = net.init_states(6, dtype=x.dtype)
    with torch.no_grad():
        want = (_by_hand if updates == "alternating" else (lambda n, *a: n.step(*a)))(net, x, zero, 0.3, target)
        count = CountRows(monkeypatch, net.dense[0].weight)
        phase = ClosedFormPhase(net, x, 0.3, target, alternate=updates == "alternating")
        got = [s.clone() for s in phase(zero)]
        first = len(count.rows)
        phase(got)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-13)
    # the top-down product s_1 W is skipped; the bottom-up one too where it reads the zero projections
    assert first == (1 if updates == "alternating" else 0) and len(count.rows) - first == 2, count.rows


@pytest.mark.parametrize("kind", ["sentiment", "nli"])  # nli: two projection blocks per example
@pytest.mark.parametrize("updates", ["synchronous", "alternating"])
def test_twin_halves_take_the_first_steps_big_products_once_and_change_nothing(kind, updates, monkeypatch):
    """Symmetric EP's ±β phases start both from the free state: the first step's projections and first dense
    product are the same for both halves, taken for one half and copied (from `TWIN_MIN` examples a half)."""
    net = small_net(kind, mask_padding=True)
    B = 2 * TWIN_MIN
    x, y = small_input(net, B=B // 2)
    x[:, -1] = 0.0  # a padding token, so the mask has something to mask
    two = lambda t: torch.cat([t, t])
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    beta = torch.cat([torch.full((B // 2,), 0.2), torch.full((B // 2,), -0.2)]).to(x.dtype)
    g = torch.Generator().manual_seed(0)
    start = [two(torch.rand(s.shape, generator=g, dtype=x.dtype)) for s in net.init_states(B // 2, dtype=x.dtype)]
    apart = [s.clone() for s in start]
    apart[1][-1] += 0.1  # one example of the second half differs: no shortcut
    step = _by_hand if updates == "alternating" else (lambda n, *a: n.step(*a))
    with torch.no_grad():
        for states, halved in ((start, True), (apart, False)):
            want = step(net, two(x), states, beta, two(target))
            count = CountRows(monkeypatch, net.dense[0].weight)
            got = ClosedFormPhase(net, two(x), beta, two(target), alternate=updates == "alternating",
                                  twin=True)(states)
            for w, o in zip(want, got):
                torch.testing.assert_close(o, w, rtol=0, atol=1e-13)
            assert count.rows == ([B // 2] * 2 if halved else [B] * 2), count.rows
            monkeypatch.undo()
