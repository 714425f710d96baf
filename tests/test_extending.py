"""README "Extending seqep", literally: a learning rule, a dataset and a torch optimizer from a folder outside the
package (examples/extending, copied to a temporary folder), picked with hydra.searchpath, trained and resumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ["hydra.searchpath=[file://my_conf]", "algorithm=my_rule", "optimizer=rmsprop", "dataset=majority"]
QUICK = ["model.fc=[8,2]", "algorithm.T=6", "algorithm.K=3", "logger=none", "trainer.progress=false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The user's own folder: my_rules.py, my_data.py, my_conf/ (nothing under seqep/ is written)."""
    dest = tmp_path_factory.mktemp("user") / "extending"
    shutil.copytree(ROOT / "examples" / "extending", dest)
    return dest


def run_user(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ".", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.slow
def test_own_rule_dataset_and_optimizer_train_and_resume(folder):
    first = run_user(folder, *RECIPE, *QUICK, "trainer.epochs=1", "name=first")
    assert first.returncode == 0, first.stderr
    (run,) = folder.glob("outputs/*/*_first")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["algorithm"] == "ScaledEP symmetric T=6 K=3 betas=[0.0, 0.02] proj_scale=0.5"
    assert summary["algorithm._target_"] == "my_rules.ScaledEP"
    assert summary["optimizer"] == "torch.optim.RMSprop" and summary["dataset"] == "majority"
    assert "ScaledEP symmetric" in first.stdout  # the run header describes the object itself
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["algorithm"]["_target_"] == "my_rules.ScaledEP"
    assert state["config"]["optimizer"]["alpha"] == 0.9 and "alpha" in state["optimizer"]["param_groups"][0]

    resumed = run_user(folder, *RECIPE, *QUICK, "trainer.epochs=2", f"checkpoint.resume={run}", "name=resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "epoch   2/2" in resumed.stdout
    (run2,) = folder.glob("outputs/*/*_resumed")
    assert json.loads((run2 / "summary.json").read_text())["best_epoch"] in (1, 2)

    other = run_user(folder, *RECIPE[:3], "dataset=majority", "optimizer=adam", *QUICK, "trainer.epochs=2",
                     f"checkpoint.resume={run}")
    assert "trained with optimizer torch.optim.RMSprop, this run has optimizer torch.optim.Adam" in one_line(other)


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("+algorithm.TT=3", "algorithm.TT is not a key of my_rules.ScaledEP; its keys are: T, K, betas, variant, "
                        "tol, proj_scale"),
    ("algorithm.proj_scale=-1", "algorithm.proj_scale=-1.0 must be >= 0"),
    ("+optimizer.momentun=0.5", "optimizer.momentun is not a key of torch.optim.RMSprop"),
    ("dataset.n_trian=5", "dataset.n_trian"),
])
def test_own_options_reject_bad_keys_in_one_line(folder, override, message):
    proc = run_user(folder, *RECIPE, *QUICK, override)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert message in proc.stderr


def test_the_own_rule_really_scales_the_projection_gradient(folder, monkeypatch):
    monkeypatch.syspath_prepend(str(folder))
    from seqep.estimators import EP, grads_by_name

    from my_rules import ScaledEP
    from small_models import small_input, small_net

    net = small_net("sentiment")
    x, y = small_input(net)
    EP(T=30, K=10).compute_gradients(net, x, y)
    plain = grads_by_name(net)
    ScaledEP(T=30, K=10, proj_scale=0.25).compute_gradients(net, x, y)
    scaled = grads_by_name(net)
    torch.testing.assert_close(scaled["synapses.0.weight"], 0.25 * plain["synapses.0.weight"])
    torch.testing.assert_close(scaled["synapses.1.weight"], plain["synapses.1.weight"])
