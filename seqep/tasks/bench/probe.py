"""Peak memory of one training step against T: EP (symmetric) stays flat, full BPTT grows.

On CPU each point runs in a fresh process, where the resident high-water mark is that step's alone:
`python -m seqep.tasks.bench.probe --memory-probe '<json list of memory_probe's arguments>'` prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from seqep.errors import SeqepError
from seqep.tasks.bench.cases import EP_BETAS, Settings, build, estimator
from seqep.tasks.bench.measure import PeakMemory
from seqep.tasks.bench.shapes import SHAPES
from seqep.training.builders import build_optimizer


def memory_probe(shape_name: str, algorithm: str, T: int, K: int, device: str, dtype: str,
                 optimizer: dict[str, Any]) -> dict[str, float]:
    """Peak memory of one training step (EP symmetric, or full BPTT) in this process, with the optimizer built
    from the node `optimizer`. Run in a fresh process on CPU, where the resident high-water mark is per process."""
    st = Settings(device=torch.device(device), dtype=getattr(torch, dtype), precision="fp32", repeats=1,
                  betas=EP_BETAS, tol=None, seed=0, optimizer=optimizer)
    net, x, y = build(SHAPES[shape_name], st)
    opt = build_optimizer(st.optimizer, net)
    memory = PeakMemory(st.device)
    before = memory.reset()
    estimator(algorithm, T, K, "closed", st, truncate="full").compute_gradients(net, x, y)
    opt.step()
    peak = memory.peak_mb()
    return {"algorithm": algorithm, "T": T, "peak_mb": peak, "step_mb": peak - before, "method": memory.method}


def probe_in_subprocess(args: list) -> dict[str, float]:
    """`memory_probe(*args)` in a fresh single-threaded Python (memory does not depend on the thread count)."""
    cmd = [sys.executable, "-m", "seqep.tasks.bench.probe", "--memory-probe", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)
    if done.returncode != 0:
        raise SeqepError(f"bench: memory probe {args} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_vs_T(shape_name: str, Ts: list[int], st: Settings) -> list[dict[str, float]]:
    """Peak memory of one training step for EP and full BPTT at every T: on CPU one fresh process per point
    (as many side by side as there are cores), on CUDA in this process."""
    K, dtype = SHAPES[shape_name].K, str(st.dtype).removeprefix("torch.")
    points = [[shape_name, a, T, min(K, T), str(st.device), dtype, st.optimizer] for a in ("ep", "bptt") for T in Ts]
    if st.device.type == "cuda":
        return [memory_probe(*args) for args in points]
    with ThreadPoolExecutor(max_workers=max(1, min(len(points), os.cpu_count() or 1))) as pool:
        return list(pool.map(probe_in_subprocess, points))


def growth(rows: list[dict], algorithm: str, key: str = "peak_mb") -> float:
    """Relative growth of `key` from the smallest to the largest T."""
    mine = sorted((r["T"], r[key]) for r in rows if r["algorithm"] == algorithm)
    return (mine[-1][1] - mine[0][1]) / mine[0][1]


if __name__ == "__main__" and sys.argv[1:2] == ["--memory-probe"]:
    print(json.dumps(memory_probe(*json.loads(sys.argv[2]))))
