"""The config interface through Hydra's compose API: defaults, every group option, paper presets, typed keys,
validation messages, launchers, sweeps, and what `seqep.tasks` does around a task."""

import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from seqep import tasks
from seqep.config import check_group_options, validate
from seqep.errors import SeqepError

from conftest import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"
NLI_LRS = "optimizer.lrs=[1e-3,1e-3,1e-3,1e-3,1e-3,1e-3]"


def test_default_config_is_spec_default_model():
    cfg = compose_cfg()
    validate(cfg)
    assert (cfg.task, cfg.seed, cfg.device, cfg.dtype) == ("train", 0, "auto", "float32")
    assert cfg.dataset._target_ == "seqep.data.RtSnippets" and cfg.dataset.batch_size == 64
    assert cfg.model._target_ == "seqep.network.HopfieldEPNet" and cfg.model.kind == "sentiment"
    assert list(cfg.model.fc) == [256, 2] and cfg.model.activation == "my_hard_sig" and cfg.model.attn_scale is None
    a = cfg.algorithm
    assert (a._target_, a.variant, a.T, a.K, list(a.betas), a.tol) == ("seqep.estimators.EP", "symmetric", 100, 40,
                                                                      [0.0, 0.02], 2e-3)
    assert (a.updates, a.adaptive_beta) == ("alternating", True)
    o = cfg.optimizer
    assert (o._target_, o._partial_, o.lrs, o.lr, o.eps, o.fused) == ("torch.optim.Adam", True, None, 1e-3, 1e-8, True)
    assert o.weight_decay == 1e-4
    s = cfg.scheduler
    assert (s._target_, s.interval, s.T_max, s.eta_min) == ("torch.optim.lr_scheduler.CosineAnnealingLR", "epoch",
                                                            30, 1e-5)
    assert list(cfg.logger) == ["wandb"] and cfg.name == "ep_rt_snippets"
    assert cfg.checkpoint.load is None and cfg.trainer.limit_train_batches is None


# one composition per option file; companions make the combination valid (an NLI model needs 6 lrs)
OPTIONS = {
    "dataset=rt_snippets": [], "dataset=imdb": [], "dataset=synth_sentiment": [],
    "dataset=snli": ["model=nli"], "dataset=synth_nli": ["model=nli", NLI_LRS],
    "model=sentiment": [], "model=nli": ["dataset=synth_nli"],
    "algorithm=ep": [], "algorithm=bptt": [], "optimizer=adam": [], "optimizer=adamw": [], "optimizer=sgd": [],
    "scheduler=cosine": [], "scheduler=warmup_cosine": [], "scheduler=none": [],
    "logger=wandb": [], "logger=tensorboard": [], "logger=none": [],
    "launcher=none": [], "launcher=local_parallel": [], "launcher=slurm": [], "launcher=slurm_local": [],
    "experiment=paper_imdb": [], "experiment=paper_snli": [], "experiment=quick_bptt": [],
    "experiment=synth_imdb_shape": [], "experiment=synth_snli_shape": [],
    "sweep=t_k": [], "sweep=betas": [], "paths=default": [], "hparams_search=optuna": [],
}


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_composes_and_validates(option):
    cfg = compose_cfg(option, *OPTIONS[option], hydra=True)
    with_hydra_dropped = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate(with_hydra_dropped)
    OmegaConf.to_container(with_hydra_dropped, resolve=True)


def test_every_option_file_is_tested():
    files = {f"{p.parent.name}={p.stem}" for p in CONF.glob("*/*.yaml")}
    assert files == set(OPTIONS), "add new conf/ options to OPTIONS"


def test_paper_snli_reproduces_the_readme_command():
    cfg = compose_cfg("experiment=paper_snli")
    validate(cfg)
    # python main.py --dataset SNLI --fc_layers 400 3 --seqLen 25 --lrs 0.0005 0.0005 0.0005 0.0005 0.0002 0.0002
    #   --lr-decay --epochs 50 --act my_hard_sig --T 60 --K 30 --batch_size 200 --alg EP --thirdphase --betas 0.0 0.5
    assert cfg.dataset.name == "snli" and cfg.dataset.seq_len == 25 and cfg.dataset.batch_size == 200
    assert cfg.model.kind == "nli" and list(cfg.model.fc) == [400, 3] and cfg.model.activation == "my_hard_sig"
    assert cfg.model.attn_scale == 0.16 and cfg.model.mask_padding is False
    assert list(cfg.optimizer.lrs) == [0.0005, 0.0005, 0.0005, 0.0005, 0.0002, 0.0002]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.eps == 1e-8
    assert (cfg.scheduler._target_, cfg.scheduler.interval, cfg.scheduler.T_max, cfg.scheduler.eta_min) == (
        "torch.optim.lr_scheduler.CosineAnnealingLR", "epoch", 100, 1e-5)
    a = cfg.algorithm
    assert (a._target_, a.variant, a.T, a.K, list(a.betas)) == ("seqep.estimators.EP", "symmetric", 60, 30, [0.0, 0.5])
    assert cfg.trainer.epochs == 50 and cfg.trainer.limit_train_batches is None
    assert (a.tol, a.updates, a.adaptive_beta) == (None, "synchronous", False)  # the old code's fixed steps, one β
    assert cfg.optimizer.weight_decay == 0.0
    assert "GoogleNews" in cfg.dataset.vectors


def test_paper_imdb_reproduces_the_readme_command():
    cfg = compose_cfg("experiment=paper_imdb")
    validate(cfg)
    # python main.py --dataset IMDB --fc_layers 1000 40 2 --seqLen 600 --lrs 0.0001 0.00005 0.00005 0.00005
    #   --lr-decay --epochs 50 --act my_hard_sig --T 50 --K 25 --batch_size 100 --alg EP --thirdphase --betas 0.0 0.1
    assert cfg.dataset.name == "imdb" and cfg.dataset.seq_len == 600 and cfg.dataset.batch_size == 100
    assert cfg.model.kind == "sentiment" and list(cfg.model.fc) == [1000, 40, 2]
    assert cfg.model.activation == "my_hard_sig" and cfg.model.attn_scale is None  # None = 1/sqrt(d)
    assert list(cfg.optimizer.lrs) == [0.0001, 0.00005, 0.00005, 0.00005]
    assert (cfg.scheduler._target_, cfg.scheduler.T_max, cfg.scheduler.eta_min) == (
        "torch.optim.lr_scheduler.CosineAnnealingLR", 100, 1e-5)
    a = cfg.algorithm
    assert (a._target_, a.variant, a.T, a.K, list(a.betas)) == ("seqep.estimators.EP", "symmetric", 50, 25, [0.0, 0.1])
    assert cfg.trainer.epochs == 50
    assert (a.tol, a.updates, a.adaptive_beta) == (None, "synchronous", False)
    assert cfg.optimizer.weight_decay == 0.0
    assert "GoogleNews" in cfg.dataset.vectors


@pytest.mark.parametrize("override, key", [
    ("algorithm.TT=3", "algorithm.TT"),
    ("trainer.epoch=3", "trainer.epoch"),
    ("seeds=1", "seeds"),
    ("dataset.seqlen=3", "dataset.seqlen"),
    ("algorithm.T=abc", "algorithm.T"),
    ("model.fc=[128,two]", "model.fc"),
])
def test_misspelt_key_or_wrong_type_fails_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(override)
    assert key in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.lrs=[1e-3,1e-3]"],
     "optimizer.lrs has 2 values but model 'sentiment' with fc=[256, 2] has 3 synapses: give one learning rate "
     "per synapse, projections first: [proj, fc1, fc2]"),
    (["model=nli", "dataset=synth_nli", "optimizer.lrs=[1e-3]"],
     "optimizer.lrs has 1 value but model 'nli' with fc=[400, 3] has 6 synapses: give one learning rate per "
     "synapse, projections first: [proj1, proj2, proj3, proj4, fc1, fc2]"),
    (["algorithm.variant=both"],
     "algorithm.variant='both' is not allowed; choose one of: symmetric, positive, negative, random_sign"),
    (["algorithm=bptt", "algorithm.truncate=half"],
     "algorithm.truncate='half' is not allowed; choose one of: last_k, full"),
    (["algorithm.field_mode=numeric"], "algorithm.field_mode='numeric' is not allowed; choose one of: closed"),
    (["task=fly"], "task='fly' is not allowed; choose one of: train, test, gdu, bench, baseline"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 must be >= 1"),
    (["dataset.batch_size=-5"], "dataset.batch_size=-5 must be >= 1"),
    (["dataset.eval_batch_size=0"], "dataset.eval_batch_size=0 must be >= 1"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1.0 must be >= 0"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "optimizer.momentum=-1.0 must be >= 0"),
    (["scheduler.eta_min=-1"], "scheduler.eta_min=-1.0 must be >= 0"),
    (["scheduler.T_max=0"], "scheduler.T_max=0 must be > 0"),
    (["checkpoint.save_every=0"], "checkpoint.save_every=0 must be >= 1"),
    (["dataset=synth_sentiment", "dataset.n_train=-3"], "dataset.n_train=-3 must be >= 0"),
    (["trainer.progress=maybe"], "trainer.progress='maybe' is not allowed; choose one of: auto, true, false"),
    (["device=gpu"], "device='gpu' is not allowed; choose one of: auto, cpu, cuda, cuda:N"),
    (["dtype=float16"], "dtype='float16' is not allowed"),
    (["model.activation=relu"], "model.activation='relu' is not allowed; choose one of: my_hard_sig"),
    (["model=nli"], "model.kind='nli' does not fit dataset 'rt_snippets' of kind 'sentiment': use model=sentiment"),
    (["algorithm.betas=[0.1]"], "algorithm.betas=[0.1] must be two values"),
    (["algorithm.betas=[0.0,0.0]"], "EP needs a non-zero nudge"),
    (["algorithm=bptt", "algorithm.K=30"], "algorithm.K=30 > T=20: truncated BPTT"),
    (["algorithm.T=0"], "algorithm.T=0 must be > 0"),
    (["task=test"], "task=test needs a checkpoint: checkpoint.load="),
    (["logger.wandb.mode=maybe"], "logger.wandb.mode='maybe' is not allowed"),
    (["scheduler.interval=batch"], "scheduler.interval='batch' is not allowed; choose one of: epoch, step"),
    (["+algorithm.TT=3"], "algorithm.TT is not a key of seqep.estimators.EP"),
    (["+optimizer.nesterov_=1"], "optimizer.nesterov_ is not a key of torch.optim.Adam"),
    (["scheduler=warmup_cosine", "scheduler.total_steps=5"], "scheduler.total_steps=5 must be > warmup_steps"),
])
def test_validate_names_the_key_in_one_line(overrides, message):
    with pytest.raises(SeqepError) as info:
        validate(compose_cfg(*overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_patterns(device):
    validate(compose_cfg(f"device={device}"))


def test_a_group_set_to_null_says_what_to_write():
    with pytest.raises(SeqepError, match=r"^scheduler=null: .* use scheduler=none or ~scheduler to drop it$"):
        check_group_options(["scheduler=null"], CONF)
    with pytest.raises(SeqepError, match=r"use ~experiment to drop it$"):
        check_group_options(["experiment=null"], CONF)


def test_unknown_group_option_is_one_line():
    with pytest.raises(SeqepError, match=r"^dataset=nope is not an option of group 'dataset'; choose one of: imdb, "):
        check_group_options(["dataset=nope"], CONF)
    with pytest.raises(SeqepError, match="algorithm=bpt is not an option"):
        check_group_options(["-m", "algorithm=ep,bpt"], CONF)
    check_group_options(["-m", "dataset=imdb,snli", "algorithm.T=3", "hydra/launcher=joblib",
                         "--cfg", "job", "model.fc=[1,2]", "+dataset.x=y"], CONF)


def test_sweep_groups_set_multirun_params():
    t_k = compose_cfg("sweep=t_k", hydra=True)
    assert t_k.hydra.mode == RunMode.MULTIRUN
    assert set(t_k.hydra.sweeper.params) == {"algorithm.T", "algorithm.K"}
    betas = compose_cfg("sweep=betas", hydra=True)
    assert betas.hydra.mode == RunMode.MULTIRUN and "[0.0,0.1]" in betas.hydra.sweeper.params["algorithm.betas"]
    assert compose_cfg(hydra=True).hydra.callbacks.aggregate_sweep._target_ == "seqep.sweep.AggregateSweep"


def test_run_and_sweep_dirs_have_subsecond_names():
    h = OmegaConf.to_container(compose_cfg(hydra=True).hydra, resolve=False)
    assert h["run"]["dir"].startswith("${paths.output_root}/") and "%f" in h["run"]["dir"]
    assert h["sweep"]["dir"].startswith("${paths.output_root}/multirun/") and "%f" in h["sweep"]["dir"]
    assert h["sweep"]["subdir"] == "${hydra.job.num}"


def _sbatch_script(launcher_cfg, tmp_path, monkeypatch) -> str:
    """Replay what hydra-submitit's SlurmLauncher does with its config (submitit rejects unknown parameters)
    and return the sbatch script it would submit. A fake `srun` on PATH stands in for the cluster."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    params = OmegaConf.to_container(launcher_cfg, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(folder=tmp_path / params.pop("submitit_folder"), cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    return executor._executor._make_submission_file_text("python run.py", "uid")


def test_slurm_launcher_reads_the_environment(monkeypatch, tmp_path):
    for var in ["SEQEP_SLURM_PARTITION", "SBATCH_PARTITION", "SEQEP_SLURM_GPUS", "SEQEP_SLURM_TIME_MIN"]:
        monkeypatch.delenv(var, raising=False)
    default = compose_cfg("launcher=slurm", hydra=True).hydra.launcher
    assert default._target_.endswith("SlurmLauncher")
    assert (default.partition, default.gpus_per_node, default.timeout_min) == (None, 1, 240)

    monkeypatch.setenv("SBATCH_PARTITION", "gpu")
    monkeypatch.setenv("SEQEP_SLURM_GPUS", "4")
    monkeypatch.setenv("SEQEP_SLURM_TIME_MIN", "90")
    launcher = compose_cfg("launcher=slurm", hydra=True).hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 90)
    monkeypatch.setenv("SEQEP_SLURM_PARTITION", "a100")  # ours wins over sbatch's
    assert compose_cfg("launcher=slurm", hydra=True).hydra.launcher.partition == "a100"
    cli = compose_cfg("launcher=slurm", "hydra.launcher.partition=debug", hydra=True).hydra.launcher
    assert cli.partition == "debug"
    script = _sbatch_script(cli, tmp_path, monkeypatch)
    for line in ["#SBATCH --partition=debug", "#SBATCH --gpus-per-node=4", "#SBATCH --time=90",
                 "#SBATCH --job-name=seqep_sweep", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB"]:
        assert line in script


# ------------------------------------------------------------------------------------------ seqep.tasks

@pytest.fixture
def fake_train(monkeypatch):
    """Replace the training task by a recorder, so dispatch is tested without data or a model."""
    calls = []

    def run_training(cfg, run_dir):
        calls.append((cfg, Path(run_dir), torch.rand(3)))
        return {"test/acc": 0.75, "val/best_acc": torch.tensor(0.8), "best_epoch": 3, "bad": float("nan")}

    module = types.ModuleType("fake_seqep_train")
    module.run_training = run_training
    monkeypatch.setitem(sys.modules, "fake_seqep_train", module)
    monkeypatch.setitem(tasks.TASKS, "train", ("fake_seqep_train", "run_training"))
    return calls


def test_dispatch_prepares_the_run_and_calls_the_task(fake_train, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_cfg("dataset=synth_sentiment", f"paths.run_dir={run_dir}", "device=auto")
    summary = tasks.dispatch(cfg)
    assert summary["test/acc"] == 0.75
    job_cfg, got_dir, first = fake_train[0]
    assert got_dir == run_dir and job_cfg.device == "cpu" and job_cfg.logger.wandb.group is None
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["name"] == "ep_synth_sentiment" and written["device"] == "cpu"
    assert "${" not in (run_dir / "config.yaml").read_text()
    saved = yaml.safe_load((run_dir / "summary.json").read_text())
    environment = saved.pop("environment")
    assert saved == {"task": "train", "test/acc": 0.75, "val/best_acc": pytest.approx(0.8), "best_epoch": 3,
                     "bad": None}
    assert environment["device"] == "cpu" and environment["python"].count(".") == 2
    tasks.dispatch(cfg)  # seeded: the task sees the same random numbers
    assert torch.equal(fake_train[1][2], first)


def test_dispatch_under_compose_without_run_dir(fake_train, tmp_path):
    cfg = compose_cfg("dataset=synth_sentiment", f"paths.output_root={tmp_path}", hydra=True)
    tasks.dispatch(cfg)  # the hydra node (unresolvable outside a run) is dropped
    (run_dir,) = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert run_dir.name.endswith("_ep_synth_sentiment") and (run_dir / "config.yaml").exists()


def test_dispatch_rejects_invalid_config_before_running(fake_train, tmp_path):
    cfg = compose_cfg("dataset=synth_sentiment", "optimizer.lrs=[0.1]", f"paths.run_dir={tmp_path / 'x'}")
    with pytest.raises(SeqepError, match="optimizer.lrs has 1 value"):
        tasks.dispatch(cfg)
    assert not fake_train and not (tmp_path / "x").exists()


def test_missing_task_module_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(tasks.TASKS, "bench", ("seqep.not_there", "run_bench"))
    cfg = compose_cfg("task=bench", "dataset=synth_sentiment", f"paths.run_dir={tmp_path}")
    with pytest.raises(SeqepError, match="task=bench is not available"):
        tasks.dispatch(cfg)


def test_sweep_group_and_parallel_jobs():
    multirun = OmegaConf.create({"mode": RunMode.MULTIRUN,
                                 "sweep": {"dir": "outputs/multirun/2025-01-02/10-00-00-000001_sweep_t_k"},
                                 "launcher": {"_target_": "hydra_plugins...JoblibLauncher", "n_jobs": 2}})
    assert tasks.sweep_group(multirun) == "2025-01-02_10-00-00-000001_sweep_t_k"
    assert tasks.parallel_jobs(multirun) == 2
    single = OmegaConf.create({"mode": RunMode.RUN, "sweep": {"dir": "x"}, "launcher": {"_target_": "Basic"}})
    assert tasks.sweep_group(single) is None and tasks.parallel_jobs(single) == 1
    assert tasks.sweep_group(None) is None
