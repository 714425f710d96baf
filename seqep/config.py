"""Config = a description of objects. Schemas, the checks that run before anything else, and `validate(cfg)`.

Every option of the object groups (dataset, model, algorithm, optimizer, scheduler, each logger) names the class
it builds with `_target_` and holds that class's arguments; `seqep.training.builders` builds it with
`hydra.utils.instantiate`. The schema of an option is *read from its class's signature* (`schema_for`), so each
default is written once, in the class (or in the option's YAML where seqep chooses otherwise than the class):

* the shipped options are registered in Hydra's ConfigStore as `<group>/<option>_schema` (their YAML lists it
  first in `defaults`), so a misspelt key or a wrong type fails while Hydra composes, naming the key;
* `check_objects(cfg)` applies the same kind of schema to every object node after composition — options of
  one's own from `hydra.searchpath` included — and rejects keys the class does not take (`+algorithm.TT=3`);
* `validate(cfg)` then builds every object once without data (the model on the meta device) so constructor
  errors surface before a run starts, and checks what spans groups: the model against the dataset's kind and
  classes, one learning rate per synapse. Every problem is one `SeqepError` line naming the key.

The plain sections (`trainer`, `checkpoint`, `paths`, `gdu`, `bench`) are dataclasses below; their defaults live
there only.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from seqep.errors import SeqepError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
OBJECT_GROUPS = ("dataset", "model", "algorithm", "optimizer", "scheduler")  # plus every node under `logger`
# Arguments seqep passes itself when it builds a group's object (never config keys).
SUPPLIED = {
    "model": ("seq_len", "embed_dim"),  # from the loaded data
    "algorithm": ("generator",),  # a seeded torch.Generator, saved in checkpoints (when the class takes one)
    "optimizer": ("params",),  # one parameter group per synapse
    "scheduler": ("optimizer", "last_epoch", "verbose"),
}
PROGRESS = ("auto", True, False)  # trainer.progress
INTERVALS = ("epoch", "step")  # scheduler.interval: step the schedule once per epoch or once per optimizer step
DEFAULT_INTERVAL = "epoch"
# seqep's own keys of a group, beside the class's arguments: (name, type, default).
EXTRA_KEYS = {
    "optimizer": [("_partial_", bool, True),
                  ("lrs", Optional[list[float]], None)],  # one lr per synapse, projections first; null = `lr`
    "scheduler": [("_partial_", bool, True),
                  ("interval", str, DEFAULT_INTERVAL)],  # one of INTERVALS
}


# ------------------------------------------------------------------------------------------ the plain sections
@dataclass
class TrainerConfig:
    epochs: int = 15
    limit_train_batches: Optional[int] = None  # null = every batch; an int = that many per epoch (smoke tests)
    limit_eval_batches: Optional[int] = None
    log_every: int = 50  # batches between batch-level rows in metrics.jsonl (0 = none)
    probe_every: int = 1  # epochs between EP-vs-BPTT gradient probes; 0 = never
    probe_size: int = 64  # examples in the fixed probe batch (the first of the validation split)
    probe_f64: bool = True  # the probe also compares with a float64 EP gradient (ep/probe/f64/): a float64 model copy
    diagnostics_every: int = 10  # batches between EP diagnostics (relax/, out/, attn/, grad/ metrics); 0 = off
    diagnostics_tol: float = 1e-3  # without algorithm.tol: an example whose last state change exceeds this is unsettled
    progress: Any = "auto"  # tqdm progress bar: auto (only when stderr is a terminal) | true | false
    stop_on_dead: bool = True  # stop (failed) after an epoch in which every output was tied: nothing can be learnt
    devices: int = 1  # worker processes of one training on this machine (data-parallel; one GPU each on CUDA)


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
    """task=gdu (seqep.tasks.gdu): EP updates against BPTT gradients, step by step."""

    n_examples: int = 20  # validation examples compared (the old code used 20)
    beta: Optional[float] = None  # the nudge of the check; null = the algorithm's betas[1]
    betas: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1])  # the β sweep
    n_elements: int = 3  # random elements per parameter in the cumulative plots
    dtype: str = "float64"  # float64 makes the β -> 0 comparison meaningful


@dataclass
class BenchConfig:
    """task=bench (seqep.tasks.bench): throughput and memory of the relaxation and training steps."""

    shapes: list[str] = field(default_factory=lambda: ["snli", "imdb", "default"])
    repeats: int = 3
    # shapes (of `shapes`) at which the closed path's free phase and EP step are also timed in every other
    # precision this device runs (fp32, bf16-mixed where bfloat16 is fast, tf32 on CUDA); the rows' own precision
    # is the top-level `precision`
    precision_shapes: list[str] = field(default_factory=lambda: ["snli", "default"])
    memory_T: list[int] = field(default_factory=lambda: [20, 50, 100, 200])  # peak memory against T
    memory_shape: str = "snli"
    tol: Optional[float] = 1e-4  # the early-stop tolerance measured as an option
    old_code_batches: bool = True  # also time the old code's autograd-of-Φ step
    ceiling_size: Optional[int] = None  # matmul size of the GFLOP/s ceiling; null = 2048 on CPU, 8192 on GPU
    compile: bool = False  # also time a torch.compile'd step
    workers: Optional[list[int]] = None  # data-parallel rows: worker counts; null = [1, 2] on CPU, [1, every GPU]
    parallel_shape: str = "snli"  # the shape of the data-parallel rows ([] workers = none)
    # time to accuracy (seqep/tasks/bench/tta.py), on the run's own dataset: null = not measured
    tta_target: Optional[float] = None  # the validation accuracy to reach, e.g. 0.72 on the default data
    tta_variants: Optional[list[str]] = None  # null = every way of seqep/tasks/bench/tta.py's VARIANTS
    tta_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tta_max_epochs: int = 15


@dataclass
class BaselineConfig:
    """task=baseline (seqep.tasks.baseline): logistic regression on mean word vectors, the dataset's reference."""

    l2: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])  # chosen on validation accuracy
    max_iter: int = 500  # L-BFGS iterations per fit


@dataclass
class SeqepConfig:
    task: str = "train"  # train | test | gdu | bench | baseline (seqep.tasks.TASKS)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | float64
    # seqep.precision.PRECISIONS: fp32 | bf16-mixed (free phase and evaluation in bfloat16; nudged phases, EP's
    # gradient and the optimizer float32) | bf16-delta (also the nudged phases' first-weight products on the
    # deviation from the free state) | tf32 (CUDA only)
    precision: str = "fp32"
    # the run directory's and W&B run's name: ep_rt_snippets (a dataset without `name`: its class, lower case);
    # test_<loaded run>, gdu_<...> for the other tasks, baseline_<dataset> (`run_name`)
    name: str = ("${run_name:${task},${target_name:${algorithm._target_}}_${oc.select:dataset.name,"
                 "${target_name:${dataset._target_}}},${checkpoint.load},${oc.select:dataset.name,"
                 "${target_name:${dataset._target_}}}}")
    sweep_name: str = "sweep"  # a multirun's directory (<time>_<sweep_name>) and W&B group: the same for every job
    optimized_metric: Optional[str] = None  # a search (hparams_search=optuna): the summary value each job returns
    dataset: Any = MISSING  # the object groups: typed by each option's own schema
    model: Any = MISSING
    algorithm: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None  # null = constant learning rates
    logger: Any = field(default_factory=dict)  # name -> logger node; empty = metrics files only
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    gdu: GduConfig = field(default_factory=GduConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


# ------------------------------------------------------------------------------------------ schemas
def _config_type(annotation: Any, default: Any) -> Any:
    """An OmegaConf-compatible type for a signature annotation: `float | Tensor` -> float, `Sequence[float]` ->
    list[float], `int | None` -> Optional[int]; Any where OmegaConf cannot type it."""
    simple = (bool, int, float, str)
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        if isinstance(default, simple):
            return type(default)
        return Any
    optional = default is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = optional or len(args) < len(typing.get_args(annotation))
        chosen = next((t for t in (float, int, bool, str) if t in args), None)
        if chosen is None and len(args) == 1:
            chosen = _config_type(args[0], default)
        result = chosen if chosen is not None else Any
    elif origin in (list, tuple, collections.abc.Sequence, typing.Sequence):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        element = _config_type(args[0], None) if args else Any
        result = list[element] if element is not Any else list[Any]
    elif annotation in simple:
        result = annotation
    else:
        result = Any
    return Optional[result] if optional and result is not Any else result


def _representable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_representable(v) for v in value)


def _locate(path: str, key: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as err:
        cause = err.__cause__ or err
        raise SeqepError(f"{key}._target_={path!r} cannot be imported ({type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''}); check the name, and put the folder "
                         f"of your module on PYTHONPATH (e.g. PYTHONPATH=. python run.py ...)") from None


@lru_cache(maxsize=None)
def schema_for(target: str, group: str) -> type | None:
    """The dataclass schema of a group option building `target`: `_target_`, seqep's extra keys of the group, then
    every argument of the target's signature with its default (arguments seqep supplies left out). None when the
    target takes `**kwargs` (any key is then accepted)."""
    obj = _locate(target, group)
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    try:
        hints = typing.get_type_hints(obj if dataclasses.is_dataclass(obj) or not inspect.isclass(obj)
                                      else obj.__init__)
    except Exception:
        hints = {}
    fields: list[tuple] = [("_target_", str, field(default=target))]
    for name, kind, default in EXTRA_KEYS.get(group, []):
        fields.append((name, kind, field(default=default)))
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind is inspect.Parameter.VAR_POSITIONAL or name in SUPPLIED.get(group, ()):
            continue
        default = param.default
        if default is not inspect.Parameter.empty and not _representable(default):
            continue  # e.g. a tensor or function default: left to the class
        kind = _config_type(hints.get(name, param.annotation), None if default is inspect.Parameter.empty else default)
        if default is inspect.Parameter.empty:
            spec = field(default=MISSING)
        elif isinstance(default, (list, tuple)):
            spec = field(default_factory=lambda d=default: list(d))
        else:
            spec = field(default=default)
        fields.append((name, kind, spec))
    name = getattr(obj, "__name__", "target")
    return dataclasses.make_dataclass(f"{name}Schema", fields)


def _option_targets(conf_dir: Path = CONF_DIR) -> dict[tuple[str, str], str]:
    """(group, option) -> `_target_` of every shipped object option (conf/<group>/<option>.yaml)."""
    found = {}
    for group in (*OBJECT_GROUPS, "logger"):
        for path in sorted((conf_dir / group).glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            if isinstance(data, dict):
                data.pop("defaults", None)
            if group == "logger" and isinstance(data, dict) and len(data) == 1:  # wandb.yaml: {wandb: {_target_}}
                data = next(iter(data.values()))
            if isinstance(data, dict) and isinstance(data.get("_target_"), str):
                found[(group, path.stem)] = data["_target_"]
    return found


def register_configs(extra_dirs: list[Path] = ()) -> None:
    """Store the top-level schema and `<group>/<option>_schema` for every option in conf/ and in `extra_dirs` (the
    folders of `hydra.searchpath`, where one's own options live). Idempotent."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=SeqepConfig)
    cs.store(group="paths", name="paths_schema", node=PathsConfig)
    targets = {}
    for conf_dir in [CONF_DIR, *extra_dirs]:
        targets |= _option_targets(Path(conf_dir))
    for (group, option), target in targets.items():
        schema = schema_for(target, group)
        if schema is not None:
            cs.store(group=group, name=f"{option}_schema", node=schema)


def target_name(target: str) -> str:
    """`seqep.estimators.EP` -> `ep`: the short name of a class (run directory names)."""
    return str(target).rsplit(".", 1)[-1].lower()


def run_name(task: str, trained: str, load: str | None, dataset: str | None = None) -> str:
    """`ep_rt_snippets` for training; `test_ep_rt_snippets` for task=test of a run dir named
    `<time>_ep_rt_snippets` (or its checkpoint), `gdu_...`/`bench_...` likewise; `baseline_rt_snippets` (no
    learning rule runs) for task=baseline."""
    if task == "train":
        return trained
    if task == "baseline" and dataset:
        return f"baseline_{dataset}"
    if load:
        from seqep.training.checkpoint import run_dir_of

        run = run_dir_of(Path(str(load)))
        label = re.sub(r"^\d\d-\d\d-\d\d(-\d+)?_", "", run.name) or run.name  # the run dir's time prefix dropped
        return f"{task}_{label}"
    return f"{task}_{trained}"


OmegaConf.register_new_resolver("target_name", target_name, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
register_configs()


# ------------------------------------------------------------------------------------------ checks
def object_nodes(cfg: DictConfig) -> list[tuple[str, str, DictConfig]]:
    """(config key, group, node) of every object node: the groups, then each logger."""
    nodes = []
    for group in OBJECT_GROUPS:
        node = OmegaConf.select(cfg, group, default=None)
        if node is not None:
            nodes.append((group, group, node))
    loggers = OmegaConf.select(cfg, "logger", default=None) or {}
    for name in loggers:
        if loggers[name] is not None:
            nodes.append((f"logger.{name}", "logger", loggers[name]))
    return nodes


def check_objects(cfg: DictConfig) -> None:
    """Give every object node its class's schema, in place: unknown keys (typos, `+key` additions) and wrong
    types fail naming the key; keys the YAML left out take the class's defaults. Raises SeqepError."""
    for key, group, node in object_nodes(cfg):
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise SeqepError(f"{key} has no _target_: every {group} option names the class it builds "
                             f"(e.g. _target_: my_module.MyClass)")
        schema = schema_for(str(node._target_), group)
        if schema is None:
            continue
        allowed = [f.name for f in dataclasses.fields(schema)]
        unknown = [k for k in node if k not in allowed]
        if unknown:
            keys = ", ".join(k for k in allowed if not k.startswith("_"))
            raise SeqepError(f"{key}.{unknown[0]} is not a key of {node._target_}; its keys are: {keys}")
        try:  # merged as plain data: a node typed in another process (joblib, submitit) has another schema class
            typed = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=False))
        except OmegaConfBaseException as err:
            raise SeqepError(f"{key}.{err.full_key or ''}: {str(err).splitlines()[0]}") from None
        missing = [k for k in allowed if OmegaConf.is_missing(typed, k)]
        if missing:
            raise SeqepError(f"{key}.{missing[0]} is required by {node._target_}: set it in the option's YAML "
                             f"or with {key}.{missing[0]}=...")
        with open_dict(cfg):
            OmegaConf.update(cfg, key, typed, merge=False)


def validate(cfg: DictConfig) -> None:
    """`check_objects`, then every object built once without data and the checks that span groups. SeqepError."""
    from seqep.tasks import TASKS
    from seqep.training.builders import dry_run
    from seqep.utils import check_device, resolve_dtype

    if cfg.task not in TASKS:
        raise SeqepError(f"task={cfg.task!r} is not allowed; choose one of: {', '.join(TASKS)}")
    check_device(str(cfg.device))
    resolve_dtype(str(cfg.dtype))
    check_precision_key(cfg)
    check_objects(cfg)
    dry_run(cfg)
    t = cfg.trainer
    for key in ("epochs", "probe_size", "limit_train_batches", "limit_eval_batches"):
        value = t[key]
        if value is not None and (value < 0 or (value == 0 and not (key == "epochs" and cfg.task != "train"))):
            raise SeqepError(f"trainer.{key}={value} must be > 0")
    if t.devices < 1:
        raise SeqepError(f"trainer.devices={t.devices} must be >= 1 (worker processes of one training)")
    batch = OmegaConf.select(cfg, "dataset.batch_size", default=None)
    if t.devices > 1 and isinstance(batch, int) and batch < t.devices:
        raise SeqepError(f"dataset.batch_size={batch} is smaller than trainer.devices={t.devices}: the batch is "
                         f"split across the workers, so give each at least one example")
    if t.devices > 1 and cfg.task != "train":
        raise SeqepError(f"trainer.devices={t.devices}: only task=train runs on several workers; task={cfg.task} "
                         f"runs in one process, so drop trainer.devices")
    if t.progress not in PROGRESS:
        raise SeqepError(f"trainer.progress={t.progress!r} is not allowed; choose one of: auto, true, false")
    for key in ("probe_every", "diagnostics_every", "log_every"):
        if t[key] < 0:
            raise SeqepError(f"trainer.{key}={t[key]} must be >= 0 (0 = off)")
    for key, value, least in (("checkpoint.save_every", cfg.checkpoint.save_every, 1),
                              ("bench.repeats", cfg.bench.repeats, 1), ("gdu.n_examples", cfg.gdu.n_examples, 1),
                              ("gdu.n_elements", cfg.gdu.n_elements, 0)):
        if value < least:
            raise SeqepError(f"{key}={value} must be >= {least}")
    if cfg.task == "test" and cfg.checkpoint.load is None and cfg.checkpoint.resume is None:
        raise SeqepError("task=test needs a checkpoint: checkpoint.load=<run dir>/checkpoints/best.pt "
                         "(or an old-code checkpoint.tar)")


def check_precision_key(cfg: DictConfig) -> None:
    """`precision` is one of `seqep.precision.PRECISIONS`, float32 data for anything but fp32, tf32 on CUDA."""
    from seqep.precision import check_precision

    precision = str(cfg.precision)
    try:
        check_precision(precision)
    except ValueError as err:
        raise SeqepError(str(err)) from None
    if precision != "fp32" and str(cfg.dtype) != "float32":
        raise SeqepError(f"precision={precision} needs dtype=float32 (got dtype={cfg.dtype}): float64 is for "
                         f"checks; use precision=fp32 with dtype=float64")
    device = str(cfg.device)
    if precision == "tf32" and (device in ("cpu", "mps") or (device == "auto" and not _cuda_available())):
        raise SeqepError(f"precision=tf32 needs a CUDA device (device={device} runs on "
                         f"{'cpu' if device == 'auto' else device}); use precision=bf16-mixed or precision=fp32")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def search_dirs(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[Path] | None:
    """conf/ and the `file://` folders of a `hydra.searchpath=[...]` override; None when one is not a folder."""
    dirs = [conf_dir]
    for text in overrides:
        if text.lstrip("+").startswith("hydra.searchpath="):
            for entry in re.split(r"[\[\],\s]+", text.split("=", 1)[1]):
                entry = entry.strip("'\"")
                if not entry:
                    continue
                if not entry.startswith("file://"):
                    return None
                dirs.append(Path(entry[len("file://"):]))
    return dirs


def check_group_options(overrides: list[str], conf_dir: str | Path = CONF_DIR) -> None:
    """Fail fast, in one line, on `group=option` when no <search dir>/<group>/<option>.yaml exists.

    Hydra's own message for this is correct but lists every file of the group and the search path over ~20
    lines; this names the valid options only. Anything this does not understand is left for Hydra to judge.
    """
    dirs = search_dirs(overrides, Path(conf_dir))
    if dirs is None:
        return
    for text in overrides:
        if text.startswith("-") or "=" not in text:
            continue
        key, value = text.split("=", 1)
        key = key.lstrip("+")
        group_dirs = [d / key for d in dirs if (d / key).is_dir()]
        if not key.isidentifier() or not group_dirs or any(c in value for c in "()[]{}$*'\"\\"):
            continue  # a key, hydra/..., a sweep function (glob, range), an interpolation or a quoted value
        options = sorted({p.stem for d in group_dirs for p in d.glob("*.yaml")})
        if "null" in value.split(","):
            instead = f"{key}=none" + (f" or ~{key}" if "none" in options else "") if "none" in options else f"~{key}"
            raise SeqepError(f"{key}=null: Hydra cannot set a config group to null on the command line; use "
                             f"{instead} to drop it")
        for choice in value.split(","):
            if choice and choice not in options and not choice.endswith("_schema"):
                raise SeqepError(f"{key}={choice} is not an option of group '{key}'; choose one of: "
                                 f"{', '.join(options)} (files in {', '.join(str(d) for d in group_dirs)})")
