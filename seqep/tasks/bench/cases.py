"""What is timed at one shape: the model and batch, the estimators of both field paths, a training step with the
run's optimizer, the check that the paths agree, and the rows of one shape and of the old code's batch sizes."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch

from seqep.errors import SeqepError
from seqep.estimators import BPTT, EP, Estimator
from seqep.network import HopfieldEPNet
from seqep.relax import relax
from seqep.tasks.bench.measure import PeakMemory, measure
from seqep.tasks.bench.shapes import (
    OLD_CODE,
    OLD_CODE_CEILING,
    PATHS,
    SHAPES,
    Shape,
    drive_flops,
    step_flops,
    train_flops,
)
from seqep.training.builders import build_optimizer

# the nudges of symmetric EP where the run's algorithm has none (bptt): EP's own default
EP_BETAS = tuple(inspect.signature(EP).parameters["betas"].default)
AGREE_TOL = 1e-9  # float64: largest state difference and relative gradient difference of the two paths
AGREE_BATCH = 4  # examples the two paths are compared on
# a tensor whose gradient is below this fraction of the largest tensor's on both paths is ~0 (at the IMDB shape's
# K=2 the nudge reaches only the last two layers: the others' gradients are exactly 0 on the closed path and
# float64 rounding, ~1e-13, on the autograd path), and its relative difference (1.0) says nothing
ZERO_GRAD = 1e-9


@dataclass
class Settings:
    """How to measure. `optimizer`: the optimizer's config node (a plain dict, `build_optimizer`'s input)."""

    device: torch.device
    dtype: torch.dtype
    precision: str
    repeats: int
    betas: tuple[float, float]
    tol: float | None
    seed: int
    optimizer: dict[str, Any]
    compile: bool = False
    other_precisions: tuple[str, ...] = ()  # also timed (closed path: free phase, EP step) at `precision_shapes`
    precision_shapes: tuple[str, ...] = ()


def build(shape: Shape, st: Settings) -> tuple[HopfieldEPNet, torch.Tensor, torch.Tensor]:
    """The model at PyTorch's default init, and a seeded batch of word-vector-like tokens and labels."""
    torch.manual_seed(st.seed)
    net = HopfieldEPNet(shape.kind, shape.seq_len, shape.embed_dim, list(shape.fc)).to(st.device, st.dtype)
    g = torch.Generator().manual_seed(st.seed)
    n_seg = 2 if shape.kind == "nli" else 1
    x = 0.3 * torch.randn(shape.batch, n_seg * shape.seq_len, shape.embed_dim, generator=g)
    y = torch.randint(0, shape.fc[-1], (shape.batch,), generator=g)
    return net, x.to(st.device, st.dtype), y.to(st.device)


def estimator(algorithm: str, T: int, K: int, path: str, st: Settings, truncate: str = "last_k",
              precision: str | None = None) -> Estimator:
    """Symmetric EP or BPTT on `path`, at `precision` (None: the run's, `st.precision`), with exactly T and K
    synchronous steps (`tol=None`: EP's default settles, and what the rows time and their FLOPs count is T and K
    steps; synchronous: the old code's order, whose steps cost alike on every path)."""
    est = (EP(T, K, betas=st.betas, variant="symmetric", field_mode=path, tol=None, updates="synchronous",
              adaptive_beta=False)
           if algorithm == "ep"
           else BPTT(T, K, truncate=truncate, field_mode=path))
    est.precision = st.precision if precision is None else precision
    return est


def train_step(est: Estimator, net: HopfieldEPNet, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer) -> None:
    """What a training iteration costs: the estimator fills the gradients, the optimizer steps."""
    est.compute_gradients(net, x, y)
    opt.step()


def compiled_free_phase(net: HopfieldEPNet, x: torch.Tensor, T: int) -> Callable[[], Any]:
    """The free phase with `torch.compile` of the functional closed-form step (compiled on the first call:
    the warm-up, not timed). Measured, not used by the engine: it has not been faster on CPU (docs/benchmarks.md)."""
    step = torch.compile(net.step, dynamic=False)

    @torch.no_grad()
    def free_phase() -> None:
        drive, keys = net.input_drive(x), net.keys(x)
        states = net.init_states(x.shape[0], device=x.device, dtype=x.dtype)
        for _ in range(T):
            states = step(x, states, drive=drive, keys=keys)

    return free_phase


def check_paths_agree(net: HopfieldEPNet, x: torch.Tensor, y: torch.Tensor, T: int, K: int,
                      st: Settings) -> dict[str, Any]:
    """Free-phase states and symmetric-EP gradients of the closed and autograd paths, same weights and batch, in
    float64 (on a float64 copy of the model and batch): the two paths are one algorithm, so they agree to
    `AGREE_TOL` there. Not in float32: the autograd path forms the gradient by autograd of Φ(s⁺) − Φ(s⁻), a
    small difference of large sums divided by β, whose float32 rounding (0.7 % at the SNLI shape with β=0.02,
    0.02 % with β=0.1) would say nothing about the paths (the closed path forms it from s⁺ − s⁻ and keeps its
    digits, `test_ep_gradient_from_state_differences_keeps_float32_digits`). On the first `AGREE_BATCH` examples
    (examples do not interact): at the IMDB shape the float64 copy alone is 1.4 GB, and so is each gradient.
    The worst single tensor's relative difference leaves out tensors whose gradient is ~0 on both paths
    (`ZERO_GRAD`; counted in `zero_grad_tensors`)."""
    net, x, y = copy.deepcopy(net).double(), x[:AGREE_BATCH].double(), y[:AGREE_BATCH]
    with torch.no_grad():
        states = {p: relax(net, x, net.init_states(x.shape[0]), T, field_mode=p).states for p in PATHS}
        state_diff = max((a - b).abs().max().item() for a, b in zip(*states.values()))
    grads = {}
    for p in PATHS:
        for q in net.parameters():
            q.grad = None  # each path fills fresh tensors, which `grads` keeps (no copies: IMDB's are 1.4 GB)
        estimator("ep", T, K, p, st, precision="fp32").compute_gradients(net, x, y)
        grads[p] = [q.grad for q in net.parameters()]
    pairs = list(zip(*grads.values()))
    diff, own, ref = (torch.stack(norms) for norms in zip(*[((a - b).norm(), a.norm(), b.norm()) for a, b in pairs]))
    grad_diff = (diff.square().sum() / ref.square().sum()).sqrt().item()
    live = torch.maximum(own, ref) > ZERO_GRAD * ref.max()
    worst = (diff / ref.clamp_min(1e-30))[live].max().item() if live.any() else 0.0
    return {"dtype": "float64", "max_abs_state_diff": state_diff, "rel_grad_diff": grad_diff,
            "worst_tensor_rel_grad_diff": worst, "zero_grad_tensors": int((~live).sum()), "tolerance": AGREE_TOL,
            "ok": state_diff <= AGREE_TOL and grad_diff <= AGREE_TOL}


# ------------------------------------------------------------------------------------------------ one shape
def bench_shape(name: str, shape: Shape, st: Settings, ceiling: float, memory: PeakMemory) -> dict[str, Any]:
    net, x, y = build(shape, st)
    B, (T, K) = shape.batch, shape.steps
    check = check_paths_agree(net, x, y, T, K, st)
    if not check["ok"]:
        raise SeqepError(f"bench: the closed and autograd paths disagree at shape {name}: {check}")
    opt = build_optimizer(st.optimizer, net)
    rows = []

    def row(phase: str, algorithm: str, key: tuple[str, str], flops: int, full_flops: int, res: dict) -> None:
        path, precision = key
        print(f"bench: {name:8s} {phase:5s} {algorithm:8s} {path:9s} {precision:10s} {B / res['seconds']:9.1f} "
              f"samples/s {flops / 1e9 / res['seconds']:6.1f} GFLOP/s", flush=True)
        rows.append({"shape": name, "phase": phase, "algorithm": algorithm, "path": path, "precision": precision,
                     "batch": B, "T": T,
                     "K": K if phase == "train" else None, **res, "samples_per_s": B / res["seconds"],
                     "gflop": flops / 1e9, "gflops_per_s": flops / 1e9 / res["seconds"],
                     "pct_of_ceiling": 100 * flops / 1e9 / res["seconds"] / ceiling,
                     "projected_full_s": res["seconds"] * full_flops / flops if full_flops != flops else None})

    free = drive_flops(net, B) + step_flops(net, B) * T
    free_full = drive_flops(net, B) + step_flops(net, B) * shape.T
    others = st.other_precisions if name in st.precision_shapes else ()  # closed path only, beside the run's
    predict = {(path, st.precision): partial(estimator("ep", T, K, path, st).predict, net, x) for path in PATHS}
    predict |= {("closed", p): partial(estimator("ep", T, K, "closed", st, precision=p).predict, net, x)
                for p in others}
    if st.compile:
        predict[("compiled", st.precision)] = compiled_free_phase(net, x, T)
    for key, res in measure(predict, st.repeats, st.device, memory).items():
        row("free", "ep|bptt", key, free, free_full, {**res, "s_per_step": res["seconds"] / T})
    for algorithm in ("ep", "bptt"):
        steps = {(path, st.precision): partial(train_step, estimator(algorithm, T, K, path, st), net, x, y, opt)
                 for path in PATHS}
        if algorithm == "ep":
            steps |= {("closed", p): partial(train_step, estimator("ep", T, K, "closed", st, precision=p), net, x,
                                             y, opt) for p in others}
        for key, res in measure(steps, st.repeats, st.device, memory).items():
            row("train", algorithm, key, train_flops(net, algorithm, B, T, K),
                train_flops(net, algorithm, B, shape.T, shape.K), res)
    out: dict[str, Any] = {"shape": asdict(shape), "equivalence": check, "rows": rows}
    if st.tol is not None and shape.run_T is None:
        est = EP(shape.T, shape.K, st.betas, tol=st.tol, adaptive_beta=False)
        with torch.no_grad():
            res = measure({"tol": partial(est.free_phase, net, x)}, st.repeats, st.device, memory)["tol"]
            steps = est.free_phase(net, x).steps
        out["early_stop"] = {"tol": st.tol, "T": shape.T, "steps_used": steps, "seconds": res["seconds"],
                             "samples_per_s": B / res["seconds"]}
    return out


def bench_old_code_batch(name: str, st: Settings, memory: PeakMemory, ceiling: float) -> dict[str, Any]:
    """Seconds per free-phase relaxation step at the old code's batch size (SPEC.md §6), both paths; also as a
    share of each machine's matmul ceiling, since the old code's numbers come from another machine."""
    ref = OLD_CODE[name]
    steps = ref["steps"]
    shape = replace(SHAPES[name], batch=ref["batch"], run_T=steps, run_K=1)
    net, x, _ = build(shape, st)
    flops = step_flops(net, ref["batch"])
    out = {"shape": name, "batch": ref["batch"], "steps": steps, "old_code_s_per_step": ref["s_per_step"],
           "old_code_pct_of_ceiling": 100 * flops / 1e9 / ref["s_per_step"] / OLD_CODE_CEILING}
    predict = {path: partial(estimator("ep", steps, 1, path, st).predict, net, x) for path in PATHS}
    for path, res in measure(predict, max(1, st.repeats - 1), st.device, memory).items():
        out[f"{path}_s_per_step"] = res["seconds"] / steps
        out[f"{path}_speedup_vs_old"] = ref["s_per_step"] / out[f"{path}_s_per_step"]
        out[f"{path}_pct_of_ceiling"] = 100 * flops / 1e9 / out[f"{path}_s_per_step"] / ceiling
    return out
