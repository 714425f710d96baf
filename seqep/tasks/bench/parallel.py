"""Data-parallel throughput: samples/s of a symmetric EP training step at one shape (`bench.parallel_shape`) with
1, 2, ... worker processes (`bench.workers`), the global batch split across them as `trainer.devices=N` does
(`seqep.training.distributed`): each worker relaxes its share, the gradients are all-reduced, every worker steps.

Each worker count runs in its own fresh workers (started by `distributed.launch`, 1 worker included, so every
row pays the same process set-up, which is not timed). On CPU the workers share the machine's cores
(`threads // N` torch threads each): on a small CPU, several workers are a test of the machinery, not a speed-up;
on GPUs each worker has its own device and the rows show the scaling.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from seqep.errors import SeqepError
from seqep.tasks.bench.cases import Settings, build, estimator
from seqep.tasks.bench.shapes import SHAPES
from seqep.training import distributed
from seqep.training.builders import build_optimizer


def worker_counts(setting: list[int] | None, device: torch.device) -> list[int]:
    """`bench.workers`, or by default 1 and 2 on CPU, 1 and every GPU on CUDA (one value on a one-GPU machine)."""
    if setting is not None:
        counts = [int(n) for n in setting]
        if any(n < 1 for n in counts):
            raise SeqepError(f"bench.workers={counts}: every worker count must be >= 1 ([] = skip)")
        return counts
    top = torch.cuda.device_count() if device.type == "cuda" else 2
    return sorted({1, top})


def _timed_steps(shape_name: str, st: Settings) -> dict[str, float]:
    """In every worker: this worker's share of the shape's batch, `st.repeats` timed training steps (after one
    warm-up), each ended by the all-reduce and the optimizer step. Rank 0 returns the median seconds."""
    world = distributed.current()
    device = torch.device(distributed.worker_device(str(st.device), world))
    st = replace(st, device=device)
    shape = SHAPES[shape_name]
    T, K = shape.steps
    net, x, y = build(shape, st)  # every worker: the same seeded weights and global batch
    part = world.part(shape.batch)
    x, y = x[part], y[part]
    opt = build_optimizer(st.optimizer, net)
    est = estimator("ep", T, K, "closed", st)
    params = list(net.parameters())
    times = []
    for i in range(st.repeats + 1):
        world.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        est.compute_gradients(net, x, y)
        world.average_gradients(params, len(y), shape.batch)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "seconds_best": min(times), "threads": torch.get_num_threads()}


def bench_data_parallel(shape_name: str, counts: list[int], st: Settings) -> list[dict[str, Any]]:
    """One row per worker count: seconds per step, samples/s and the speed-up over one worker."""
    shape = SHAPES[shape_name]
    T, K = shape.steps
    rows: list[dict[str, Any]] = []
    for n in counts:
        if n > shape.batch:
            raise SeqepError(f"bench.workers: {n} workers for a batch of {shape.batch} at bench.parallel_shape="
                             f"{shape_name}: every worker needs a share of the batch")
        res = distributed.launch(_timed_steps, (shape_name, st), n, str(st.device))
        row = {"shape": shape_name, "workers": n, "batch": shape.batch, "T": T, "K": K, **res,
               "samples_per_s": shape.batch / res["seconds"]}
        rows.append(row)
        print(f"bench: {shape_name:8s} train ep data-parallel {n} worker(s) ({res['threads']} threads each) "
              f"{row['samples_per_s']:9.1f} samples/s", flush=True)
    base = next((r["samples_per_s"] for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["speedup_vs_1"] = r["samples_per_s"] / base if base else None
    return rows
