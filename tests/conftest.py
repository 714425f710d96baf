"""Shared by the tests: the tiny preset (a few seconds per training job), one way to compose the config, and
figures off except where a test draws them (`@pytest.mark.figures`)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import seqep.config  # noqa: F401  (registers the schemas in ConfigStore)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# 96 training sequences of 8 tokens (6 batches of 16), d=8, fc [8, 2]: seconds per job on 2 cores.
TINY = [
    "dataset=synth_sentiment", "dataset.seq_len=8", "dataset.embed_dim=8", "dataset.vocab_size=50",
    "dataset.n_train=96", "dataset.n_val=48", "dataset.n_test=48", "dataset.batch_size=16",
    "dataset.eval_batch_size=48", "model.fc=[8,2]", "model.out_bias_init=0.5", "optimizer.lrs=[0.01,0.01,0.01]",
    "trainer.progress=false", "trainer.probe_every=0", "device=cpu",
]
# In-process training jobs: T=6, K=3, files only.
TRAIN = [*TINY, "algorithm.T=6", "algorithm.K=3", "logger=none"]


def compose_cfg(*overrides: str, hydra: bool = False):
    """The composed config, as run.py would build it (with the `hydra` node when asked)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="test"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def make_cfg(run_dir: Path, *overrides: str):
    """The tiny training preset with a fixed run directory."""
    return compose_cfg(*TRAIN, f"paths.run_dir={run_dir}", *overrides)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(autouse=True)
def skip_plots(request, monkeypatch):
    """Figures cost ~1 s of matplotlib per run: off unless the test is marked `figures`."""
    if request.node.get_closest_marker("figures") is None:
        monkeypatch.setattr("seqep.tasks.train._plot", lambda rows, run_dir: {})


@pytest.fixture
def fast_bf16(monkeypatch):
    """bfloat16 runs as such whatever the CPU (slowly where it is emulated), its fallback warnings fresh."""
    import seqep.precision as precision

    monkeypatch.setattr(precision, "fast_bf16", lambda device_type: True)
    monkeypatch.setattr(precision, "_WARNED", set())


def bf16_fidelities(net, x, y) -> dict[str, dict[str, float]]:
    """Per bfloat16 mode (`seqep.precision.BF16_FREE`): EP's gradient in that mode against a float64 EP gradient
    on the same weights and batch (`seqep.diagnostics.precision_fidelity`: `ep/probe/f64/...` metrics)."""
    import seqep.precision as precision
    from seqep.diagnostics import precision_fidelity
    from seqep.estimators import EP

    out = {}
    for mode in precision.BF16_FREE:
        est = EP()
        est.precision = mode
        out[mode] = precision_fidelity(net, est, x, y)
    return out
