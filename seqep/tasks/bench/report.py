"""The report: the memory-against-T figure, the hardware, the speed-ups of the fast paths, the printed tables."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch


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
    """samples/s of each fast path (closed, compiled) over the autograd path's, per shape and measurement, at the
    same precision (the run's: only it has autograd rows)."""
    out, index = [], {(r["shape"], r["phase"], r["algorithm"], r["path"], r["precision"]): r for r in rows}
    for (shape, phase, algorithm, path, precision), r in index.items():
        slow = index.get((shape, phase, algorithm, "autograd", precision))
        if path != "autograd" and slow is not None:
            out.append({"shape": shape, "phase": phase, "algorithm": algorithm, "path": path,
                        "speedup": r["samples_per_s"] / slow["samples_per_s"]})
    return out


def precision_speedups(rows: list[dict]) -> list[dict[str, Any]]:
    """samples/s of the closed path in each precision other than fp32 over the closed path in fp32
    (`over_fp32`) and over the autograd path in fp32, the old code's way (`over_autograd_fp32`), per shape and
    measurement."""
    out, index = [], {(r["shape"], r["phase"], r["algorithm"], r["path"], r["precision"]): r for r in rows}
    for (shape, phase, algorithm, path, precision), r in index.items():
        base = index.get((shape, phase, algorithm, "closed", "fp32"))
        if path != "closed" or precision == "fp32" or base is None:
            continue
        slow = index.get((shape, phase, algorithm, "autograd", "fp32"))
        out.append({"shape": shape, "phase": phase, "algorithm": algorithm, "precision": precision,
                    "over_fp32": r["samples_per_s"] / base["samples_per_s"],
                    "over_autograd_fp32": None if slow is None else r["samples_per_s"] / slow["samples_per_s"]})
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
    table = Table("shape", "phase", "algorithm", "path", "precision", "B", "T/K", "s", "samples/s", "GFLOP/s",
                  "% ceil", "peak MB", "step MB", "full T/K s")
    for r in report["rows"]:
        steps = f"{r['T']}" if r["K"] is None else f"{r['T']}/{r['K']}"
        full = "" if r["projected_full_s"] is None else f"{r['projected_full_s']:.2f} (proj.)"
        table.add_row(r["shape"], r["phase"], r["algorithm"], r["path"], r["precision"], str(r["batch"]), steps,
                      f"{r['seconds']:.3f}", f"{r['samples_per_s']:.1f}", f"{r['gflops_per_s']:.3g}",
                      f"{r['pct_of_ceiling']:.3g}", f"{r['peak_mb']:.0f}", f"{r['step_mb']:.0f}", full)
    if report["rows"]:  # bench.shapes=[]: only the data-parallel and memory parts
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
    for s in report.get("precision_speedups", []):
        old = s["over_autograd_fp32"]
        vs_old = "" if old is None else f", {old:.2f}x the autograd path in fp32"
        console.print(f"precision {s['precision']}/fp32 (closed path) {s['shape']:8s} {s['phase']:5s} "
                      f"{s['algorithm']:8s} {s['over_fp32']:.2f}x{vs_old}")
    for name, shape in report["shapes"].items():
        eq = shape["equivalence"]
        console.print(f"paths agree at {name} in float64: {'yes' if eq['ok'] else 'NO'} (max |Δstate| "
                      f"{eq['max_abs_state_diff']:.1e}, rel Δgrad {eq['rel_grad_diff']:.1e}; tolerance "
                      f"{eq['tolerance']:g}; worst single tensor {eq['worst_tensor_rel_grad_diff']:.1e}"
                      + (f", {eq['zero_grad_tensors']} tensor(s) with ~0 gradient on both paths left out"
                         if eq.get("zero_grad_tensors") else "") + ")")
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
    if report.get("time_to_accuracy"):
        tta = report["time_to_accuracy"]
        table = Table("variant", "overrides", "reached", "median s", "median epochs", "vs autograd",
                      "seed by seed", title=f"time to validation accuracy {tta['target']:g} (seeds {tta['seeds']}, "
                                            f"at most {tta['max_epochs']} epochs)")
        for t in tta["table"]:
            table.add_row(t["variant"], " ".join(f"{k}={v}" for k, v in t["overrides"].items()) or "(the run's)",
                          f"{t['reached']}/{t['runs']}", "–" if t["median_s"] is None else f"{t['median_s']:.1f}",
                          "–" if t["median_epochs"] is None else f"{t['median_epochs']:g}",
                          "–" if t["speedup_vs_autograd"] is None else f"{t['speedup_vs_autograd']:.2f}x",
                          " ".join("–" if r is None else f"{r:.2f}x" for r in t.get("seed_speedups", [])))
        console.print(table)
    if report.get("data_parallel"):
        par = Table("shape", "workers", "threads each", "s / step", "samples/s", "vs 1 worker",
                    title="symmetric EP training step, data-parallel (global batch split across workers)")
        for r in report["data_parallel"]:
            par.add_row(r["shape"], str(r["workers"]), str(r["threads"]), f"{r['seconds']:.3f}",
                        f"{r['samples_per_s']:.1f}", f"{r['speedup_vs_1']:.2f}x" if r["speedup_vs_1"] else "–")
        console.print(par)
    if report["memory_vs_T"]:
        mem = Table("algorithm", "T", "peak MB", "step MB")
        for r in report["memory_vs_T"]:
            mem.add_row(r["algorithm"], str(r["T"]), f"{r['peak_mb']:.0f}", f"{r['step_mb']:.0f}")
        console.print(mem)
        console.print(f"peak memory growth over T: EP {100 * report['memory_growth']['ep']:.1f} %, "
                      f"BPTT {100 * report['memory_growth']['bptt']:.1f} %")
