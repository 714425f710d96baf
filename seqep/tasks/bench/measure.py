"""Timing and peak memory: `measure` (interleaved, synchronised timings), `PeakMemory` (resident high-water mark
on CPU, `max_memory_allocated` on CUDA; see the package docstring) and the matmul ceiling."""

from __future__ import annotations

import ctypes
import math
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


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
    """Peak memory of whatever runs between `reset()` and `peak_mb()` (see the package docstring)."""

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
