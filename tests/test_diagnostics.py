"""Each EP diagnostic on a tiny model against a hand-computed value."""

import math

import pytest
import torch

from seqep.diagnostics import (
    EpochAverager,
    attention_entropy,
    convergence,
    gradient_metrics,
    output_health,
    phase_metrics,
    probe,
)
from seqep.estimators import EP
from seqep.relax import relax

from small_models import small_input, small_net


def test_unsettled_state_reports_residual_above_tolerance():
    net = small_net("sentiment")
    x, _ = small_input(net)
    early = convergence(relax(net, x, net.init_states(5), 2), tol=1e-6)
    assert early["max_change"] > 1e-6 and early["frac_unsettled"] == 1.0 and early["steps"] == 2.0
    settled = convergence(relax(net, x, net.init_states(5), 300), tol=1e-6)
    assert settled["max_change"] < 1e-12 and settled["frac_unsettled"] == 0.0


def test_output_bias_minus_five_gives_tie_rate_one():
    net = small_net("sentiment")
    x, _ = small_input(net)
    with torch.no_grad():
        net.synapses[-1].bias.fill_(-5.0)
    states = relax(net, x, net.init_states(5), 30).states
    health = output_health(net, states)
    assert health["out/tie_rate"] == 1.0 and health["out/sat/out"] == 1.0
    with torch.no_grad():
        net.synapses[-1].bias.fill_(+0.5)
    assert output_health(net, relax(net, x, net.init_states(5), 30).states)["out/tie_rate"] == 0.0


def test_saturation_counts_units_at_either_bound():
    net = small_net("sentiment")  # fc [10, 3], my_hard_sig in [0, 1]
    states = net.init_states(2)
    states[1] = torch.tensor([[0.0] * 5 + [0.5] * 3 + [1.0] * 2] * 2, dtype=torch.float64)
    states[2] = torch.tensor([[0.2, 0.0, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    health = output_health(net, states)
    assert health["out/sat/h1"] == pytest.approx(7 / 10)
    assert health["out/sat/out"] == pytest.approx(4 / 6)
    assert health["out/tie_rate"] == pytest.approx(1 / 2)


def test_attention_entropy_uniform_and_peaked():
    net = small_net("nli")
    x, _ = small_input(net)
    # identical tokens in every position -> every row is uniform -> entropy log L
    same = x[:, :1].expand(-1, x.shape[1], -1).contiguous()
    ent = attention_entropy(net, same, net.init_states(5))
    assert set(ent) == {f"attn/entropy/s{i}" for i in range(1, 5)}
    for v in ent.values():
        assert v == pytest.approx(math.log(net.seq_len), rel=1e-9)
    with torch.no_grad():  # a huge scale makes the attention one-hot -> entropy ~ 0
        net.attn_scale = 1e6
    assert max(attention_entropy(net, x, relax(net, x, net.init_states(5), 3).states).values()) < 1e-3


def test_phase_metrics_phi_and_names():
    net = small_net("sentiment")
    x, y = small_input(net)
    out = EP(40, 10, [0.0, 0.1], tol=None).compute_gradients(net, x, y)
    m = phase_metrics(net, x, y, out, tol=1e-3, beta=0.1)
    for phase in ("free", "plus", "minus"):
        for key in ("max_change", "mean_change", "frac_unsettled", "steps", "phi"):
            assert f"relax/{phase}/{key}" in m
    assert m["relax/free/steps"] == 40 and m["relax/plus/steps"] == 10
    assert m["relax/free/phi"] == pytest.approx(net.phi(x, out.free.states).mean().item())


def test_gradient_metrics_norms_and_update_ratio():
    net = small_net("sentiment")
    for p in net.parameters():
        p.grad = torch.full_like(p, 2.0)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.1)
    m = gradient_metrics(net, before)
    w = net.synapses[1].weight
    assert m["grad/norm/synapses.1.weight"] == pytest.approx(2.0 * math.sqrt(w.numel()))
    assert m["grad/weight_norm/synapses.1.weight"] == pytest.approx(w.norm().item())
    assert m["grad/update_ratio/synapses.1.weight"] == pytest.approx(0.1 / 1.1)


def test_probe_cosine_near_one_and_grads_restored():
    net = small_net("nli")
    x, y = small_input(net)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    m = probe(net, EP(250, 40, [0.0, 1e-3], tol=None), x, y)
    assert m["ep/probe/cos_min"] > 0.999
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in net.parameters())


def test_probe_reference_is_bptt_from_the_settled_free_state_in_the_limit_whatever_the_estimators_T_and_K():
    """The probe's BPTT settles its free phase, then sums recurrent backpropagation until it converged, so a short T
    (an unsettled estimator, or a slowly creeping example) and a short K do not move the reference: it equals
    1000 synchronous steps with a graph from a 2000-step free state, and neither the plain T + K steps from zero
    nor K steps from the settled state would."""
    from seqep.diagnostics import _gradients, probe_reference
    from seqep.estimators import BPTT
    from seqep.estimators.base import mse_loss
    from seqep.network import one_hot

    net = small_net("nli")
    x, y = small_input(net, B=6)
    est = EP(3, 3, [0.0, 0.1], tol=None)
    with torch.no_grad():
        settled = relax(net, x, net.init_states(6, dtype=x.dtype), 2000).states

    def bptt_from_settled(steps):
        with torch.enable_grad():
            end = relax(net, x, settled, steps).states
            grads = torch.autograd.grad(mse_loss(net.output(end), one_hot(y, net.n_classes, x.dtype)),
                                        list(net.parameters()), allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(net.parameters(), grads)]

    want, short = bptt_from_settled(1000), bptt_from_settled(3)
    got = _gradients(probe_reference(est), net, x, y)
    plain = _gradients(BPTT(3 + 3, 3), net, x, y)
    names = [n for n, _ in net.named_parameters()]
    gap = lambda other: max(float((other[i] - w).norm() / w.norm()) for i, w in enumerate(want) if w.norm() > 0)
    assert gap([got[n] for n in names]) < 2e-5, gap([got[n] for n in names])  # 6e-6: the adjoint converges to 1e-6
    assert gap([plain[n] for n in names]) > 1e-2 and gap(short) > 1e-2, (gap([plain[n] for n in names]), gap(short))


def test_epoch_averager():
    avg = EpochAverager()
    avg.add({"a": 1.0, "b": 3.0})
    avg.add({"a": 3.0})
    assert avg.means() == {"a": 2.0, "b": 3.0}


def test_training_logs_every_diagnostic_to_metrics_and_wandb(tmp_path, monkeypatch):
    """A short run: every metric family of issue 7 is in metrics.csv and in the offline W&B run."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_track import inspect_wandb

    from seqep.tasks import dispatch

    from conftest import make_cfg, read_csv

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    dispatch(make_cfg(tmp_path, "logger=wandb", "trainer.epochs=2", "trainer.diagnostics_every=2",
                      "trainer.probe_every=2"))
    rows = read_csv(tmp_path / "metrics.csv")
    expected = ["relax/free/max_change", "relax/free/mean_change", "relax/free/frac_unsettled", "relax/free/steps",
                "relax/plus/phi", "relax/minus/max_change", "out/tie_rate", "out/sat/out", "attn/entropy/s1",
                "grad/norm/synapses.1.weight", "grad/weight_norm/synapses.0.weight",
                "grad/update_ratio/synapses.2.bias", "time/diagnostics_s"]
    for key in expected:
        assert float(rows[0][key]) >= 0.0, key
    assert rows[0]["ep/probe/cos_min"] == "" and -1.0 <= float(rows[1]["ep/probe/cos_min"]) <= 1.0
    assert 1.0 <= float(rows[1]["relax/free/steps"]) <= 6.0 and 1.0 <= float(rows[1]["relax/plus/steps"]) <= 3.0  # T, K
    history = inspect_wandb(tmp_path)["history"]
    for key in [*expected, "ep/probe/cos/synapses.0.weight"]:
        assert key in history[-1], key
    assert history[-1]["out/tie_rate"] == pytest.approx(float(rows[1]["out/tie_rate"]))


def test_a_bptt_run_is_probed_with_settling_ep_whatever_its_T():
    """A BPTT run's probe compares BPTT with symmetric EP at β = 0.01 settled with EP's own defaults (caps, tol,
    alternating updates), not cut at the run's T and K: a T = 4, K = 2 EP would measure its short phases."""
    from seqep.diagnostics import _gradients, agreement, probe_estimator, probe_reference
    from seqep.estimators import BPTT

    run = BPTT(4, 2)
    run.precision = "bf16-mixed"
    ep = probe_estimator(run)
    defaults = EP()
    assert isinstance(ep, EP) and (ep.beta, ep.variant, ep.precision) == (0.01, "symmetric", "bf16-mixed")
    assert (ep.T, ep.K, ep.tol, ep.updates) == (defaults.T, defaults.K, defaults.tol, defaults.updates)
    assert probe_estimator(defaults) is defaults

    net = small_net("nli")
    x, y = small_input(net, B=6)
    run = BPTT(6, 6)  # K as deep as the network: the reference reaches every tensor
    m = probe(net, run, x, y, f64=False)
    reference = _gradients(probe_reference(run), net, x, y)
    short = agreement(_gradients(EP(6, 6, [0.0, 0.01], updates="synchronous"), net, x, y), reference, "")
    worst = lambda metrics, key: max(v for k, v in metrics.items() if k.startswith(key))
    assert m["ep/probe/cos_min"] > 0.9999 > short["cos_min"], (m, short)
    assert worst(m, "ep/probe/rel_err/") < 0.03 < 0.1 < worst(short, "rel_err/"), (m, short)


def test_the_probe_counts_the_examples_at_a_kink_and_measures_the_others_apart():
    """An example whose output unit sits just below the hard sigmoid's kink (its field -0.005, lifted over it by
    the +β nudge only) gets a gradient from EP and none from BPTT; the probe counts it (`ep/probe/kink_examples`)
    and reports the agreement over the other examples (`ep/probe/smooth/cos_min`), which it does not spoil."""
    from seqep.diagnostics import kink_straddles, probe

    net = small_net("sentiment")
    x, y = small_input(net, B=6)
    y[:] = y[0]  # one class, so one bias sets example 0's unit without lifting the others over the kink
    out = net.dense[-1]
    with torch.no_grad():
        free = relax(net, x, net.init_states(6, dtype=x.dtype), 3000).states
        unit = int(y[0])
        out.bias[unit] -= free[-2][0] @ out.weight[unit] + out.bias[unit] + 5e-3
    est = EP(500, 500, [0.0, 0.02], tol=1e-9)
    straddle = kink_straddles(net, est.compute_gradients(net, x, y))
    assert straddle[0] and not straddle.all(), straddle
    metrics = probe(net, est, x, y, f64=False)
    assert metrics["ep/probe/kink_examples"] == float(straddle.sum())
    assert metrics["ep/probe/cos_min"] < 0.99 < 0.9999 < metrics["ep/probe/smooth/cos_min"], metrics
    clean = probe(net, est, x[~straddle], y[~straddle], f64=False)  # without them: no kink, and the two agree
    assert clean["ep/probe/kink_examples"] == 0.0 and clean["ep/probe/smooth/cos_min"] == clean["ep/probe/cos_min"]
