"""Small helpers for every task: seeding, device and dtype resolution, CPU threads and memory."""

from __future__ import annotations

import logging
import os
import random
import re

import numpy as np
import torch

from seqep.errors import SeqepError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def check_device(spec: str) -> None:
    """The spelling of `device` (whether it exists is `resolve_device`'s job, on the machine that runs)."""
    if not DEVICE_PATTERN.match(spec):
        raise SeqepError(f"device={spec!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N, mps")


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda if available, else cpu; `cuda`/`cuda:N`/`mps` must exist."""
    check_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SeqepError(f"device={spec} but torch sees no CUDA device (torch {torch.__version__}); "
                             "use device=cpu or device=auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise SeqepError(f"device={spec} but only {torch.cuda.device_count()} CUDA device(s) exist: "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise SeqepError("device=mps but the MPS backend is not available; use device=cpu or device=auto")
    return torch.device(spec)


def resolve_dtype(name: str, key: str = "dtype") -> torch.dtype:
    """`float32` | `float64` -> the torch dtype."""
    if name not in DTYPES:
        raise SeqepError(f"{key}={name!r} is not allowed; choose one of: {', '.join(DTYPES)}")
    return DTYPES[name]


def configure_threads(parallel_jobs: int = 1) -> int:
    """Share the CPU among jobs running side by side (joblib sweeps): cpu_count // jobs torch threads each.

    An explicit OMP_NUM_THREADS wins. Returns the number of threads set.
    """
    if "OMP_NUM_THREADS" in os.environ:
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = max(1, (os.cpu_count() or 1) // max(1, parallel_jobs))
    if parallel_jobs > 1 or "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# glibc's malloc, as seqep sets it (`keep_freed_memory`): blocks up to MMAP_THRESHOLD come from the heap, and freed
# heap memory is returned to the OS only beyond TRIM_THRESHOLD. mallopt's parameter numbers (glibc's malloc.h):
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc allows
TRIM_THRESHOLD = 1 << 30
KEEP_FREED_MEMORY_ENV = "SEQEP_KEEP_FREED_MEMORY"  # set to 0 to leave glibc's malloc as it is
_allocator = "system"


def keep_freed_memory() -> str:
    """Let freed memory be reused instead of handed back to the OS and faulted in again (Linux/glibc only).

    A relaxation allocates megabyte-sized tensors per phase and per compaction of the batch (per-example
    settling); with glibc's defaults such blocks are mmap'd or trimmed off the heap when freed, so each new one
    costs page faults on first touch: ~3000-3900 per training batch of the default model, 0-10 kept (after the
    first epoch). In a step benchmark in a fresh process that was a third of the time (settle + bf16-mixed ~44 ->
    ~30 ms per batch); in whole training epochs the gain stayed within a noisy VM's drift (README, "Benchmarks").
    What PyTorch's CPU tuning guide gets from jemalloc/tcmalloc, without a preloaded library. Memory stays at the
    process's peak instead of shrinking between batches.
    `SEQEP_KEEP_FREED_MEMORY=0` opts out. Returns what `environment()` records: "glibc, freed memory kept" or
    "system"."""
    global _allocator
    import platform

    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return _allocator
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
            _allocator = "glibc, freed memory kept"
    except (OSError, AttributeError):
        pass
    return _allocator


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """`{"algorithm": {"T": 20}}` -> `{"algorithm.T": 20}`; lists stay whole (one value, as JSON)."""
    import json

    if not isinstance(node, dict):
        return {prefix: json.dumps(node) if isinstance(node, list) else node}
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return out


LOG = logging.getLogger("seqep")


def say(message: str) -> None:
    """A line of a run's story (header, epochs, results): through `logging`, so it also lands in the run's run.log
    (conf/hydra/job_logging/seqep.yaml prints it plain on stdout); printed where logging is not configured."""
    if LOG.hasHandlers() and LOG.isEnabledFor(logging.INFO):
        LOG.info(message)
    else:
        print(message, flush=True)


def environment(device: str | torch.device | None = None) -> dict[str, object]:
    """What a result depends on besides its config: the git commit of the code (and whether the tree had
    uncommitted changes), Python, torch, CUDA and seqep versions, the host and the device."""
    import platform
    import socket
    import subprocess
    from importlib import metadata
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    try:
        version = metadata.version("seqep")
    except metadata.PackageNotFoundError:
        version = None
    device = torch.device(str(device)) if device is not None else None
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    return {"git_commit": commit, "git_dirty": bool(status) if commit else None, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "seqep": version, "host": socket.gethostname(),
            "device": str(device) if device is not None else None, "gpu": gpu, "platform": platform.platform(),
            "allocator": _allocator}
