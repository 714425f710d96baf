"""The GDU property (SPEC.md §4) as tests: per-step EP updates against per-step BPTT gradients, on small float64
models with a converged free phase; the O(K) BPTT against the O(K²) procedure; the metrics; `task=gdu`."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from seqep.relax import relax
from seqep.tasks.gdu import (
    bptt_steps,
    bptt_steps_reference,
    compare,
    cosine,
    fit_slope,
    gdu_check,
    gdu_sweep,
    relative_error,
    relative_rmse,
    sign_agreement,
    state_names,
)
from seqep.tasks.gdu.report import sweep_frame, sweep_slopes

from small_models import small_input, small_net

T_FREE, K = 250, 10  # small models settle to ~1e-15 within 250 steps
CONF = Path(__file__).resolve().parents[1] / "conf"


def converged(net, x):
    free = relax(net, x, net.init_states(x.shape[0]), T_FREE)
    return float(free.max_change.max()) < 1e-10


def dense(net, result, kind):
    """Names of the dense layers' tensors of one kind (parameters of the dense synapses, dense-layer fields)."""
    if kind == "param":
        return [n for n in result.names("param") if int(n.split(".")[1]) >= net.n_proj]
    return [f"field.{n}" for n in state_names(net)[net.n_proj:]]


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_o_k_bptt_equals_o_k2_reference(kind):
    """One backward with a fresh parameter copy per step == truncated BPTT for k = 1..K, differenced."""
    net = small_net(kind)
    x, y = small_input(net, B=3)
    T, k = 12, 5
    fast = bptt_steps(net, x, y, T, k)
    ref = bptt_steps_reference(net, x, y, T, k)
    assert set(ref) == set(fast.kinds) - {n for n, kd in fast.kinds.items() if kd == "field"}
    for name, expected in ref.items():
        torch.testing.assert_close(fast.targets[name], expected, rtol=1e-10, atol=1e-14, msg=name)
    # the steps sum to the plain K-step truncated BPTT gradient
    for name, p in net.named_parameters():
        assert fast.targets[name].shape == (k, *p.shape)


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_symmetric_ep_updates_match_bptt_step_by_step(kind):
    net = small_net(kind)  # my_hard_sig, the paper's activation
    x, y = small_input(net)
    assert converged(net, x), "the GDU property needs a converged free phase"
    result = gdu_check(net, x, y, T_FREE, K, beta=1e-3, variants=("symmetric", "positive"))
    assert result.free_max_change < 1e-10
    for name in dense(net, result, "param") + dense(net, result, "field"):
        m = compare(result.ep["symmetric"][name], result.bptt[name])
        assert m["rmse"] <= 0.05 and m["cos_cumulative"] > 0.999, (name, m)
    for name in result.names("param"):  # the projections match too
        assert compare(result.ep["symmetric"][name], result.bptt[name])["rmse"] <= 0.05, name
    # one-sided at β = 1e-3 is close as well, but symmetric is much closer (O(β²) against O(β))
    for name in dense(net, result, "param"):
        sym = relative_error(result.ep["symmetric"][name], result.bptt[name])
        pos = relative_error(result.ep["positive"][name], result.bptt[name])
        assert sym < pos / 10, (name, sym, pos)


def test_raw_state_updates_carry_the_update_jacobian():
    """SPEC's state comparison (ΔEP_s vs −∂L/∂s) is off by σ'(g): ½ for my_hard_sig units in the linear range,
    0 for saturated ones; the field rows (vs −∂L/∂g) remove it (docs/gdu.md)."""
    net = small_net("sentiment")
    x, y = small_input(net)
    result = gdu_check(net, x, y, T_FREE, K, beta=1e-3, variants=("symmetric",))
    ep, bptt = result.ep["symmetric"]["h1"], result.bptt["h1"]
    h1 = relax(net, x, net.init_states(x.shape[0]), T_FREE).states[1]
    slope = ((h1 > 0) & (h1 < 1)).to(ep.dtype) * 0.5  # σ' of my_hard_sig at the equilibrium, (B, h1)
    torch.testing.assert_close(ep, slope * bptt, rtol=1e-4, atol=1e-9)
    assert relative_rmse(ep, bptt) > 0.3


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_error_slope_against_beta(kind):
    """One-sided EP is O(β) from BPTT, symmetric EP O(β²). A smooth activation: a clamp's kinks, crossed by
    a finite nudge, break the power law (docs/gdu.md)."""
    net = small_net(kind, activation="my_sigmoid")
    x, y = small_input(net)
    sweep = gdu_sweep(net, x, y, T_FREE, K, [1e-3, 3e-3, 1e-2, 3e-2], kinds=("param",))
    slopes = sweep_slopes(sweep_frame(sweep))
    assert abs(slopes["positive"] - 1) <= 0.3 and abs(slopes["negative"] - 1) <= 0.3, slopes
    assert abs(slopes["symmetric"] - 2) <= 0.3, slopes


def test_symmetric_is_the_mean_of_one_sided_and_sums_to_the_estimators():
    """Per step, symmetric == (positive + negative) / 2; summed over steps, each variant is the EP gradient."""
    from seqep.estimators import EP, grads_by_name

    net = small_net("nli")
    x, y = small_input(net)
    result = gdu_check(net, x, y, 40, 8, beta=0.05)
    for name in result.names():
        torch.testing.assert_close(result.ep["symmetric"][name],
                                   (result.ep["positive"][name] + result.ep["negative"][name]) / 2)
    for variant in ("symmetric", "positive", "negative"):
        # the fixed synchronous steps gdu records
        EP(40, 8, [0.0, 0.05], variant, tol=None, updates="synchronous").compute_gradients(net, x, y)
        for name, g in grads_by_name(net).items():
            torch.testing.assert_close(result.ep[variant][name].sum(0), g, rtol=1e-7, atol=1e-12)


def test_metrics_on_hand_made_arrays():
    ep = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, -2.0]], dtype=torch.float64)  # (K=2, 3 elements)
    bp = torch.tensor([[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    # element 0: rms(e−b) = sqrt((0 + 4)/2) = √2, max(rms e, rms b) = 1 -> √2
    # element 1: both zero -> 0 / 1e-10 = 0;  element 2: rms(e−b) = sqrt((1 + 9)/2) = √5, max = 2 -> √5 / 2
    assert relative_rmse(ep, bp) == pytest.approx((math.sqrt(2) + 0 + math.sqrt(5) / 2) / 3, rel=1e-9)
    # products per (t, i): 1, 0, 2 | −1, 0, −2 -> 4 of 6 are >= 0
    assert sign_agreement(ep, bp) == pytest.approx(100 * 4 / 6)
    # cumulative: e = [2, 0, 0], b = [0, 0, 2] -> orthogonal
    m = compare(ep, bp)
    assert m["cos_cumulative"] == pytest.approx(0.0, abs=1e-15)
    # per step: t=0 e=[1,0,2], b=[1,0,1] -> 3/(√5·√2); t=1 e=[1,0,−2], b=[−1,0,1] -> −3/(√5·√2)
    c = 3 / (math.sqrt(5) * math.sqrt(2))
    assert m["cos_steps"] == pytest.approx([c, -c])
    assert m["cos_step_mean"] == pytest.approx(0.0, abs=1e-15) and m["cos_step_min"] == pytest.approx(-c)
    # ‖e − b‖ = sqrt(0 + 1 + 4 + 9) = √14, ‖b‖ = 2
    assert relative_error(ep, bp) == pytest.approx(math.sqrt(14) / 2)
    assert math.isnan(cosine(torch.zeros(3), torch.ones(3)))
    assert relative_rmse(bp, bp) == 0.0 and sign_agreement(bp, -bp) == pytest.approx(100 * 2 / 6)
    # slopes: error = 3 β² exactly -> 2
    assert fit_slope([1e-3, 1e-2, 1e-1], [3e-6, 3e-4, 3e-2]) == pytest.approx(2.0)
    assert math.isnan(fit_slope([1e-3], [1.0]))


def test_bad_arguments():
    net = small_net("sentiment")
    x, y = small_input(net)
    with pytest.raises(ValueError, match="K <= T"):
        bptt_steps(net, x, y, 3, 5)
    with pytest.raises(ValueError, match="positive"):
        gdu_check(net, x, y, 5, 2, beta=0.0)
    with pytest.raises(ValueError, match="variants"):
        gdu_check(net, x, y, 5, 2, beta=0.1, variants=("cep",))


def test_task_gdu_writes_table_plots_and_summary(tmp_path, capsys):
    """`task=gdu` end to end on a tiny synthetic config, weights from a checkpoint file."""
    from seqep.tasks import dispatch

    overrides = ["task=gdu", "dataset=synth_sentiment", "dataset.seq_len=6", "dataset.embed_dim=5",
                 "dataset.n_train=16", "dataset.n_val=12", "dataset.n_test=4", "dataset.vocab_size=20",
                 "model.fc=[7,2]", "algorithm.T=60", "algorithm.K=5", "logger=none",
                 "gdu.n_examples=6", "gdu.betas=[0.001,0.01,0.1]", f"paths.run_dir={tmp_path / 'run'}",
                 f"checkpoint.load={tmp_path / 'weights.pt'}"]
    torch.manual_seed(3)
    weights = small_net("sentiment", seq_len=6, embed_dim=5, fc=[7, 2]).float().state_dict()
    torch.save(weights, tmp_path / "weights.pt")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="test"):
        cfg = compose("config", overrides=overrides)
    summary = dispatch(cfg)
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "gdu_metrics.csv")))
    tensors = {r["tensor"] for r in rows}
    assert {"s1", "h1", "out", "field.h1", "synapses.0.weight", "synapses.2.bias"} <= tensors
    assert {r["variant"] for r in rows} == {"positive", "negative", "symmetric"}
    assert {"rmse", "sign_agree_pct", "cos_cumulative", "cos_step_mean", "cos_step_4"} <= set(rows[0])
    sweep = list(csv.DictReader(open(run / "gdu_beta_sweep.csv")))
    assert {float(r["beta"]) for r in sweep} == {0.001, 0.01, 0.1}
    for name in ("gdu_cumulative", "gdu_distance_ratio", "gdu_beta_sweep"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 10_000
    saved = json.loads((run / "summary.json").read_text())
    assert saved["gdu/K"] == 5 and saved["gdu/n_examples"] == 6 and "weights.pt" in saved["gdu/weights"]
    assert summary["gdu/beta"] == 0.02 and summary["gdu/dtype"] == "float64"
    assert {"gdu/slope/positive", "gdu/slope/symmetric", "gdu/param_one_sided_over_sym"} <= set(summary)
    # the rule at the run's precision (fp32) against itself in float64 and against float32 BPTT
    assert summary["gdu/precision"] == "fp32" and summary["gdu/probe/f64/cos_min"] > 0.9999
    assert 0 <= summary["gdu/probe/f64/rel_err/synapses.0.weight"] < 1e-2 and -1 <= summary["gdu/probe/cos_min"] <= 1
    out = capsys.readouterr().out
    assert "synapses.1.weight" in out and "slopes" in out and "precision fp32: the learning rule's gradient" in out


def test_task_gdu_on_a_trained_run_takes_its_stored_config(tmp_path):
    """checkpoint.load=<run>: the check runs the run's own model, data and T, K (not the composed defaults:
    rt_snippets at T=20)."""
    from seqep.tasks import dispatch

    from conftest import compose_cfg, make_cfg

    trained = tmp_path / "trained"
    dispatch(make_cfg(trained, "trainer.epochs=1"))  # synth_sentiment, T=6, K=3
    summary = dispatch(compose_cfg("task=gdu", f"checkpoint.load={trained}", "gdu.n_examples=3", "gdu.betas=[0.01]",
                                   "logger=none", f"paths.run_dir={tmp_path / 'gdu'}"))
    assert summary["task"] == "gdu" and (summary["gdu/T"], summary["gdu/K"]) == (6, 3)
    assert summary["gdu/dataset"] == "synth_sentiment" and summary["config_from"].endswith("best.pt")
