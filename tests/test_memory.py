"""seqep.utils.keep_freed_memory: a relaxation's megabyte-sized tensors reuse freed memory instead of faulting
fresh pages in on every phase and every compaction of the batch (Linux/glibc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAULTS_PER_BATCH = """
import resource, statistics, torch
from seqep.estimators import EP
from seqep.network import HopfieldEPNet
from seqep.utils import environment, keep_freed_memory
keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.manual_seed(0)
net = HopfieldEPNet(kind="sentiment", seq_len=48, embed_dim=50, fc=[128, 2])  # the default model
x, y = 0.5 * torch.randn(64, 48, 50), torch.randint(0, 2, (64,))
est = EP()  # its defaults: per-example settling, so phases shrink (and allocate) as examples settle
for _ in range(2):
    est.compute_gradients(net, x, y)
per_batch = []
for _ in range(8):  # the median: now and then the heap still grows to its peak (100-300 faults in one batch)
    start = faults()
    est.compute_gradients(net, x, y)
    per_batch.append(faults() - start)
print(environment()["allocator"], statistics.median(per_batch), sep="|")
"""


def faults_per_batch(keep: str) -> tuple[str, float]:
    env = {**os.environ, "SEQEP_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    allocator, faults = out.split("|")
    return allocator, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_an_ep_step_reuses_freed_memory_instead_of_faulting_pages_in():
    kept, kept_faults = faults_per_batch("1")
    system, system_faults = faults_per_batch("0")  # the opt-out leaves glibc's malloc as it is
    assert (kept, system) == ("glibc, freed memory kept", "system")
    # glibc's own thresholds fault thousands of pages in per batch here (3900 measured); kept: none
    assert kept_faults < 50, f"{kept_faults} page faults per batch with freed memory kept ({system_faults} without)"
