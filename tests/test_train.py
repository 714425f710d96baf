"""The trainer on tiny synthetic data: epochs, metrics, best-on-validation selection, resume, NaN stop, task=test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seqep.errors import SeqepError
from seqep.tasks import dispatch, train
from seqep.training import checkpoint as ckpt
from seqep.training.builders import build_dataset, build_model, build_optimizer
from seqep.training.trainer import NonFiniteError, Trainer

from conftest import make_cfg, read_csv  # noqa: E402


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.figures
def test_training_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    summary = dispatch(make_cfg(run, "trainer.epochs=2", "trainer.log_every=2"))
    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    columns = set(rows[0])
    assert {"epoch", "train/loss", "train/acc", "train/tie_rate", "val/loss", "val/acc", "val/tie_rate",
            "lr/0", "lr/1", "lr/2", "time/epoch_s"} <= columns
    assert not any(c.startswith("test/") for c in columns)  # test metrics are never per epoch
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in jsonl if r["kind"] == "epoch"]
    assert [r["val/acc"] for r in epochs] == [float(r["val/acc"]) for r in rows]
    assert [r["step"] for r in jsonl if r["kind"] == "batch"] == [2, 4, 6, 8, 10, 12]
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == "completed" and saved == json.loads(json.dumps(summary, default=str))
    for key in ("test/acc", "test/loss", "val/best_acc", "best_epoch", "train/acc", "epochs", "time_s",
                "algorithm", "T", "K", "betas", "seed"):
        assert key in saved, key
    assert saved["val/best_acc"] == max(float(r["val/acc"]) for r in rows)
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "plots" / "learning_curves.png").is_file()
    state = final_state(run)
    assert state["epoch"] == 2 and state["config"]["algorithm"]["T"] == 6
    assert float(rows[1]["lr/0"]) < float(rows[0]["lr/0"])  # cosine stepped once per epoch


def test_best_checkpoint_is_chosen_on_validation_not_test(tmp_path, monkeypatch):
    """Scripted validation accuracies peak at epoch 2; test (evaluated once, at the end) uses those weights."""
    real_evaluate = Trainer.evaluate
    val_script = iter([0.5, 0.9, 0.6])
    weights_after: list[dict] = []
    test_weights: list[dict] = []

    def scripted(self, split, prefix=None):
        prefix = prefix or split
        metrics = real_evaluate(self, split, prefix)
        snapshot = {k: v.clone() for k, v in self.net.state_dict().items()}
        if prefix == "val":
            weights_after.append(snapshot)
            metrics["val/acc"] = next(val_script)
        else:
            assert prefix == "test"
            test_weights.append(snapshot)
        return metrics

    monkeypatch.setattr(Trainer, "evaluate", scripted)
    run = tmp_path / "run"
    summary = dispatch(make_cfg(run, "trainer.epochs=3"))
    assert summary["best_epoch"] == 2 and summary["val/best_acc"] == 0.9
    assert len(test_weights) == 1  # the test split is looked at once
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    for key, value in weights_after[1].items():
        assert torch.equal(best["model_state_dict"][key], value)
        assert torch.equal(test_weights[0][key], value)
    assert not torch.equal(weights_after[2]["synapses.1.weight"], weights_after[1]["synapses.1.weight"])


def test_resume_gives_identical_weights(tmp_path):
    """2 epochs straight == 1 epoch, then resume for 1 more (model, optimizer, scheduler, RNGs restored)."""
    extra = ["algorithm.variant=random_sign"]  # also draws from the estimator's generator
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    dispatch(make_cfg(straight, "trainer.epochs=2", *extra))
    dispatch(make_cfg(first, "trainer.epochs=1", *extra))
    dispatch(make_cfg(resumed, "trainer.epochs=2", f"checkpoint.resume={first}", "seed=0", *extra))
    a, b = final_state(straight), final_state(resumed)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model_state_dict"]:
        assert torch.equal(a["model_state_dict"][key], b["model_state_dict"][key]), key
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], b["optimizer"]["state"][pid]["exp_avg"])
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["generators"]["data"], b["rng"]["generators"]["data"])
    rows_a, rows_b = read_csv(straight / "metrics.csv"), read_csv(resumed / "metrics.csv")
    assert [r["epoch"] for r in rows_b] == ["1", "2"]  # the first epoch's row carried over
    for ra, rb in zip(rows_a, rows_b):
        assert ra["train/loss"] == rb["train/loss"] and ra["val/acc"] == rb["val/acc"]
    assert (resumed / "checkpoints" / "best.pt").is_file()


def test_resume_needs_a_full_checkpoint_of_the_same_optimizer(tmp_path):
    first = tmp_path / "first"
    dispatch(make_cfg(first, "trainer.epochs=1"))
    with pytest.raises(SeqepError, match="not a full seqep training checkpoint"):
        dispatch(make_cfg(tmp_path / "again", f"checkpoint.resume={first / 'checkpoints' / 'best.pt'}"))
    with pytest.raises(SeqepError, match="trained with optimizer torch.optim.Adam, this run has optimizer "
                                         "torch.optim.SGD"):
        dispatch(make_cfg(tmp_path / "sgd", f"checkpoint.resume={first}", "optimizer=sgd",
                          "optimizer.lrs=[0.01,0.01,0.01]"))
    with pytest.raises(SeqepError, match="trained with scheduler torch.optim.lr_scheduler.CosineAnnealingLR, this "
                                         "run has scheduler None"):
        dispatch(make_cfg(tmp_path / "none", f"checkpoint.resume={first}", "scheduler=none"))
    with pytest.raises(SeqepError, match=r"trained with optimizer.eps=1e-08, this run has optimizer.eps=0.001: a "
                                         r"resume restores the saved optimizer state"):
        dispatch(make_cfg(tmp_path / "eps", f"checkpoint.resume={first}", "optimizer.eps=1e-3"))


class PoisonedEstimator:
    """Wraps the real estimator; from call `after` on, a weight is NaN (as a diverging run would make it)."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after, self.calls = inner, after, 0

    def compute_gradients(self, net, x, y):
        self.calls += 1
        if self.calls > self.after:
            with torch.no_grad():
                net.synapses[1].weight[0, 0] = float("nan")
        return self.inner.compute_gradients(net, x, y)

    def predict(self, net, x):
        return self.inner.predict(net, x)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = train.build_estimator
    monkeypatch.setattr(train, "build_estimator",
                        lambda node, gen, *precision: PoisonedEstimator(real(node, gen, *precision), after=6 + 2))
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError) as err:
        dispatch(make_cfg(run, "trainer.epochs=3"))
    msg = str(err.value)
    assert "NaN or Inf" in msg and "epoch 2, batch 3" in msg and "last.pt (epoch 1)" in msg and "\n" not in msg
    state = final_state(run)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model_state_dict"].values())
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert len(read_csv(run / "metrics.csv")) == 1


def test_task_test_evaluates_a_checkpoint(tmp_path):
    trained = tmp_path / "trained"
    summary = dispatch(make_cfg(trained, "trainer.epochs=1"))
    result = dispatch(make_cfg(tmp_path / "tested", "task=test", f"checkpoint.load={trained}"))
    assert result["test/acc"] == summary["test/acc"] and result["checkpoint_kind"] == "seqep"
    assert result["val/acc"] == summary["val/best_acc"]


def _tiny_model(tmp_path):
    cfg = make_cfg(tmp_path / "x")
    data = build_dataset(cfg.dataset).load()
    return cfg, build_model(cfg.model, seq_len=data.seq_len, embed_dim=data.embed_dim)


def test_training_starts_from_old_code_weights(tmp_path):
    _, net = _tiny_model(tmp_path)
    with torch.no_grad():
        net.synapses[2].bias.fill_(0.25)
    torch.save({"model_state_dict": net.state_dict(), "opt": {}, "train_acc": [], "test_acc": [], "best": 0.0,
                "epoch": 3, "scheduler": {}}, tmp_path / "checkpoint.tar")
    result = dispatch(make_cfg(tmp_path / "tested", "task=test", f"checkpoint.load={tmp_path / 'checkpoint.tar'}"))
    assert result["checkpoint_kind"] == "old-code checkpoint.tar" and result["checkpoint_epoch"] == 3


def test_wrong_number_of_learning_rates(tmp_path):
    cfg, net = _tiny_model(tmp_path)
    cfg.optimizer.lrs = [0.1, 0.1]
    with pytest.raises(SeqepError, match=r"^optimizer.lrs has 2 values but model 'sentiment' with fc=\[8, 2\] has 3 "
                                         r"synapses: give one learning rate per synapse, projections first: "
                                         r"\[proj, fc1, fc2\]"):
        build_optimizer(cfg.optimizer, net)
    cfg.optimizer.lrs = None  # every synapse at optimizer.lr
    assert [g["lr"] for g in build_optimizer(cfg.optimizer, net).param_groups] == [cfg.optimizer.lr] * 3


def test_checkpoint_state_round_trips_through_weights_only(tmp_path):
    run = tmp_path / "run"
    dispatch(make_cfg(run, "trainer.epochs=1", "optimizer=sgd", "optimizer.momentum=0.9",
                      "optimizer.lrs=[0.01,0.01,0.01]"))
    state = ckpt.read_checkpoint(run / "checkpoints" / "last.pt")
    assert state["format"] == ckpt.FORMAT and state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_adamw_and_a_per_batch_schedule_train_and_resume(tmp_path):
    """optimizer=adamw and scheduler=warmup_cosine are YAML only; the schedule steps after every batch (6 per
    epoch here) and resume continues it exactly."""
    extra = ["optimizer=adamw", "scheduler=warmup_cosine", "scheduler.warmup_steps=4", "scheduler.total_steps=12"]
    straight, first, resumed = tmp_path / "straight", tmp_path / "first", tmp_path / "resumed"
    summary = dispatch(make_cfg(straight, "trainer.epochs=2", *extra))
    assert summary["optimizer"] == "torch.optim.AdamW"
    assert summary["scheduler"] == "seqep.training.schedules.WarmupCosine"
    rows = read_csv(straight / "metrics.csv")
    assert float(rows[0]["lr/0"]) == pytest.approx(0.01 / 5)  # the first batch's lr: 1/(warmup+1) of the base
    state = final_state(straight)
    assert state["scheduler"]["last_epoch"] == 12  # stepped once per batch
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5)  # eta_min at total_steps
    dispatch(make_cfg(first, "trainer.epochs=1", *extra))
    dispatch(make_cfg(resumed, "trainer.epochs=2", f"checkpoint.resume={first}", *extra))
    b = final_state(resumed)
    for key in state["model_state_dict"]:
        assert torch.equal(state["model_state_dict"][key], b["model_state_dict"][key]), key
    assert state["scheduler"] == b["scheduler"]


def test_checkpoints_from_before_the_target_configs_still_resume(tmp_path):
    """last.pt files written when groups were `name: adam | cosine` resume with the matching classes only."""
    first = tmp_path / "first"
    dispatch(make_cfg(first, "trainer.epochs=1"))
    path = first / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["optimizer"] = {"name": "adam", "lrs": [0.01] * 3, "eps": 1e-8, "weight_decay": 0.0,
                                    "momentum": 0.0}
    state["config"]["scheduler"] = {"name": "cosine", "T_max": 100, "eta_min": 1e-5}
    state["config"]["algorithm"] = {"name": "ep", "T": 6, "K": 3, "betas": [0.0, 0.1], "variant": "symmetric",
                                    "truncate": "last_k", "field_mode": "closed", "tol": None}
    ckpt.save_checkpoint(path, state)
    summary = dispatch(make_cfg(tmp_path / "resumed", "trainer.epochs=2", f"checkpoint.resume={first}"))
    assert summary["epochs"] == 2 and summary["status"] == "completed"
    with pytest.raises(SeqepError, match="trained with scheduler torch.optim.lr_scheduler.CosineAnnealingLR"):
        dispatch(make_cfg(tmp_path / "other", "trainer.epochs=2", "scheduler=none", f"checkpoint.resume={first}"))


def test_resume_tolerates_a_torn_metrics_line_and_resuming_in_place_writes_each_epoch_once(tmp_path):
    run = tmp_path / "run"
    dispatch(make_cfg(run, "trainer.epochs=2"))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epoch", "epoch": 3, "train/lo')  # a kill mid-write
    dispatch(make_cfg(run, "trainer.epochs=3", f"checkpoint.resume={run}"))  # into its own directory
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in line]
    assert epochs == [1, 2, 3] and [r["epoch"] for r in read_csv(run / "metrics.csv")] == ["1", "2", "3"]


def test_dead_outputs_stop_the_run_with_advice(tmp_path):
    """model.out_bias_init=-5 puts every output at the floor: all examples tied for a whole epoch."""
    run = tmp_path / "run"
    with pytest.raises(SeqepError, match=r"every output was tied \(dead\) for all of epoch 1: .*out_bias_init=0.5"):
        dispatch(make_cfg(run, "trainer.epochs=3", "model.out_bias_init=-5"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs"] == 1
    assert read_csv(run / "metrics.csv")[0]["warn/dead_outputs"] == "1.0"
    done = dispatch(make_cfg(tmp_path / "on", "trainer.epochs=2", "model.out_bias_init=-5",
                             "trainer.stop_on_dead=false"))
    assert done["status"] == "completed"


def test_nan_advice_names_the_nudge_only_when_it_is_large():
    from seqep.estimators import EP
    from seqep.training.trainer import nan_advice

    assert "betas" not in nan_advice(EP(betas=(0.0, 0.01)))
    assert "algorithm.betas[1]=0.9 is large" in nan_advice(EP(betas=(0.0, 0.9)))


def test_resume_refuses_a_last_checkpoint_with_flipped_bits(tmp_path):
    """Flipped bytes in last.pt's tensor data (the Adam state or the weights) are caught by the zip CRCs."""
    from test_checkpoint import _flip_tensor_bytes

    first = tmp_path / "first"
    dispatch(make_cfg(first, "trainer.epochs=1"))
    _flip_tensor_bytes(first / "checkpoints" / "last.pt")
    with pytest.raises(SeqepError, match=r"last.pt is corrupt: the CRC of .* does not match its data"):
        dispatch(make_cfg(tmp_path / "resumed", "trainer.epochs=2", f"checkpoint.resume={first}"))


def test_the_fused_finite_check_names_what_holds_a_nan_or_inf():
    """`nonfinite` answers a clean step from one fused norm and, when that is not finite, names the culprit: the
    loss, a phase's states (an Inf too) or the weights."""
    from seqep.estimators import EP
    from seqep.training.trainer import nonfinite

    from small_models import small_input, small_net

    net = small_net("sentiment", dtype=torch.float32)
    x, y = small_input(net, B=4, dtype=torch.float32)
    out = EP(T=5, K=3, tol=None).compute_gradients(net, x, y)
    assert nonfinite(out, net) is None and nonfinite(None, net) is None
    out.phases["plus"].states[1][2, 0] = float("inf")
    assert nonfinite(out, net) == "the plus-phase states"
    out.phases["plus"].states[1][2, 0] = 0.0
    with torch.no_grad():
        net.synapses[1].bias[0] = float("nan")
    assert nonfinite(out, net) == "the weights (synapses.1.bias)" == nonfinite(None, net)


def test_a_rule_that_writes_transposed_gradients_trains_as_one_that_does_not(tmp_path):
    """The trainer lays every p.grad out as its parameter before the fused optimizer steps: torch 2.13's CPU fused
    Adam reads a gradient's memory as if laid out like its parameter, so a rule of one's own that writes, say,
    `g.T.contiguous().T` (autograd's layout for a weight used transposed) would otherwise step the transpose."""
    from seqep.estimators import EP
    from seqep.training.tracking import NullTracker
    from seqep.utils import seed_everything

    class Transposing(EP):  # the same gradients, every matrix in column-major memory
        def compute_gradients(self, net, x, y):
            out = super().compute_gradients(net, x, y)
            for p in net.parameters():
                if p.grad.ndim == 2:
                    p.grad = p.grad.T.contiguous().T
            return out

    weights = []
    for name, rule in (("plain", None), ("transposing", Transposing)):
        seed_everything(0)
        trainer = train.build_trainer(make_cfg(tmp_path / name, "trainer.limit_train_batches=3"), tmp_path / name)
        if rule is not None:
            trainer.estimator.__class__ = rule
        assert trainer.optimizer.defaults["fused"]  # the default optimizer, as a run builds it
        trainer.train_epoch(1, NullTracker(), "none")
        weights.append({n: p.detach().clone() for n, p in trainer.net.named_parameters()})
    for n in weights[0]:
        assert torch.allclose(weights[0][n], weights[1][n], atol=1e-7), n
