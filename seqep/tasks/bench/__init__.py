"""`task=bench`: throughput, achieved GFLOP/s and peak memory of relaxation and training steps (issue 6).

For every shape (SNLI, IMDB, the default model; `bench.shapes`) and both field paths — `closed` (closed-form
fields, input drive hoisted, ±β phases as one 2B batch, no per-step allocation) and `autograd` (fields by
autograd of Φ rebuilt every step, the old code's way) — it times
  * the free phase (`T` steps from zero states, what EP and BPTT both predict with), and
  * a full training step: gradients (EP symmetric, or BPTT over the last K steps as in the paper) + Adam step,
and reports samples/s, the model FLOPs of SPEC.md §7 per second against a matmul ceiling measured in the same
run, and peak memory. The paths must agree (free states and EP gradients, checked on every shape). Then peak
memory of one training step against `T` in fresh processes (EP flat, full BPTT growing).

Memory on CPU is the resident set: the kernel's high-water mark (`VmHWM`), reset before each measurement through
`/proc/self/clear_refs` after `malloc_trim`, so a row's peak is its own; where that is not available the process
high-water mark from `getrusage` (monotone: a row then shows the largest peak so far). On CUDA it is
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from seqep.errors import SeqepError
from seqep.estimators import BPTT, EP, Estimator
from seqep.network import HopfieldEPNet
from seqep.relax import relax


@dataclass(frozen=True)
class Shape:
    """A model and batch to time. `run_T`/`run_K`: fewer steps actually run (per-step numbers stay exact; the
    full training step at `T`/`K` is then projected with the FLOP model)."""

    kind: str
    seq_len: int
    embed_dim: int
    fc: tuple[int, ...]
    T: int
    K: int
    batch: int
    run_T: int | None = None
    run_K: int | None = None

    @property
    def steps(self) -> tuple[int, int]:
        return self.run_T or self.T, self.run_K or self.K


SHAPES = {
    "snli": Shape("nli", 25, 300, (400, 3), T=60, K=30, batch=32),
    "imdb": Shape("sentiment", 600, 300, (1000, 40, 2), T=50, K=25, batch=8, run_T=4, run_K=2),
    "default": Shape("sentiment", 48, 50, (128, 2), T=20, K=8, batch=64),
    "tiny": Shape("nli", 3, 8, (6, 3), T=6, K=3, batch=4),  # tests
}
# SPEC.md §6-7: the old code's seconds per relaxation step at its batch size, on 2 cores whose fp32 matmul
# ceiling was about 115 GFLOP/s; `steps` is how many we time here
OLD_CODE = {"snli": {"batch": 200, "s_per_step": 0.195, "steps": 10},
            "imdb": {"batch": 100, "s_per_step": 2.2, "steps": 3}}
OLD_CODE_CEILING = 115.0
PATHS = ("closed", "autograd")


# ------------------------------------------------------------------------------------------------ FLOP model
def step_flops(net: HopfieldEPNet, batch: int) -> int:
    """Model FLOPs of one synchronous relaxation step (SPEC.md §7): both directions of every dense coupling
    (`2·in·out` each) and the two attention products of every Hopfield block (`g_P X_Pᵀ` and `A X_P`,
    `2·L²·d` each). Element-wise work, softmax and the (hoisted) input drive are not counted."""
    dense = sum(2 * 2 * s.in_features * s.out_features for s in net.dense)
    attention = net.n_proj * 2 * 2 * net.seq_len**2 * net.embed_dim
    return batch * (dense + attention)


def drive_flops(net: HopfieldEPNet, batch: int) -> int:
    """`x_P W_Pᵀ` for every block: once per phase on the closed path."""
    return batch * net.n_proj * 2 * net.seq_len * net.embed_dim**2


def train_flops(net: HopfieldEPNet, algorithm: str, batch: int, T: int, K: int) -> int:
    """Model FLOPs of one training step. EP (symmetric): the drive, T steps at B, K steps at 2B, and
    ∂Φ/∂θ on the 2B stack (`s_{k+1} s_kᵀ`, `Σ_l s_P,l x_P,lᵀ`: one product per weight and sample). BPTT (last
    K): the drive, T forward steps and a backward pass over K of them counted as twice their forward cost."""
    grad_outer = sum(2 * s.in_features * s.out_features for s in net.dense) * batch + drive_flops(net, batch)
    if algorithm == "ep":
        return drive_flops(net, batch) + step_flops(net, batch) * (T + 2 * K) + 2 * grad_outer
    return 2 * drive_flops(net, batch) + step_flops(net, batch) * (T + 2 * K)


# ------------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb(field: str) -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


class PeakMemory:
    """Peak memory of whatever runs between `reset()` and `peak_mb()` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif self._reset_rss():
            self.method = "VmHWM (reset per measurement)"
        else:
            self.method = "getrusage ru_maxrss (process high-water mark)"

    @staticmethod
    def _reset_rss() -> bool:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the reset starts from live memory
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := VmRSS
            return _rss_mb("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> float:
        """Reset the peak; returns the memory in use now (MB)."""
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        self._reset_rss()
        return _rss_mb("VmRSS") or 0.0

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            _sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _rss_mb("VmHWM") if self.method.startswith("VmHWM") else None
        return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device,
            memory: PeakMemory) -> dict[str, dict[str, float]]:
    """Time each function `repeats` times, interleaved (so a busy machine slows all alike), after one warm-up
    call each: median and best seconds; peak memory during its first timed call, and what that call added."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    out: dict[str, dict[str, float]] = {}
    for fn in fns.values():
        fn()
    for i in range(repeats):
        for name, fn in fns.items():
            start_mb = memory.reset() if i == 0 else 0.0
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            if i == 0:
                peak = memory.peak_mb()
                out[name] = {"peak_mb": peak, "step_mb": max(0.0, peak - start_mb)}
    for name, ts in times.items():
        out[name].update(seconds=statistics.median(ts), seconds_best=min(ts))
    return out


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 3) -> float:
    """Best GFLOP/s of an n×n matmul: the ceiling the achieved rates are compared with."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------------------ set-up
@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    precision: str
    repeats: int
    betas: tuple[float, float]
    tol: float | None
    seed: int
    compile: bool = False


def build(shape: Shape, st: Settings) -> tuple[HopfieldEPNet, torch.Tensor, torch.Tensor]:
    """The model at PyTorch's default init, and a seeded batch of word-vector-like tokens and labels."""
    torch.manual_seed(st.seed)
    net = HopfieldEPNet(shape.kind, shape.seq_len, shape.embed_dim, list(shape.fc)).to(st.device, st.dtype)
    g = torch.Generator().manual_seed(st.seed)
    n_seg = 2 if shape.kind == "nli" else 1
    x = 0.3 * torch.randn(shape.batch, n_seg * shape.seq_len, shape.embed_dim, generator=g)
    y = torch.randint(0, shape.fc[-1], (shape.batch,), generator=g)
    return net, x.to(st.device, st.dtype), y.to(st.device)


def estimator(algorithm: str, T: int, K: int, path: str, st: Settings, truncate: str = "last_k") -> Estimator:
    if algorithm == "ep":
        return EP(T, K, betas=st.betas, variant="symmetric", field_mode=path)
    return BPTT(T, K, truncate=truncate, field_mode=path)


def adam(net: HopfieldEPNet) -> torch.optim.Optimizer:
    """Adam as in training; the fused kernel where this torch has it (one pass over the parameters)."""
    try:
        return torch.optim.Adam(net.parameters(), lr=1e-5, eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(net.parameters(), lr=1e-5, eps=1e-8)


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
    """Free-phase states and symmetric-EP gradients of the closed and autograd paths, same weights and batch.

    Gradients are compared over all parameters at once: the projection gradients are small differences of
    large sums (SPEC.md §8, pitfall 4), so per tensor both float32 paths sit ~2 % from a float64 run at the
    SNLI shape and from each other; the per-tensor worst case is reported, not asserted."""
    with torch.no_grad():
        states = {p: relax(net, x, net.init_states(x.shape[0]), T, field_mode=p).states for p in PATHS}
        state_diff = max((a - b).abs().max().item() for a, b in zip(*states.values()))
    grads = {}
    for p in PATHS:
        estimator("ep", T, K, p, st).compute_gradients(net, x, y)
        grads[p] = [q.grad.clone() for q in net.parameters()]
    closed, auto = (torch.cat([g.flatten() for g in grads[p]]) for p in PATHS)
    grad_diff = ((closed - auto).norm() / auto.norm()).item()
    worst = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(*grads.values()))
    tol = {torch.float64: 1e-9, torch.float32: 1e-3}.get(st.dtype, 5e-2)
    return {"max_abs_state_diff": state_diff, "rel_grad_diff": grad_diff, "worst_tensor_rel_grad_diff": worst,
            "tolerance": tol, "ok": state_diff <= tol and grad_diff <= tol}


# ------------------------------------------------------------------------------------------------ one shape
def bench_shape(name: str, shape: Shape, st: Settings, ceiling: float, memory: PeakMemory) -> dict[str, Any]:
    net, x, y = build(shape, st)
    B, (T, K) = shape.batch, shape.steps
    check = check_paths_agree(net, x, y, T, K, st)
    if not check["ok"] and st.dtype in (torch.float32, torch.float64):
        raise SeqepError(f"bench: the closed and autograd paths disagree at shape {name}: {check}")
    opt = adam(net)
    rows = []

    def row(phase: str, algorithm: str, path: str, flops: int, full_flops: int, res: dict) -> None:
        print(f"bench: {name:8s} {phase:5s} {algorithm:8s} {path:9s} {B / res['seconds']:9.1f} samples/s "
              f"{flops / 1e9 / res['seconds']:6.1f} GFLOP/s", flush=True)
        rows.append({"shape": name, "phase": phase, "algorithm": algorithm, "path": path, "batch": B, "T": T,
                     "K": K if phase == "train" else None, **res, "samples_per_s": B / res["seconds"],
                     "gflop": flops / 1e9, "gflops_per_s": flops / 1e9 / res["seconds"],
                     "pct_of_ceiling": 100 * flops / 1e9 / res["seconds"] / ceiling,
                     "projected_full_s": res["seconds"] * full_flops / flops if full_flops != flops else None})

    free = drive_flops(net, B) + step_flops(net, B) * T
    free_full = drive_flops(net, B) + step_flops(net, B) * shape.T
    predict = {path: partial(estimator("ep", T, K, path, st).predict, net, x) for path in PATHS}
    if st.compile:
        predict["compiled"] = compiled_free_phase(net, x, T)
    for path, res in measure(predict, st.repeats, st.device, memory).items():
        row("free", "ep|bptt", path, free, free_full, {**res, "s_per_step": res["seconds"] / T})
    for algorithm in ("ep", "bptt"):
        steps = {path: partial(train_step, estimator(algorithm, T, K, path, st), net, x, y, opt) for path in PATHS}
        for path, res in measure(steps, st.repeats, st.device, memory).items():
            row("train", algorithm, path, train_flops(net, algorithm, B, T, K),
                train_flops(net, algorithm, B, shape.T, shape.K), res)
    out: dict[str, Any] = {"shape": asdict(shape), "equivalence": check, "rows": rows}
    if st.tol is not None and shape.run_T is None:
        est = EP(shape.T, shape.K, st.betas, tol=st.tol)
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


# ------------------------------------------------------------------------------------------------ memory vs T
def memory_probe(shape_name: str, algorithm: str, T: int, K: int, device: str, dtype: str) -> dict[str, float]:
    """Peak memory of one training step (EP symmetric, or full BPTT) in this process. Run in a fresh process
    on CPU, where the resident high-water mark is per process."""
    st = Settings(torch.device(device), getattr(torch, dtype), dtype, 1, (0.0, 0.1), None, 0)
    net, x, y = build(SHAPES[shape_name], st)
    opt = adam(net)
    memory = PeakMemory(st.device)
    before = memory.reset()
    estimator(algorithm, T, K, "closed", st, truncate="full").compute_gradients(net, x, y)
    opt.step()
    peak = memory.peak_mb()
    return {"algorithm": algorithm, "T": T, "peak_mb": peak, "step_mb": peak - before, "method": memory.method}


def probe_in_subprocess(args: list) -> dict[str, float]:
    """`memory_probe(*args)` in a fresh single-threaded Python (memory does not depend on the thread count)."""
    cmd = [sys.executable, "-m", "seqep.tasks.bench", "--memory-probe", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)
    if done.returncode != 0:
        raise SeqepError(f"bench: memory probe {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_vs_T(shape_name: str, Ts: list[int], st: Settings) -> list[dict[str, float]]:
    """Peak memory of one training step for EP and full BPTT at every T: on CPU one fresh process per point
    (as many side by side as there are cores), on CUDA in this process."""
    K, dtype = SHAPES[shape_name].K, str(st.dtype).removeprefix("torch.")
    points = [[shape_name, a, T, min(K, T), str(st.device), dtype] for a in ("ep", "bptt") for T in Ts]
    if st.device.type == "cuda":
        return [memory_probe(*args) for args in points]
    with ThreadPoolExecutor(max_workers=max(1, min(len(points), os.cpu_count() or 1))) as pool:
        return list(pool.map(probe_in_subprocess, points))


def growth(rows: list[dict], algorithm: str, key: str = "peak_mb") -> float:
    """Relative growth of `key` from the smallest to the largest T."""
    mine = sorted((r["T"], r[key]) for r in rows if r["algorithm"] == algorithm)
    return (mine[-1][1] - mine[0][1]) / mine[0][1]


def plot_memory(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows).replace({"algorithm": {"ep": "EP (symmetric)", "bptt": "BPTT (full)"}})
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "peak_mb", "peak memory of the process"),
                           (axes[1], "step_mb", "memory the training step adds")):
        sns.lineplot(df, x="T", y=key, hue="algorithm", marker="o", ax=ax)
        ax.set(title=title, xlabel="relaxation steps T", ylabel="MB")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the task
def hardware(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE).group(1)
    except (OSError, AttributeError):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def speedups(rows: list[dict]) -> list[dict[str, Any]]:
    """samples/s of each fast path (closed, compiled) over the autograd path's, per shape and measurement."""
    out, index = [], {(r["shape"], r["phase"], r["algorithm"], r["path"]): r for r in rows}
    for (shape, phase, algorithm, path), r in index.items():
        if path != "autograd" and (shape, phase, algorithm, "autograd") in index:
            slow = index[(shape, phase, algorithm, "autograd")]
            out.append({"shape": shape, "phase": phase, "algorithm": algorithm, "path": path,
                        "speedup": r["samples_per_s"] / slow["samples_per_s"]})
    return out


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # a log file: room for the whole table
        console.width = 170
    hw = report["hardware"]
    console.print(f"[bold]seqep bench[/] on {hw['cpu']} ({hw['torch_threads']} threads), torch {hw['torch']}, "
                  f"{hw['device']} {report['settings']['precision']}; matmul ceiling "
                  f"{report['ceiling_gflops']:.0f} GFLOP/s; memory: {report['memory_method']}")
    table = Table("shape", "phase", "algorithm", "path", "B", "T/K", "s", "samples/s", "GFLOP/s", "% ceil",
                  "peak MB", "step MB", "full T/K s")
    for r in report["rows"]:
        steps = f"{r['T']}" if r["K"] is None else f"{r['T']}/{r['K']}"
        full = "" if r["projected_full_s"] is None else f"{r['projected_full_s']:.2f} (proj.)"
        table.add_row(r["shape"], r["phase"], r["algorithm"], r["path"], str(r["batch"]), steps,
                      f"{r['seconds']:.3f}", f"{r['samples_per_s']:.1f}", f"{r['gflops_per_s']:.3g}",
                      f"{r['pct_of_ceiling']:.3g}", f"{r['peak_mb']:.0f}", f"{r['step_mb']:.0f}", full)
    console.print(table)
    for s in report["speedups"]:
        if (s["shape"], s["phase"], s["algorithm"], s["path"]) == ("snli", "train", "ep", "closed"):
            console.print(f"[bold]SNLI shape, symmetric EP training step: closed path {s['speedup']:.2f}x the "
                          "autograd-of-Φ path[/] (issue 6 asks for 2x; same T, K and results, checked below)")
    load = report["load_average_start"]
    if load is not None and load > report["hardware"]["torch_threads"] + 0.5:
        console.print(f"[yellow]warning: load average {load:.1f} at the start: other processes share the CPU, "
                      "timings are pessimistic and noisy[/]")
    for s in report["speedups"]:
        console.print(f"speed-up {s['path']}/autograd  {s['shape']:8s} {s['phase']:5s} {s['algorithm']:8s} "
                      f"{s['speedup']:.2f}x")
    for name, shape in report["shapes"].items():
        eq = shape["equivalence"]
        console.print(f"paths agree at {name}: {'yes' if eq['ok'] else 'NO'} (max |Δstate| "
                      f"{eq['max_abs_state_diff']:.1e}, rel Δgrad {eq['rel_grad_diff']:.1e}; tolerance "
                      f"{eq['tolerance']:g}; worst single tensor {eq['worst_tensor_rel_grad_diff']:.1e}: the small "
                      "projection gradient, which autograd of Φ(s⁺) − Φ(s⁻) loses to float32 cancellation)")
        if "early_stop" in shape:
            es = shape["early_stop"]
            console.print(f"early stop at {name}: tol {es['tol']:g} used {es['steps_used']} of {es['T']} free "
                          f"steps, {es['samples_per_s']:.1f} samples/s")
    for o in report["old_code"]:
        console.print(f"old code's batch {o['shape']} B={o['batch']}, s per free step: old code (SPEC.md §6) "
                      f"{o['old_code_s_per_step']} ({o['old_code_pct_of_ceiling']:.0f} % of its machine's ceiling), "
                      f"closed {o['closed_s_per_step']:.4f} ({o['closed_speedup_vs_old']:.1f}x, "
                      f"{o['closed_pct_of_ceiling']:.0f} %), autograd {o['autograd_s_per_step']:.4f} "
                      f"({o['autograd_speedup_vs_old']:.1f}x, {o['autograd_pct_of_ceiling']:.0f} %)")
    if report["memory_vs_T"]:
        mem = Table("algorithm", "T", "peak MB", "step MB")
        for r in report["memory_vs_T"]:
            mem.add_row(r["algorithm"], str(r["T"]), f"{r['peak_mb']:.0f}", f"{r['step_mb']:.0f}")
        console.print(mem)
        console.print(f"peak memory growth over T: EP {100 * report['memory_growth']['ep']:.1f} %, "
                      f"BPTT {100 * report['memory_growth']['bptt']:.1f} %")


def read_settings(cfg: Any) -> tuple[Settings, dict[str, Any]]:
    """The measurement settings and the task's other options from `cfg` (every `bench.*` key is optional)."""
    from seqep.utils import resolve_device, resolve_dtype

    def get(key: str, default: Any) -> Any:
        value = OmegaConf.select(cfg, f"bench.{key}", default=default)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return default if value is None else value

    device = resolve_device(str(OmegaConf.select(cfg, "device", default="auto")))
    precision = get("precision", "float32")
    if precision not in ("float32", "tf32", "bf16"):
        raise SeqepError(f"bench.precision must be float32, tf32 or bf16, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else resolve_dtype(OmegaConf.select(cfg, "dtype", default="float32"))
    options = {"shapes": list(get("shapes", ["snli", "imdb", "default"])), "memory_shape": get("memory_shape", "snli"),
               "memory_T": [int(t) for t in get("memory_T", [20, 50, 100, 200])],
               "old_code_batches": bool(get("old_code_batches", True)),
               "ceiling_size": int(get("ceiling_size", 2048 if device.type == "cpu" else 8192))}
    unknown = [n for n in [*options["shapes"], options["memory_shape"]] if n not in SHAPES]
    if unknown:
        raise SeqepError(f"bench.shapes / bench.memory_shape: unknown {unknown}; choose from {', '.join(SHAPES)}")
    st = Settings(device, dtype, precision, int(get("repeats", 3)),
                  tuple(OmegaConf.select(cfg, "algorithm.betas", default=[0.0, 0.1])),
                  OmegaConf.select(cfg, "bench.tol", default=1e-4), int(OmegaConf.select(cfg, "seed", default=0)),
                  bool(get("compile", False)))
    return st, options


def run_bench(cfg: Any, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Measure, print the tables, write `bench.json` (and `plots/bench_memory.png`); returns the key numbers.

    Config keys (all optional): bench.shapes, bench.repeats, bench.memory_T, bench.memory_shape, bench.tol
    (null: no early-stop measurement), bench.old_code_batches, bench.precision (float32 | tf32 | bf16),
    bench.compile, bench.ceiling_size (null: 2048 on CPU, 8192 on GPU).
    """
    run_dir = Path(run_dir)
    st, opt = read_settings(cfg)
    if st.precision == "tf32" and st.device.type == "cuda":  # on CPU float32 matmuls stay float32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    memory = PeakMemory(st.device)
    ceiling = matmul_ceiling(st.device, st.dtype, opt["ceiling_size"])
    report: dict[str, Any] = {"hardware": hardware(st.device), "ceiling_gflops": ceiling,
                              "settings": {**asdict(st), "device": str(st.device), "dtype": str(st.dtype)},
                              "memory_method": memory.method, "load_average_start": os.getloadavg()[0],
                              "shapes": {}, "rows": []}
    print(f"bench: matmul ceiling {ceiling:.0f} GFLOP/s; shapes {', '.join(opt['shapes'])}", flush=True)
    for name in opt["shapes"]:
        result = bench_shape(name, SHAPES[name], st, ceiling, memory)
        report["rows"] += result.pop("rows")
        report["shapes"][name] = result
    report["speedups"] = speedups(report["rows"])
    report["old_code"] = [bench_old_code_batch(n, st, memory, ceiling) for n in opt["shapes"]
                          if n in OLD_CODE and opt["old_code_batches"]]
    mem_shape = opt["memory_shape"]
    report["memory_vs_T"] = memory_vs_T(mem_shape, opt["memory_T"], st) if opt["memory_T"] else []
    if report["memory_vs_T"]:
        report["memory_growth"] = {a: growth(report["memory_vs_T"], a) for a in ("ep", "bptt")}
        title = f"one training step at the {mem_shape} shape (B={SHAPES[mem_shape].batch}), one process per point"
        report["memory_plot"] = str(plot_memory(report["memory_vs_T"], run_dir / "plots" / "bench_memory.png", title))
    report["load_average_end"] = os.getloadavg()[0]
    (run_dir / "bench.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_report(report)
    summary = {"ceiling_gflops": ceiling, "bench_json": str(run_dir / "bench.json")}
    for s in report["speedups"]:
        summary[f"speedup/{s['path']}/{s['shape']}/{s['phase']}/{s['algorithm']}"] = s["speedup"]
    for a, g in report.get("memory_growth", {}).items():
        summary[f"memory_growth/{a}"] = g
    return summary


if __name__ == "__main__" and sys.argv[1:2] == ["--memory-probe"]:
    print(json.dumps(memory_probe(*json.loads(sys.argv[2]))))
