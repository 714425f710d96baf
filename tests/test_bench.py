"""The benchmark task and the fast relaxation path it measures: bench.json keys, the FLOP model against a hand
count and PyTorch's counter, and the closed-form fast path (`ClosedFormPhase`) against autograd of Φ.
No timing assertions: timings depend on the machine and its load."""

import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from seqep.errors import SeqepError
from seqep.estimators import EP
from seqep.network import one_hot
from seqep.phase import ClosedFormPhase
from seqep.relax import relax
from seqep.tasks.bench import (
    LR,
    SHAPES,
    PeakMemory,
    read_settings,
    run_bench,
    step_flops,
    train_flops,
)
from seqep.tasks.bench.cases import build, estimator
from seqep.training.builders import build_optimizer

from small_models import small_input, small_net

ROOT = Path(__file__).resolve().parents[1]


def bench_cfg(*overrides):
    """The composed config (as run.py would build it) of a small bench: every `bench.*` key from the schema."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            "task=bench", "device=cpu", "logger=none", "bench.shapes=[tiny]", "bench.repeats=1",
            "bench.memory_T=[2,4]", "bench.memory_shape=tiny", "bench.ceiling_size=64",
            "bench.old_code_batches=false", "bench.workers=[1,2]", "bench.parallel_shape=tiny", *overrides])


def test_run_bench_writes_json_with_positive_numbers(tmp_path):
    summary = run_bench(bench_cfg(), tmp_path)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"hardware", "settings", "ceiling_gflops", "rows", "speedups", "shapes", "memory_vs_T",
            "memory_growth", "old_code"} <= set(report)
    assert report["ceiling_gflops"] > 0 and report["hardware"]["torch"] == torch.__version__
    rows = report["rows"]
    assert {(r["phase"], r["algorithm"], r["path"]) for r in rows} == {
        ("free", "ep|bptt", "closed"), ("free", "ep|bptt", "autograd"), ("train", "ep", "closed"),
        ("train", "ep", "autograd"), ("train", "bptt", "closed"), ("train", "bptt", "autograd")}
    for r in rows:
        assert r["samples_per_s"] > 0 and r["gflops_per_s"] > 0 and r["peak_mb"] > 0 and r["seconds"] > 0
    same = report["shapes"]["tiny"]["equivalence"]  # checked in float64: float32 rounding of the autograd path's
    assert same["ok"] and same["dtype"] == "float64" and same["rel_grad_diff"] < 1e-9  # Φ difference grows as 1/β
    assert report["shapes"]["tiny"]["early_stop"]["steps_used"] >= 1
    assert {(m["algorithm"], m["T"]) for m in report["memory_vs_T"]} == {("ep", 2), ("ep", 4), ("bptt", 2),
                                                                         ("bptt", 4)}
    assert all(m["peak_mb"] > 0 for m in report["memory_vs_T"])
    assert (tmp_path / "plots" / "bench_memory.png").stat().st_size > 0
    assert summary["speedup/closed/tiny/train/ep"] > 0
    assert report["settings"]["optimizer"]["_target_"] == "torch.optim.Adam"
    assert report["settings"]["optimizer"]["lr"] == LR and report["settings"]["optimizer"]["lrs"] is None
    parallel = report["data_parallel"]  # 1 and 2 worker processes, the tiny batch of 4 split 2 + 2
    assert [(r["workers"], r["batch"]) for r in parallel] == [(1, 4), (2, 4)]
    assert all(r["samples_per_s"] > 0 for r in parallel) and parallel[0]["speedup_vs_1"] == 1.0
    assert summary["data_parallel/tiny/2_workers/samples_per_s"] == parallel[1]["samples_per_s"]


@pytest.mark.usefixtures("fast_bf16")
def test_bench_times_the_other_precisions_at_precision_shapes(tmp_path):
    """bench.precision_shapes=[tiny]: closed free phase and EP step also in both bfloat16 modes (made available
    here whatever the CPU), with their ratio over fp32 in bench.json and the summary; rows carry their precision."""
    import seqep.precision

    summary = run_bench(bench_cfg("bench.precision_shapes=[tiny]", "bench.memory_T=[]", "bench.tol=null"), tmp_path)
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["phase"], r["algorithm"], r["path"], r["precision"]) for r in report["rows"]}
    low = seqep.precision.BF16_FREE
    assert {("free", "ep|bptt", "closed", "fp32"), ("train", "bptt", "autograd", "fp32")} <= rows
    assert {(phase, alg, "closed", mode) for mode in low for phase, alg in (("free", "ep|bptt"), ("train", "ep"))} \
        <= rows
    assert not any(("train", "bptt", "closed", mode) in rows for mode in low) and len(rows) == 10
    ratios = {(s["precision"], s["phase"], s["algorithm"]): s for s in report["precision_speedups"]}
    assert set(ratios) == {(mode, *key) for mode in low for key in (("free", "ep|bptt"), ("train", "ep"))}
    assert all(s["over_fp32"] > 0 and s["over_autograd_fp32"] > 0 for s in ratios.values())
    for mode in low:
        assert summary[f"precision_speedup/{mode}/tiny/train/ep"] == ratios[(mode, "train", "ep")]["over_fp32"]
    assert {s["path"] for s in report["speedups"]} == {"closed"}  # closed over autograd at the run's precision


def test_bench_rows_run_exactly_T_and_K_steps_whatever_eps_default():
    """The rows' FLOPs count T and K steps, and closed and autograd must run the same ones: EP's default settles
    (`tol`), so the bench pins `tol=None` (it once timed settling rows labelled 60/30)."""
    st, _ = read_settings(bench_cfg())
    net, x, y = build(SHAPES["tiny"], st)
    for path in ("closed", "autograd"):
        est = estimator("ep", 7, 3, path, st)
        assert est.tol is None and est.compute_gradients(net, x, y).free.steps == 7


def test_bench_builds_the_runs_optimizer_with_one_small_learning_rate():
    st, _ = read_settings(bench_cfg("optimizer=sgd", "optimizer.lrs=[0.1,0.1,0.1]"))
    assert st.optimizer["_target_"] == "torch.optim.SGD" and st.optimizer["momentum"] == 0.9
    assert st.optimizer["lrs"] is None and st.optimizer["lr"] == LR
    net, _, _ = build(SHAPES["tiny"], st)  # other synapses than the run's model: one lr for all
    opt = build_optimizer(st.optimizer, net)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == len(net.synapses)
    assert all(group["lr"] == LR for group in opt.param_groups)
    json.dumps(st.optimizer)  # the memory probe's subprocess gets it as JSON


def test_run_bench_rejects_unknown_shape_and_precision(tmp_path):
    with pytest.raises(SeqepError, match="bench.shapes"):
        run_bench(bench_cfg("bench.shapes=[mnist]"), tmp_path)
    with pytest.raises(SeqepError, match=r"^precision='fp8' is not allowed; choose one of: "
                                         r"fp32, bf16-mixed, bf16-delta, tf32$"):
        run_bench(bench_cfg("precision=fp8"), tmp_path)
    with pytest.raises(SeqepError, match="bench.precision_shapes: unknown"):
        run_bench(bench_cfg("bench.precision_shapes=[mnist]"), tmp_path)


def test_step_flops_equals_a_hand_count_and_torch_counter():
    net = small_net("nli")  # L=3, d=5, fc [8, 7, 3], four blocks
    B, L, d = 2, 3, 5
    dense = 2 * 2 * (4 * L * d * 8 + 8 * 7 + 7 * 3)  # both directions of Linear(60, 8), (8, 7), (7, 3)
    attention = 4 * 2 * 2 * L * L * d  # per block: scores g_P X_Pᵀ and retrieval A X_P
    assert step_flops(net, B) == B * (dense + attention) == 2 * (2228 + 720)
    x, _ = small_input(net, B=B)
    states = [torch.rand_like(s) for s in net.init_states(B)]
    drive, keys = net.input_drive(x), net.keys(x)
    with FlopCounterMode(display=False) as counter:
        net.step(x, states, drive=drive, keys=keys)
    assert counter.get_total_flops() == step_flops(net, B)


def test_train_flops_counts_the_phases():
    net = small_net("sentiment")
    per_step = step_flops(net, 4)
    ep, bptt = train_flops(net, "ep", 4, 10, 3), train_flops(net, "bptt", 4, 10, 3)
    assert ep > per_step * (10 + 2 * 3) and bptt > per_step * (10 + 2 * 3)
    assert train_flops(net, "ep", 4, 11, 3) - ep == per_step


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.2, "per-sample"])
def test_fast_path_equals_autograd_of_phi(kind, mask_padding, beta):
    net = small_net(kind, mask_padding=mask_padding)
    x, y = small_input(net)
    x[:, -1] = 0.0  # a padding token
    target = one_hot(y, net.n_classes, x.dtype)
    if beta == "per-sample":
        beta = torch.linspace(-0.5, 0.5, x.shape[0], dtype=x.dtype)
    start = relax(net, x, net.init_states(5), 3).states
    kept = [s.clone() for s in start]
    with torch.no_grad():
        fast = relax(net, x, start, 12, beta, target, field_mode="closed", record=True)
    auto = relax(net, x, start, 12, beta, target, field_mode="autograd", record=True)
    for a, b in zip(fast.states, auto.states):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for fast_t, auto_t in zip(fast.trajectory, auto.trajectory):  # recorded states are copies, not buffers
        for a, b in zip(fast_t, auto_t):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(start, kept):  # the start states are never written
        assert torch.equal(a, b)


def test_closed_form_phase_alternates_two_buffers():
    net = small_net("nli")
    x, _ = small_input(net)
    with torch.no_grad():
        phase = ClosedFormPhase(net, x)
        s1 = phase(net.init_states(5))
        s2 = phase(s1)
        s3 = phase(s2)
    assert s3[0].data_ptr() == s1[0].data_ptr() != s2[0].data_ptr()


@pytest.mark.parametrize("kind", ["sentiment", "nli"])
def test_closed_form_parameter_gradients_equal_autograd(kind):
    net = small_net(kind)
    x, y = small_input(net)
    a, b = ([torch.rand_like(s) for s in net.init_states(5)] for _ in range(2))
    closed = net.phi_grad_difference(x, a, b)
    auto = torch.autograd.grad(net.phi(x, a).sum() - net.phi(x, b).sum(), list(net.parameters()))
    assert len(closed) == len(auto)
    for c, g in zip(closed, auto):
        torch.testing.assert_close(c, g, rtol=1e-10, atol=1e-12)
    grads = {}
    for mode in ("closed", "autograd"):
        # fixed steps: with `tol` the closed path settles the ±β phases as pairs, autograd (one after the other) not
        EP(8, 4, [0.0, 0.1], field_mode=mode, tol=None).compute_gradients(net, x, y)
        grads[mode] = [p.grad.clone() for p in net.parameters()]
    for c, g in zip(*grads.values()):
        torch.testing.assert_close(c, g, rtol=1e-9, atol=1e-12)


def test_ep_gradient_from_state_differences_keeps_float32_digits():
    """The projection gradient is a small difference of large sums; formed from s⁺ − s⁻ it keeps more float32
    digits than autograd of Φ(s⁺) − Φ(s⁻) (SPEC.md §8, pitfall 4). Same float32 states for both; the reference
    is float64 arithmetic on those states."""
    net = small_net("nli", seq_len=12, embed_dim=32, fc=[16, 3])
    x, y = small_input(net, B=8)
    out = EP(30, 15, [0.0, 0.01]).compute_gradients(net, x, y)
    plus, minus = ([s.float() for s in out.phases[k].states] for k in ("plus", "minus"))
    net32, x32 = copy.deepcopy(net).float(), x.float()
    truth = EP.phi_difference_grads(copy.deepcopy(net32).double(), x32.double(), [s.double() for s in plus],
                                    [s.double() for s in minus], 50.0)[0]
    errors = {}
    for closed in (True, False):
        g = EP.phi_difference_grads(net32, x32, plus, minus, 50.0, closed)[0].double()
        errors[closed] = ((g - truth).norm() / truth.norm()).item()
    assert errors[True] < 1e-5 and errors[False] > 100 * errors[True], errors


def test_peak_memory_sees_a_large_allocation():
    memory = PeakMemory(torch.device("cpu"))
    memory.reset()
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    peak = memory.peak_mb()
    del block
    assert peak > 0
    if memory.method.startswith("VmHWM"):
        assert peak - memory.reset() > 50


def test_paper_shapes_are_the_issue_shapes():
    assert (SHAPES["snli"].seq_len, SHAPES["snli"].fc, SHAPES["snli"].T, SHAPES["snli"].K) == (25, (400, 3), 60, 30)
    assert (SHAPES["imdb"].seq_len, SHAPES["imdb"].fc, SHAPES["imdb"].batch) == (600, (1000, 40, 2), 8)
    assert SHAPES["default"].fc == (128, 2) and SHAPES["default"].batch == 64


def test_time_to_accuracy_runs_every_variant_and_seed_and_ranks_them(tmp_path):
    from conftest import TINY

    cfg = bench_cfg("bench.shapes=[]", "bench.memory_T=[]", "bench.workers=[]", *TINY, "algorithm.T=6",
                    "algorithm.K=3", "bench.tta_target=0.0", "bench.tta_variants=[autograd,closed,settle]",
                    "bench.tta_seeds=[0,1]", "bench.tta_max_epochs=2")
    summary = run_bench(cfg, tmp_path)
    tta = json.loads((tmp_path / "bench.json").read_text())["time_to_accuracy"]
    assert [t["variant"] for t in tta["table"]] == ["autograd", "closed", "settle"]
    assert len(tta["runs"]) == 6 and all(r["epochs"] == 1 and r["seconds"] > 0 for r in tta["runs"])
    assert all(t["reached"] == 2 and t["median_s"] > 0 for t in tta["table"])
    assert tta["table"][0]["speedup_vs_autograd"] == 1.0 and tta["warmup_batches"] == 2
    seconds = {(r["variant"], r["seed"]): r["seconds"] for r in tta["runs"]}
    assert tta["table"][0]["seed_speedups"] == [1.0, 1.0]
    assert tta["table"][2]["seed_speedups"] == [seconds["autograd", s] / seconds["settle", s] for s in (0, 1)]
    assert summary["tta/settle/median_seed_speedup"] == pytest.approx(sum(tta["table"][2]["seed_speedups"]) / 2)
    assert summary["tta/closed/speedup_vs_autograd"] == tta["table"][1]["speedup_vs_autograd"] > 0
    with pytest.raises(SeqepError, match="bench.tta_variants: unknown 'fast'"):
        run_bench(bench_cfg("bench.shapes=[]", "bench.memory_T=[]", "bench.workers=[]", *TINY,
                            "bench.tta_target=0.5", "bench.tta_variants=[fast]"), tmp_path)


def test_the_warm_up_before_timing_changes_no_run():
    from seqep.tasks.bench import tta

    from conftest import TINY

    cfg = bench_cfg(*TINY, "algorithm.T=6", "algorithm.K=3")
    names = ["autograd", "settle+mixed"]
    curves = lambda: [[c["val_acc"] for c in r["curve"]] for r in tta.time_to_accuracy(cfg, names, 1, 2.0, 2)]
    cold = curves()  # target 2.0: never reached, so both run their 2 epochs
    tta.warm_up(cfg, names, 1)
    assert curves() == cold and all(len(c) == 2 for c in cold)


def test_variants_taking_their_batches_in_turn_train_as_runs_of_their_own(tmp_path):
    from seqep.tasks.bench import tta
    from seqep.training.tracking import NullTracker

    from conftest import TINY

    cfg = bench_cfg(*TINY, "algorithm.T=6", "algorithm.K=3")
    names = ["autograd", "settle", "settle+mixed"]
    timed = {r["variant"]: r for r in tta.time_to_accuracy(cfg, names, 1, 2.0, 2)}  # never reached: 2 epochs each
    for name in names:
        alone, curve = tta.variant_trainer(cfg, name, 1, str(tmp_path)), []
        for epoch in (1, 2):
            alone.train_epoch(epoch, NullTracker(), "none")
            curve.append(alone.evaluate("val")["val/acc"])
            alone.end_epoch_schedule()
        assert [c["val_acc"] for c in timed[name]["curve"]] == curve, name
        seconds = [c["seconds"] for c in timed[name]["curve"]]
        assert 0 < seconds[0] < seconds[1] and timed[name]["seconds"] is None, seconds


def test_paths_agree_leaves_out_tensors_the_nudge_has_not_reached():
    # three synchronous nudged steps reach back only to the first dense layer (as at the IMDB shape's K=2, the
    # last two layers): the four projections' gradients are exactly 0 on the closed path and float64 rounding on
    # the autograd path, a relative difference of 1.0 that said nothing yet was the "worst single tensor" of an
    # H200 bench
    from seqep.tasks.bench.cases import Settings, check_paths_agree
    from seqep.tasks.bench.shapes import Shape

    st = Settings(device=torch.device("cpu"), dtype=torch.float32, precision="fp32", repeats=1, betas=(0.0, 0.02),
                  tol=None, seed=0, optimizer={})
    net, x, y = build(Shape("nli", 3, 8, (6, 5, 3), T=6, K=3, batch=4), st)
    near = check_paths_agree(net, x, y, 6, 3, st)
    assert near["ok"] and near["zero_grad_tensors"] == 4 and near["worst_tensor_rel_grad_diff"] < 1e-9
    deep = check_paths_agree(net, x, y, 6, 6, st)  # six steps reach every layer
    assert deep["ok"] and deep["zero_grad_tensors"] == 0 and deep["worst_tensor_rel_grad_diff"] < 1e-9
