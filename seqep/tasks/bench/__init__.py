"""`task=bench`: throughput, achieved GFLOP/s and peak memory of relaxation and training steps (issue 6).

For every shape (SNLI, IMDB, the default model; `bench.shapes`) and both field paths — `closed` (closed-form
fields, input drive hoisted, ±β phases as one 2B batch, no per-step allocation) and `autograd` (fields by
autograd of Φ rebuilt every step, the old code's way) — it times
  * the free phase (`T` steps from zero states, what EP and BPTT both predict with), and
  * a full training step: gradients (EP symmetric, or BPTT over the last K steps as in the paper) + a step of the
    run's optimizer (`optimizer=`, built by `seqep.training.builders.build_optimizer`, one learning rate `LR` for
    every synapse),
and reports samples/s, the model FLOPs of SPEC.md §7 per second against a matmul ceiling measured in the same
run, and peak memory. Every row runs at the top-level `precision` (`seqep.precision`); at the shapes of
`bench.precision_shapes` the closed path's free phase and symmetric EP step are also timed in every other
precision the device runs (bf16-mixed where bfloat16 is fast, tf32 on CUDA), so the ratio shows. The paths
must agree (free states and EP gradients, checked on every shape). Then the data-parallel rows (1, 2, ...
workers at the SNLI shape), and peak memory of one training step against `T` in fresh processes (EP flat, full
BPTT growing).

Memory on CPU is the resident set: the kernel's high-water mark (`VmHWM`), reset before each measurement through
`/proc/self/clear_refs` after `malloc_trim`, so a row's peak is its own; where that is not available the process
high-water mark from `getrusage` (monotone: a row then shows the largest peak so far). On CUDA it is
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.

    shapes.py    the shapes, the old code's reference numbers, the two paths, the FLOP model
    measure.py   timing (`measure`), `PeakMemory`, the matmul ceiling
    cases.py     `Settings`; the model, estimators and training step of a shape; the rows of one shape
    probe.py     peak memory against T, one fresh process per point (`python -m seqep.tasks.bench.probe`)
    parallel.py  samples/s of a data-parallel EP training step with 1, 2, ... workers (`trainer.devices`)
    tta.py       time to a validation accuracy on the run's data, per way of running EP (bench.tta_target)
    report.py    the memory figure, hardware, speed-ups, the printed tables
    __init__.py  `read_settings` and `run_bench` (the task)
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from seqep.errors import SeqepError
from seqep.precision import PRECISIONS, check_precision, supported
from seqep.tasks.bench.cases import EP_BETAS, Settings, bench_old_code_batch, bench_shape
from seqep.tasks.bench.measure import PeakMemory, matmul_ceiling, measure
from seqep.tasks.bench.parallel import bench_data_parallel, worker_counts
from seqep.tasks.bench.report import hardware, plot_memory, precision_speedups, print_report, speedups
from seqep.tasks.bench.shapes import OLD_CODE, SHAPES, Shape, drive_flops, step_flops, train_flops
from seqep.tasks.bench.tta import VARIANTS, bench_time_to_accuracy
from seqep.utils import resolve_device, resolve_dtype

__all__ = ["LR", "SHAPES", "PeakMemory", "Settings", "Shape", "drive_flops",
           "matmul_ceiling", "measure", "read_settings", "run_bench", "step_flops", "train_flops"]

LR = 1e-5  # every synapse's learning rate in the bench: a small step, so repeats do not blow the weights up


def optimizer_node(cfg: DictConfig) -> dict[str, Any]:
    """The run's optimizer node as a plain dict, with `lr=LR` for every synapse (`lrs: null`: the bench shapes
    have other synapse counts than the run's model)."""
    return {**OmegaConf.to_container(cfg.optimizer, resolve=True), "lrs": None, "lr": LR}


def read_settings(cfg: DictConfig) -> tuple[Settings, dict[str, Any]]:
    """The measurement settings and the task's other options from the composed config (`bench.*`: every key is
    there, typed and defaulted by `seqep.config.BenchConfig`)."""
    bench = cfg.bench
    device = resolve_device(str(cfg.device))
    try:
        precision = check_precision(str(cfg.precision))
    except ValueError as err:
        raise SeqepError(str(err)) from None
    dtype = resolve_dtype(cfg.dtype)
    options = {"shapes": list(bench.shapes), "memory_shape": bench.memory_shape,
               "memory_T": [int(t) for t in bench.memory_T], "old_code_batches": bool(bench.old_code_batches),
               "ceiling_size": int(bench.ceiling_size if bench.ceiling_size is not None
                                   else 2048 if device.type == "cpu" else 8192),
               "workers": worker_counts(bench.workers, device), "parallel_shape": bench.parallel_shape}
    unknown = [n for n in [*options["shapes"], options["memory_shape"], options["parallel_shape"],
                           *bench.precision_shapes] if n not in SHAPES]
    if unknown:
        raise SeqepError(f"bench.shapes / bench.memory_shape / bench.parallel_shape / bench.precision_shapes: unknown "
                         f"{unknown}; choose from {', '.join(SHAPES)}")
    others = tuple(p for p in PRECISIONS if p != precision and supported(p, device) and dtype == torch.float32)
    st = Settings(device=device, dtype=dtype, precision=precision, repeats=int(bench.repeats),
                  betas=tuple(OmegaConf.select(cfg, "algorithm.betas", default=EP_BETAS)), tol=bench.tol,
                  seed=int(cfg.seed), optimizer=optimizer_node(cfg), compile=bool(bench.compile),
                  other_precisions=others, precision_shapes=tuple(bench.precision_shapes))
    return st, options


def run_bench(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Any]:
    """Measure, print the tables, write `bench.json` (and `plots/bench_memory.png`); returns the key numbers.

    Config keys (`seqep.config.BenchConfig`): bench.shapes, bench.repeats, bench.memory_T, bench.memory_shape,
    bench.tol (null: no early-stop measurement), bench.old_code_batches, bench.precision_shapes, bench.compile,
    bench.ceiling_size (null: 2048 on CPU, 8192 on GPU), bench.workers and bench.parallel_shape (data-parallel
    rows, `parallel.py`), bench.tta_target, tta_variants, tta_seeds, tta_max_epochs (time to accuracy, `tta.py`);
    the training step uses `optimizer`, every row `precision` (fp32 | bf16-mixed | bf16-delta | tf32).
    """
    # imported here, not above: `python -m seqep.tasks.bench.probe` imports this package first, and would warn
    # if the package had already imported the module it is about to run
    from seqep.tasks.bench.probe import growth, memory_vs_T

    run_dir = Path(run_dir)
    st, opt = read_settings(cfg)
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
    report["precision_speedups"] = precision_speedups(report["rows"])
    report["old_code"] = [bench_old_code_batch(n, st, memory, ceiling) for n in opt["shapes"]
                          if n in OLD_CODE and opt["old_code_batches"]]
    if opt["workers"]:
        report["data_parallel"] = bench_data_parallel(opt["parallel_shape"], opt["workers"], st)
    if cfg.bench.tta_target is not None:
        variants = list(cfg.bench.tta_variants or VARIANTS)
        report["time_to_accuracy"] = bench_time_to_accuracy(
            cfg, float(cfg.bench.tta_target), variants, [int(s) for s in cfg.bench.tta_seeds],
            int(cfg.bench.tta_max_epochs))
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
    for s in report["precision_speedups"]:
        summary[f"precision_speedup/{s['precision']}/{s['shape']}/{s['phase']}/{s['algorithm']}"] = s["over_fp32"]
    for a, g in report.get("memory_growth", {}).items():
        summary[f"memory_growth/{a}"] = g
    for t in report.get("time_to_accuracy", {}).get("table", []):
        summary[f"tta/{t['variant']}/median_s"] = t["median_s"]
        summary[f"tta/{t['variant']}/speedup_vs_autograd"] = t["speedup_vs_autograd"]
        seeds = [r for r in t["seed_speedups"] if r is not None]
        summary[f"tta/{t['variant']}/median_seed_speedup"] = statistics.median(seeds) if seeds else None
    for r in report.get("data_parallel", []):
        summary[f"data_parallel/{r['shape']}/{r['workers']}_workers/samples_per_s"] = r["samples_per_s"]
    return summary
