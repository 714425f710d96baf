"""Per-example settling (`algorithm.tol`, seqep.relax.relax_per_example): every example of a batch ends where a run
of its own would, settled examples stop costing, and the nudged phases settle too."""

from __future__ import annotations

import pytest
import torch

from seqep.estimators import EP
from seqep.relax import relax

from small_models import CountRows, small_input, small_net


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


def test_paired_phases_stop_together_once_their_difference_settled():
    """Symmetric EP's +β and −β phases of an example (rows i and i + B) stop together, once their half-difference
    (EP's gradient) moves less than `tol` and their mean less than `pair_tol`; each pair ends where a run of that
    pair alone ends."""
    from seqep.relax import pair_changes

    net = small_net("nli")
    x, y = small_input(net, B=7)
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    two = lambda t: torch.cat([t, t])
    beta = torch.cat([x.new_full((7,), 0.3), x.new_full((7,), -0.3)])
    with torch.no_grad():
        start = relax(net, x, net.init_states(7, dtype=x.dtype), 6).states  # far from settled
        run = lambda rows, **kw: relax(net, two(x[rows]), [two(s[rows]) for s in start], 300,
                                       beta[[*rows, *(r + 7 for r in rows)]], two(target[rows]), **kw)
        res = run(list(range(7)), tol=1e-8, pair_tol=1e-9)
        steps = res.example_steps
        assert torch.equal(steps[:7], steps[7:]) and len(set(steps.tolist())) > 1 and res.steps < 300
        for i in range(7):
            own = run([i], tol=1e-8, pair_tol=1e-9)
            assert own.steps == int(steps[i])
            for a, b in zip(res.states, own.states):
                torch.testing.assert_close(a[[i, i + 7]], b, rtol=0, atol=1e-12)
            # one step more moves the half-difference by about < tol and the mean by about < pair_tol
            half_diff, common = pair_changes(relax(net, two(x[[i]]), own.states, 1, beta[[i, i + 7]],
                                                  two(target[[i]])).states, own.states)
            assert float(half_diff) < 1e-8 * 1.5 and float(common) < 1e-9 * 1.5
        # a looser pair_tol stops no later, and the unpaired run of the same rows stops each row on its own
        loose = run(list(range(7)), tol=1e-8, pair_tol=1e-5)
        alone = run(list(range(7)), tol=1e-8)
    assert bool((loose.example_steps <= steps).all()) and int(loose.example_steps.sum()) < int(steps.sum())
    assert not torch.equal(alone.example_steps[:7], alone.example_steps[7:])


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
@pytest.mark.parametrize("around", [False, True], ids=["plain", "around"])
def test_a_phase_shrunk_to_some_examples_steps_as_one_built_for_them(kind, around):
    """`ClosedFormPhase.select` indexes the prepared constants (keys, drive scores, padding mask, per-row β and
    target; with `around`, the reference states and the products at them) instead of recomputing them: its steps
    equal those of a phase built on the chosen examples."""
    from seqep.phase import ClosedFormPhase

    net = small_net(kind, mask_padding=True)
    x, y = small_input(net, B=6)
    x[:, -1] = 0.0  # a padding token, so the mask has something to mask
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    beta = torch.linspace(-0.3, 0.3, 6, dtype=x.dtype)
    rows = torch.tensor([4, 1, 3])
    with torch.no_grad():
        states = relax(net, x, net.init_states(6, dtype=x.dtype), 3).states
        low = net.dense[0].weight.to(torch.bfloat16)
        at = (lambda picked: (picked, low)) if around else (lambda picked: None)
        shrunk = ClosedFormPhase(net, x, beta, target, around=at(states)).select(rows)
        built = ClosedFormPhase(net, x[rows], beta[rows], target[rows], around=at([s[rows] for s in states]))
        a, b = [s[rows] for s in states], [s[rows] for s in states]
        for _ in range(4):
            a, b = shrunk(a), built(b)
            for sa, sb in zip(a, b):
                torch.testing.assert_close(sa, sb, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_products_around_reference_states_split_exactly_and_round_only_the_deviation(kind):
    """`around = (states, weight)` (precision=bf16-delta): with the weight itself the split `W s = W s_ref +
    W (s − s_ref)` steps as the plain phase does up to rounding; with a bfloat16 copy the states stay within
    bfloat16's rounding of the deviation (small, 20 steps from the free state), not of the states."""
    from seqep.phase import ClosedFormPhase

    net = small_net(kind)
    x, y = small_input(net, B=6)
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    weight = net.dense[0].weight.detach()
    with torch.no_grad():
        free = relax(net, x, net.init_states(6, dtype=x.dtype), 60).states
        plain = ClosedFormPhase(net, x, 0.2, target)
        exact = ClosedFormPhase(net, x, 0.2, target, around=(free, weight.clone()))
        low = ClosedFormPhase(net, x, 0.2, target, around=(free, weight.to(torch.bfloat16)))
        a = b = c = free
        for _ in range(20):
            a, b, c = plain(a), exact(b), low(c)
        moved = max(float((s - f).abs().max()) for s, f in zip(a, free))
        assert moved > 1e-3  # the nudge moved the states
        assert max(float((s - t).abs().max()) for s, t in zip(a, b)) < 1e-12
        err = max(float((s - t).abs().max()) for s, t in zip(a, c))
        assert 0 < err < 2.0**-8 * moved, (err, moved)  # rounding the states themselves: ~2^-8 of |s| ~ 1


@pytest.mark.parametrize("alternate", [False, True])
def test_around_twin_reference_states_take_their_products_once_and_change_nothing(alternate, monkeypatch):
    """bf16-delta's ±β phases start both halves from the free state: the float32 products at the reference states
    are taken for one half and copied (the same up to the last bits a product at other rows may differ in), and a
    first step from the reference states themselves uses them as they are (zero deviation: bitwise the same)."""
    from seqep.phase import TWIN_MIN, ClosedFormPhase

    net = small_net("nli", mask_padding=True)
    half = TWIN_MIN
    x, y = small_input(net, B=half)
    two = lambda t: torch.cat([t, t])
    target = torch.nn.functional.one_hot(y, net.n_classes).to(x.dtype)
    beta = torch.cat([torch.full((half,), 0.2), torch.full((half,), -0.2)]).to(x.dtype)
    low = net.dense[0].weight.detach().to(torch.bfloat16)
    with torch.no_grad():
        free = [two(s) for s in relax(net, x, net.init_states(half, dtype=x.dtype), 60).states]
        phase = lambda twin: ClosedFormPhase(net, two(x), beta, two(target), around=(free, low),
                                             alternate=alternate, twin=twin)
        count = CountRows(monkeypatch, net.dense[0].weight)
        halved = phase(True)
        assert count.rows == [half, half], count.rows  # the reference products, for one half
        monkeypatch.undo()
        at_ref, plain = phase(False), phase(False)
        a, b, c = free, free, [s.clone() for s in free]  # c: not the reference tensors, so no shortcut
        for _ in range(4):
            a, b, c = [s.clone() for s in halved(a)], [s.clone() for s in at_ref(b)], [s.clone() for s in plain(c)]
            assert all(torch.equal(sb, sc) for sb, sc in zip(b, c))
            for sa, sc in zip(a, c):
                torch.testing.assert_close(sa, sc, rtol=0, atol=1e-13)
        assert max(float((s - f).abs().max()) for s, f in zip(c, free)) > 1e-3  # the nudge moved them


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
    long = EP(T=400, K=200, betas=[0.0, 0.05], tol=None, adaptive_beta=False)  # one β: what settling changes
    settle = EP(T=400, K=200, betas=[0.0, 0.05], tol=1e-9, adaptive_beta=False)
    long.compute_gradients(net, x, y)
    reference = [p.grad.clone() for p in net.parameters()]
    out = settle.compute_gradients(net, x, y)
    for phase in ("free", "plus", "minus"):
        res = out.free if phase == "free" else out.phases[phase]
        assert res.steps < (400 if phase == "free" else 200), phase  # every phase stopped early
        assert bool((res.max_change < 1e-9).all()), phase
    for p, g in zip(net.parameters(), reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-9)


@pytest.mark.usefixtures("fast_bf16")  # bfloat16 runs anywhere, if slowly
def test_a_bfloat16_free_phase_settles_to_what_bfloat16_can_show():
    """bf16-mixed: a tol below bfloat16's resolution could never be met (every example would run to the cap); the
    bfloat16 free phase settles to `LOW_RESOLUTION` instead, the float32 nudged phases to `tol·β`."""
    import seqep.precision as precision

    net = small_net("sentiment", dtype=torch.float32)
    x, y = small_input(net, B=16, dtype=torch.float32)
    est = EP(T=300, K=300, betas=[0.0, 0.05], tol=1e-4)
    est.precision = "bf16-mixed"
    out = est.compute_gradients(net, x, y)
    assert out.free.steps < 300 and bool((out.free.max_change < precision.LOW_RESOLUTION).all())
    assert est.nudge_tol == pytest.approx(5e-6)
    plus = out.phases["plus"]  # the ±β pair: half-difference within tol·β, mean within tol
    assert plus.steps < 300 and bool((plus.max_change < 1e-4 + 5e-6).all())


def test_bfloat16_settling_measures_changes_relative_to_large_states():
    """A state of 6 flipping between its two bfloat16 neighbours (steps of 2^-5 there) has settled as far as
    bfloat16 can show; measured absolutely it never meets LOW_RESOLUTION (2^-7) and would run to the cap."""
    from seqep.precision import LOW_RESOLUTION
    from seqep.relax import largest_change

    old = [torch.tensor([[6.0, 0.5]], dtype=torch.bfloat16)]
    new = [torch.nextafter(old[0], torch.full_like(old[0], 10.0))]  # one rounding step up, each unit
    assert float(largest_change(new, old)) == 2.0**-5 > LOW_RESOLUTION  # absolute: 'still moving'
    assert float(largest_change(new, old, relative=True)) < LOW_RESOLUTION  # relative: settled
    small = [new[0][:, 1:]], [old[0][:, 1:]]  # |s| < 1: relative is absolute
    assert float(largest_change(*small, relative=True)) == float(largest_change(*small)) == 2.0**-8


def test_a_tol_below_what_the_dtype_can_show_is_raised_to_it():
    """float32 states near 8 move by 4 eps when rounded: a tol of 1e-9 would keep every example to the cap."""
    net = small_net("sentiment", dtype=torch.float32)
    x, _ = small_input(net, B=6, dtype=torch.float32)
    with torch.no_grad():
        res = relax(net, x, net.init_states(6, dtype=x.dtype), 2000, tol=1e-9)
    assert res.steps < 2000 and bool((res.max_change < 32 * torch.finfo(torch.float32).eps).all())


class _Flip:
    """A toy network whose one state per example flips between x's two values forever (row (a, a): settles at a):
    what a bfloat16 phase does when rounding traps a state between two neighbours."""

    def keys(self, x):
        return x, None

    def step(self, x, states, beta=0.0, target=None, drive=None, keys=None):
        (s,) = states
        return [torch.where(s == x[:, :1], x[:, 1:], x[:, :1])]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_cycle_of_roundings_settles_in_bfloat16_and_nowhere_else(dtype):
    """bfloat16 (floor 2^-7, relative to max(1, |s|)): a state flipping between neighbours one floor apart (0.5
    and 0.5 + 2^-7) or 1.5 floors (0.5 and 0.5 + 3·2^-8, the cycle seen on the default run's weights) has settled
    as far as bfloat16 can show, two steps into the cycle (its change stopped shrinking); before, such an example
    ran to the cap. The same values in float32 are a real oscillation far above its rounding: they run to the cap,
    unsettled, as does a flip 8 floors wide in any dtype."""
    x = torch.tensor([[0.5, 0.5 + 2.0**-7], [0.5, 0.5 + 3 * 2.0**-8], [0.25, 0.25], [0.5, 0.5 + 2.0**-4]], dtype=dtype)
    with torch.no_grad():
        res = relax(_Flip(), x, [torch.zeros(4, 1, dtype=dtype)], 50, tol=2e-3)
    steps, settled = res.example_steps.tolist(), res.settled.tolist()
    assert steps[2] == 2 and settled[2]  # (a, a): one step to a, then no change
    assert steps[3] == 50 and not settled[3]  # 8 floors apart: a real oscillation, in any dtype
    if dtype == torch.bfloat16:
        assert steps[:2] == [4, 4] and settled[:2] == [True, True]
    else:
        assert steps[:2] == [50, 50] and settled[:2] == [False, False]
