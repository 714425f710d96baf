"""Typed schemas for every config group, registered in Hydra's ConfigStore, and `validate(cfg)`.

The schemas make a misspelt key (`algorithm.TT=3`) or a wrong type (`algorithm.T=abc`) fail while Hydra composes
the config, naming the key. `validate` then checks what types cannot say: allowed values, one learning rate per
synapse, model kind against dataset kind. Each problem is one `SeqepError` line naming the key.

Layout in ConfigStore (the YAML files under conf/ start with `defaults: [<group>_schema, _self_]`):
    base_config                  the top level (SeqepConfig), first entry of conf/config.yaml's defaults
    model/model_schema           ModelConfig
    algorithm/algorithm_schema   AlgorithmConfig (shared by ep and bptt)
    optimizer/optimizer_schema   OptimizerConfig
    scheduler/scheduler_schema   SchedulerConfig
    logger/logger_schema         LoggerConfig
    paths/paths_schema           PathsConfig
    dataset/<name>_schema        written by seqep.data.schema.register_dataset_configs
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from seqep.errors import SeqepError

TASKS = ("train", "test", "gdu", "bench")
DTYPES = ("float32", "float64")
MODEL_KINDS = ("sentiment", "nli")
N_PROJ = {"sentiment": 1, "nli": 4}  # Hopfield projection synapses per model kind (SPEC §1)
ACTIVATIONS = ("my_hard_sig", "hard_sigmoid", "my_sigmoid", "sigmoid", "tanh")  # SPEC §3
ALGORITHMS = ("ep", "bptt")
EP_VARIANTS = ("symmetric", "positive", "negative", "random_sign")
BPTT_TRUNCATE = ("last_k", "full")
FIELD_MODES = ("closed", "autograd")
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "none")
LOGGERS = ("wandb", "tensorboard", "none")
WANDB_MODES = ("offline", "online", "disabled")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


@dataclass
class ModelConfig:
    kind: str = "sentiment"  # sentiment | nli
    fc: list[int] = field(default_factory=lambda: [128, 2])  # hidden sizes then classes (old --fc_layers)
    activation: str = "my_hard_sig"
    attn_scale: Optional[float] = None  # Hopfield β_att; null = paper preset (1/sqrt(d) sentiment, 0.16 nli)
    mask_padding: bool = False  # mask zero-vector padding keys in the Hopfield softmax (paper: off)
    out_bias_init: Optional[float] = None  # constant init of the output bias; null = PyTorch default


@dataclass
class AlgorithmConfig:
    name: str = "ep"  # ep | bptt
    T: int = 20  # free-phase steps
    K: int = 8  # nudged-phase steps (EP) or backpropagated steps (truncated BPTT)
    betas: list[float] = field(default_factory=lambda: [0.0, 0.1])  # [β1 free phase, β2 nudge]
    variant: str = "symmetric"  # ep: symmetric | positive | negative | random_sign
    truncate: str = "last_k"  # bptt: last_k (paper) | full
    field_mode: str = "closed"  # closed-form local fields | autograd of Φ (the old code's way)
    tol: Optional[float] = None  # stop a phase early when the largest state change is below tol; null = fixed


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | sgd
    lrs: list[float] = field(default_factory=lambda: [1e-3, 1e-3, 1e-3])  # one per synapse, projections first
    eps: float = 1e-8  # adam
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine | none; stepped once per epoch
    T_max: int = 100  # the paper keeps 100 even for 50-epoch runs
    eta_min: float = 1e-5


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "seqep"
    entity: Optional[str] = None
    group: Optional[str] = None  # null = the sweep's name in a multirun (set by seqep.tasks), else no group
    tags: list[str] = field(default_factory=list)
    notes: Optional[str] = None


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | tensorboard | none (metrics.csv and metrics.jsonl are always written)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class TrainerConfig:
    epochs: int = 15
    limit_train_batches: Optional[int] = None  # null = every batch
    limit_eval_batches: Optional[int] = None
    log_every: int = 50  # batches between progress-bar metric updates and batch-level logs
    probe_every: int = 1  # epochs between EP-vs-BPTT gradient probes; 0 = never
    probe_size: int = 64  # examples in the fixed probe batch (the first of the validation split)
    diagnostics_every: int = 10  # batches between EP diagnostics (relax/, out/, attn/, grad/ metrics); 0 = off
    diagnostics_tol: float = 1e-3  # an example whose largest last-step state change exceeds this is unsettled
    progress: bool = True  # tqdm progress bar


@dataclass
class CheckpointConfig:
    load: Optional[str] = None  # weights to start from: our checkpoint or an old-code checkpoint.tar / state dict
    resume: Optional[str] = None  # a run directory or checkpoint to continue (model, optimizer, epoch, RNGs)
    save_every: int = 1  # epochs between writes of checkpoints/last.pt


@dataclass
class PathsConfig:
    output_root: str = "outputs"  # where run directories go (see hydra.run.dir in conf/config.yaml)
    run_dir: Optional[str] = None  # only without Hydra's runtime (compose API): null = a fresh outputs/... dir


@dataclass
class GduConfig:
    """task=gdu (seqep.gdu): EP updates against BPTT gradients, step by step."""

    n_examples: int = 20  # validation examples compared (the old code used 20)
    beta: Optional[float] = None  # the nudge of the check; null = algorithm.betas[1]
    betas: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1])  # the β sweep
    n_elements: int = 3  # random elements per parameter in the cumulative plots
    dtype: str = "float64"  # float64 makes the β -> 0 comparison meaningful


@dataclass
class BenchConfig:
    """task=bench (seqep.bench): throughput and memory of the relaxation and training steps."""

    shapes: list[str] = field(default_factory=lambda: ["snli", "imdb", "default"])
    repeats: int = 3
    precision: str = "float32"  # float32 | tf32 | bf16
    memory_T: list[int] = field(default_factory=lambda: [20, 50, 100, 200])  # peak memory against T
    memory_shape: str = "snli"
    tol: Optional[float] = 1e-4  # the early-stop tolerance measured as an option
    old_code_batches: bool = True  # also time the old code's autograd-of-Φ step
    ceiling_size: Optional[int] = None  # matmul size of the GFLOP/s ceiling; null = 2048 on CPU, 8192 on GPU
    compile: bool = False  # also time a torch.compile'd step


@dataclass
class SeqepConfig:
    task: str = "train"  # train | test | gdu | bench
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64
    name: str = "run"  # run name: part of the run directory, the W&B run name
    dataset: Any = MISSING  # typed by the dataset group's own schema (seqep.data.schema)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    gdu: GduConfig = field(default_factory=GduConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; called on import of this module)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=SeqepConfig)
    for group, schema in [("model", ModelConfig), ("algorithm", AlgorithmConfig),
                          ("optimizer", OptimizerConfig), ("scheduler", SchedulerConfig),
                          ("logger", LoggerConfig), ("paths", PathsConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=schema)
    try:
        from seqep.data.schema import register_dataset_configs
    except ImportError:  # the data package is not there yet: datasets compose untyped
        return
    register_dataset_configs(cs)


register_configs()


# --------------------------------------------------------------------------------------------- validation

def n_synapses(kind: str, fc: list[int]) -> int:
    """Projections first (1 sentiment, 4 nli), then one dense synapse per entry of fc."""
    return N_PROJ[kind] + len(fc)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SeqepError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: Any, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise SeqepError(f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: DictConfig) -> None:
    """Check what the schemas cannot: allowed values and consistency between groups. Raises SeqepError."""
    _one_of("task", cfg.task, TASKS)
    if not DEVICE_PATTERN.match(str(cfg.device)):
        raise SeqepError(f"device={cfg.device!r} is not allowed; choose one of: auto, cpu, cuda, cuda:N, mps")
    _one_of("dtype", cfg.dtype, DTYPES)

    m = cfg.model
    _one_of("model.kind", m.kind, MODEL_KINDS)
    _one_of("model.activation", m.activation, ACTIVATIONS)
    if len(m.fc) < 1 or any(h < 1 for h in m.fc):
        raise SeqepError(f"model.fc={list(m.fc)} must list at least the number of classes, all sizes >= 1 "
                         f"(like the old --fc_layers, e.g. [128, 2])")
    if m.attn_scale is not None:
        _positive("model.attn_scale", m.attn_scale)
    data_kind = OmegaConf.select(cfg, "dataset.kind", default=None)
    if data_kind is not None and data_kind != m.kind:
        raise SeqepError(
            f"model.kind={m.kind!r} does not fit dataset {OmegaConf.select(cfg, 'dataset.name')!r} of kind "
            f"{data_kind!r}: use model={data_kind} (or experiment=paper_snli / paper_imdb)")
    n_classes = OmegaConf.select(cfg, "dataset.n_classes", default=None)
    if n_classes is not None and m.fc[-1] != n_classes:
        raise SeqepError(f"model.fc={list(m.fc)} ends in {m.fc[-1]} output neurons but dataset "
                         f"{OmegaConf.select(cfg, 'dataset.name')!r} has {n_classes} classes")

    a = cfg.algorithm
    _one_of("algorithm.name", a.name, ALGORITHMS)
    _one_of("algorithm.variant", a.variant, EP_VARIANTS)
    _one_of("algorithm.truncate", a.truncate, BPTT_TRUNCATE)
    _one_of("algorithm.field_mode", a.field_mode, FIELD_MODES)
    _positive("algorithm.T", a.T)
    _positive("algorithm.K", a.K)
    if a.name == "bptt" and a.truncate == "last_k" and a.K > a.T:
        raise SeqepError(f"algorithm.K={a.K} > algorithm.T={a.T}: truncated BPTT backpropagates through the "
                         f"last K of the T free steps, so K must be <= T")
    if len(a.betas) != 2:
        raise SeqepError(f"algorithm.betas={list(a.betas)} must be two values [beta1, beta2] "
                         f"(free phase, nudge), e.g. [0.0, 0.1]")
    if a.name == "ep" and a.betas[1] == 0:
        raise SeqepError("algorithm.betas[1] is 0: EP needs a non-zero nudge beta2, e.g. [0.0, 0.1]")
    if a.tol is not None:
        _positive("algorithm.tol", a.tol)

    o = cfg.optimizer
    _one_of("optimizer.name", o.name, OPTIMIZERS)
    n = n_synapses(m.kind, list(m.fc))
    if len(o.lrs) != n:
        order = ["proj"] if m.kind == "sentiment" else ["proj1", "proj2", "proj3", "proj4"]
        order += [f"fc{i + 1}" for i in range(len(m.fc))]
        raise SeqepError(
            f"optimizer.lrs has {len(o.lrs)} value{'s' if len(o.lrs) != 1 else ''} but model '{m.kind}' "
            f"with fc={list(m.fc)} has {n} synapses: give one learning rate per synapse, projections first: "
            f"[{', '.join(order)}]")
    for i, lr in enumerate(o.lrs):
        _positive(f"optimizer.lrs[{i}]", lr, allow_zero=True)

    s = cfg.scheduler
    _one_of("scheduler.name", s.name, SCHEDULERS)
    _positive("scheduler.T_max", s.T_max)

    _one_of("logger.name", cfg.logger.name, LOGGERS)
    _one_of("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)

    t = cfg.trainer
    _positive("trainer.epochs", t.epochs, allow_zero=cfg.task != "train")
    for key in ("limit_train_batches", "limit_eval_batches"):
        if t[key] is not None:
            _positive(f"trainer.{key}", t[key])
    _positive("trainer.probe_every", t.probe_every, allow_zero=True)
    _positive("trainer.probe_size", t.probe_size)
    _positive("trainer.diagnostics_every", t.diagnostics_every, allow_zero=True)

    if cfg.task == "test" and cfg.checkpoint.load is None and cfg.checkpoint.resume is None:
        raise SeqepError("task=test needs a checkpoint: checkpoint.load=<run dir>/checkpoints/best.pt "
                         "(or an old-code checkpoint.tar)")


def check_group_options(overrides: list[str], conf_dir: str | Path) -> None:
    """Fail fast, in one line, on `group=option` when conf/<group>/<option>.yaml does not exist.

    Hydra's own message for this is correct but lists every file of the group and the search path over ~20
    lines; this names the valid options only. Anything this does not understand is left for Hydra to judge.
    """
    conf_dir = Path(conf_dir)
    for text in overrides:
        if text.startswith("-") or "=" not in text:
            continue
        key, value = text.split("=", 1)
        key = key.lstrip("+")
        group_dir = conf_dir / key
        if not key.isidentifier() or not group_dir.is_dir() or any(c in value for c in "()[]{}$*'\"\\"):
            continue  # a key, hydra/..., a sweep function (glob, range), an interpolation or a quoted value
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for choice in value.split(","):
            if choice and choice != "null" and choice not in options and not choice.endswith("_schema"):
                raise SeqepError(f"{key}={choice} is not an option of group '{key}'; choose one of: "
                                 f"{', '.join(options)} (files in {group_dir})")
