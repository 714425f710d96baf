"""precision=fp32|bf16-mixed|bf16-delta|tf32 (seqep/precision.py): the key's checks, the way it reaches the
estimator, and what the mixed modes keep: predictions, EP's gradient against float64, BPTT's gradient under autocast."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import seqep.precision as precision
from seqep.config import validate
from seqep.diagnostics import precision_fidelity
from seqep.errors import SeqepError
from seqep.estimators import BPTT, EP, Estimator, grads_by_name
from seqep.relax import relax
from seqep.tasks import dispatch
from seqep.tasks.train import build_trainer
from seqep.training import checkpoint as ckpt
from seqep.training.builders import build_estimator

from conftest import bf16_fidelities, compose_cfg, make_cfg, read_csv

# The default model (model=sentiment, fc [256, 2], EP with its default settling, β=0.02) on synthetic data of the
# default data's shape (L=48, d=50): trained a few epochs in the mixed mode, as `python run.py precision=bf16-mixed`
# would.
DEFAULT_SHAPE = ["dataset=synth_sentiment", "dataset.seq_len=48", "dataset.embed_dim=50", "dataset.n_train=1024",
                 "dataset.n_val=64", "dataset.n_test=64", "dataset.batch_size=64", "logger=none", "device=cpu",
                 "trainer.progress=false", "trainer.probe_every=0", "trainer.diagnostics_every=0"]


pytestmark = pytest.mark.usefixtures("fast_bf16")  # bf16 runs as such whatever the CPU (tests/conftest.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(net, x, y): the default model after 4 epochs of bf16-mixed training, and a validation batch of 64."""
    run = tmp_path_factory.mktemp("mixed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(precision, "fast_bf16", lambda device_type: True)
        cfg = compose_cfg(*DEFAULT_SHAPE, "trainer.epochs=4", "precision=bf16-mixed", f"paths.run_dir={run}")
        summary = dispatch(cfg)
        assert summary["precision"] == "bf16-mixed" and summary["val/best_acc"] > 0.6, summary
        trainer = build_trainer(cfg, run)
    ckpt.load_weights(trainer.net, str(run / "checkpoints" / "last.pt"))
    x, y = next(iter(trainer.feed.eval("val")))
    assert x.shape[0] == 64
    return trainer.net, x, y


def cosines(a: dict, b: dict) -> dict[str, float]:
    return {n: F.cosine_similarity(a[n].flatten().double(), b[n].flatten().double(), 0).item() for n in b}


# ------------------------------------------------------------------------------------------------ the key
@pytest.mark.parametrize(("overrides", "message"), [
    (["precision=fp16"], "precision='fp16' is not allowed; choose one of: fp32, bf16-mixed, bf16-delta, tf32"),
    (["precision=bf16-mixed", "dtype=float64"], "precision=bf16-mixed needs dtype=float32 (got dtype=float64)"),
    (["precision=tf32", "device=cpu"], "precision=tf32 needs a CUDA device (device=cpu runs on cpu)"),
])
def test_bad_precision_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(SeqepError) as info:
        validate(compose_cfg(*overrides))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_precision_reaches_the_estimator_from_the_config(tmp_path):
    assert compose_cfg().precision == "fp32"
    trainer = build_trainer(make_cfg(tmp_path, "precision=bf16-mixed"), tmp_path)
    assert trainer.estimator.precision == "bf16-mixed"
    assert build_estimator({"_target_": "seqep.estimators.BPTT"}, precision="bf16-mixed").precision == "bf16-mixed"
    assert EP().precision == "fp32"
    with pytest.raises(ValueError, match="^precision='bf16' is not allowed; choose one of: "
                                         "fp32, bf16-mixed, bf16-delta, tf32$"):
        EP().precision = "bf16"


def test_a_rule_of_ones_own_gets_the_precision_and_a_foreign_one_is_refused():
    class Halved(EP):  # a subclass that knows nothing of precision
        def __init__(self, T: int = 5, K: int = 2) -> None:
            super().__init__(T, K)

    import sys

    sys.modules[__name__].Halved = Halved
    est = build_estimator({"_target_": f"{__name__}.Halved"}, precision="bf16-mixed")
    assert isinstance(est, Estimator) and est.precision == "bf16-mixed"
    with pytest.raises(SeqepError, match="precision=bf16-mixed: .*has no `precision` attribute; subclass "
                                         "seqep.estimators.Estimator"):
        build_estimator({"_target_": "argparse.Namespace"}, precision="bf16-mixed")


def test_bf16_delta_gives_the_nudged_phases_a_bfloat16_first_weight_on_the_closed_path_only(monkeypatch):
    from seqep.network import HopfieldEPNet

    net = HopfieldEPNet("sentiment", 6, 5, [7, 2])
    x = torch.randn(4, 6, 5)
    seen = []
    monkeypatch.setattr("seqep.estimators.ep.relax", lambda *a, **kw: seen.append(kw["delta_weight"]) or
                        relax(*a, **kw))
    for mode, field_mode in (("bf16-delta", "closed"), ("bf16-mixed", "closed"), ("bf16-delta", "autograd")):
        est = EP(10, 3, field_mode=field_mode, adaptive_beta=False)  # no kink reruns: one relax call per phase
        est.precision = mode
        est.compute_gradients(net, x, torch.tensor([0, 1, 1, 0]))
    low, *others = seen
    assert low.dtype == torch.bfloat16 and torch.equal(low, net.dense[0].weight.detach().to(torch.bfloat16))
    assert others == [None] * 3  # bf16-mixed's one stacked ±β phase, the autograd path's + and − phases


def test_without_fast_bf16_one_warning_and_fp32(monkeypatch, capsys, caplog):
    monkeypatch.setattr(precision, "fast_bf16", lambda device_type: False)
    torch.manual_seed(0)
    from seqep.network import HopfieldEPNet

    net = HopfieldEPNet("sentiment", 6, 5, [7, 2])
    x = torch.randn(4, 6, 5)
    mixed = EP(10, 3)
    mixed.precision = "bf16-mixed"
    for _ in range(3):
        out = mixed.predict(net, x)
    assert torch.equal(out, EP(10, 3).predict(net, x))  # ran in float32
    assert precision.effective_precision("tf32", "cpu") == "fp32"
    said = capsys.readouterr().out + caplog.text
    assert said.count("warning: precision=bf16-mixed falls back to fp32: this hardware has no fast bfloat16") == 1
    assert said.count("warning: precision=tf32 falls back to fp32: TF32 exists only on CUDA") == 1


# ------------------------------------------------------------------------------------------------ what it keeps
@pytest.mark.slow
def test_mixed_predictions_agree_with_fp32(trained):
    net, x, _ = trained
    mixed = EP()
    mixed.precision = "bf16-mixed"
    low, full = mixed.predict(net, x), EP().predict(net, x)
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert (low - full).abs().max() < 0.05  # bfloat16: 8 bits of mantissa, outputs in [0, 1]
    assert (low.argmax(1) == full.argmax(1)).float().mean() >= 0.95


@pytest.mark.slow
def test_mixed_ep_gradient_keeps_cosine_to_float64_on_every_tensor(trained):
    """Issue 13: bf16 free phase + fp32 nudged phases and gradient >= 0.999 on every tensor of the trained default
    model, in both bfloat16 modes; all-bf16 EP is far worse, so the check can tell."""
    net, x, y = trained
    names = [n for n, _ in net.named_parameters()]
    # bf16-delta: also the nudged phases' first-weight products on the deviation
    for mode, m in bf16_fidelities(net, x, y).items():
        assert {f"ep/probe/f64/cos/{n}" for n in names} <= set(m) and "ep/probe/f64/rel_err_max" in m
        assert all(m[f"ep/probe/f64/cos/{n}"] >= 0.999 for n in names), (mode, m)
        assert m["ep/probe/f64/cos_min"] >= 0.999 and m["ep/probe/f64/rel_err_max"] < 0.05, (mode, m)
    all_bf16 = precision_fidelity(net.to(torch.bfloat16), EP(), x.to(torch.bfloat16), y)
    net.float()
    assert all_bf16["ep/probe/f64/cos_min"] < m["ep/probe/f64/cos_min"] - 0.01, all_bf16


@pytest.mark.slow
def test_bptt_under_autocast_is_close_to_fp32(trained):
    net, x, y = trained
    mixed = BPTT()
    mixed.precision = "bf16-mixed"
    mixed.compute_gradients(net, x, y)
    low = grads_by_name(net)
    BPTT().compute_gradients(net, x, y)
    full = grads_by_name(net)
    assert all(g.dtype == torch.float32 for g in low.values())
    for name, cos in cosines(low, full).items():
        assert cos >= 0.99, (name, cos)


def test_a_mixed_run_records_its_precision_and_the_float64_probe(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    summary = dispatch(make_cfg(run, "precision=bf16-mixed", "trainer.epochs=1", "trainer.probe_every=1"))
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["precision"] == summary["precision"] == "bf16-mixed"
    assert "| cpu bf16-mixed |" in capsys.readouterr().out + caplog.text  # the run's header line
    row = read_csv(run / "metrics.csv")[0]
    assert 0.99 <= float(row["ep/probe/f64/cos_min"]) <= 1.0 + 1e-9
    assert float(row["ep/probe/f64/rel_err/synapses.0.weight"]) < 0.1
    assert -1.0 <= float(row["ep/probe/cos_min"]) <= 1.0


def test_the_float64_probe_can_be_switched_off(tmp_path):
    """`trainer.probe_f64=false`: the EP-vs-BPTT probe alone (the float64 comparison builds a float64 copy of the
    model and costs as much time again: 1.4 GB at the IMDB shape)."""
    run = tmp_path / "run"
    dispatch(make_cfg(run, "trainer.epochs=1", "trainer.probe_every=1", "trainer.probe_f64=false"))
    row = read_csv(run / "metrics.csv")[0]
    assert -1.0 <= float(row["ep/probe/cos_min"]) <= 1.0
    assert not [k for k in row if k.startswith("ep/probe/f64/")]


def test_the_default_rule_settles_and_tracks_bptt_on_the_trained_default_model(trained):
    """Issue 13, point 3, on the trained default-shape model: EP with its defaults (per-example settling, β=0.02)
    leaves no example at a step cap and stays within cosine 0.99 of BPTT on every tensor."""
    from seqep.diagnostics import probe

    net, x, y = trained
    est = EP()
    out = est.compute_gradients(net, x, y)
    for res in (out.free, out.phases["plus"], out.phases["minus"]):
        assert bool(res.settled.all()) and res.steps < 100
    assert float(out.free.example_steps.float().mean()) < 40  # settled well before the cap
    metrics = probe(net, est, x, y, f64=False)
    assert metrics["ep/probe/cos_min"] >= 0.99, metrics


def test_fp32_probe_against_float64_is_near_exact(tmp_path):
    from small_models import small_input, small_net

    net = small_net("nli").float()
    x, y = small_input(net)
    # fixed steps (a settling stop step may flip on rounding) and β=0.1 (rounding is divided by β in the gradient)
    m = precision_fidelity(net, EP(30, 10, [0.0, 0.1], tol=None), x.float(), y)
    assert m["ep/probe/f64/cos_min"] > 0.9999 and m["ep/probe/f64/rel_err_max"] < 1e-2
