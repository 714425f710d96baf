"""The tasks, and `dispatch(cfg)`: what every job does before and after its task.

validate -> run directory -> seed -> device -> logger group -> resolved config.yaml -> the task -> summary dict.
The task modules are imported only when their task runs (`task=bench` never imports the trainer):

    train.py   task=train (run_training) and task=test (run_test)
    gdu/       task=gdu: EP updates against BPTT gradients, step by step
    bench/     task=bench: throughput, GFLOP/s and memory
    baseline.py task=baseline: logistic regression on mean word vectors (the dataset's reference score)
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seqep.config import validate
from seqep.errors import SeqepError
from seqep.training.tracking import resolved_config
from seqep.utils import configure_threads, environment, keep_freed_memory, resolve_device, say, seed_everything

# task name -> (module, function); each function is `fn(cfg, run_dir) -> dict` (docs/architecture.md)
TASKS = {
    "train": ("seqep.tasks.train", "run_training"),
    "test": ("seqep.tasks.train", "run_test"),
    "gdu": ("seqep.tasks.gdu", "run_gdu"),
    "bench": ("seqep.tasks.bench", "run_bench"),
    "baseline": ("seqep.tasks.baseline", "run_baseline"),
}
DATA_ONLY = ("baseline",)  # tasks that build no network, learning rule or optimizer: their groups go unchecked


def _hydra_config() -> DictConfig | None:
    """Hydra's own config when running under @hydra.main (or the compose API), else None."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def resolve_run_dir(cfg: DictConfig) -> Path:
    """Hydra's output dir for this job; under the compose API `paths.run_dir` or a fresh outputs/<date>/<time>."""
    hc = _hydra_config()
    out = OmegaConf.select(hc, "runtime.output_dir", default=None) if hc is not None else None
    if out:
        path = Path(out)
    elif cfg.paths.run_dir:
        path = Path(cfg.paths.run_dir)
    else:
        now = datetime.now()
        path = Path(cfg.paths.output_root) / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S-%f}_{cfg.name}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sweep_group(hc: DictConfig | None) -> str | None:
    """The W&B group of a multirun job: the sweep directory's name with its date, e.g.
    `2025-11-28_12-00-00-123456_sweep_t_k`; None outside a multirun."""
    from hydra.types import RunMode

    if hc is None or OmegaConf.select(hc, "mode", default=None) != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir))
    return f"{sweep_dir.parent.name}_{sweep_dir.name}" if sweep_dir.parent.name else sweep_dir.name


def parallel_jobs(hc: DictConfig | None) -> int:
    """How many jobs of this sweep run side by side on this machine (joblib's n_jobs), for thread sharing."""
    if hc is None or "joblib" not in str(OmegaConf.select(hc, "launcher._target_", default="")).lower():
        return 1
    n_jobs = int(OmegaConf.select(hc, "launcher.n_jobs", default=1))
    return n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib: -1 = every CPU


def prepare(cfg: DictConfig) -> tuple[DictConfig, Path, dict[str, Any]]:
    """Take a loaded run's stored config (task=test/gdu, `seqep.tasks.stored`), validate, make the run directory,
    seed, resolve device and logger group, write config.yaml.

    Returns the job's config (a copy without the `hydra` node, every object node completed with its class's
    defaults, `device` resolved to what runs), the run dir, and what summary.json records of a stored config.
    """
    cfg = copy.deepcopy(cfg)
    if "hydra" in cfg:  # compose(..., return_hydra_config=True): ${hydra:...} does not resolve outside a run
        with open_dict(cfg):
            cfg.pop("hydra")
    provenance = {}
    if cfg.task in ("test", "gdu") and cfg.checkpoint.load:
        from seqep.tasks.stored import apply_stored, explicit_overrides

        provenance = apply_stored(cfg, explicit_overrides())
        if provenance:
            changed = "; changed on the command line: " + ", ".join(provenance["changed_from_stored"]) \
                if provenance["changed_from_stored"] else ""
            say(f"dataset, model and algorithm as stored with {provenance['config_from']}{changed}")
    validate(cfg)
    hc = _hydra_config()
    run_dir = resolve_run_dir(cfg)
    world = join_workers(cfg)
    if world.main:  # the other workers of a data-parallel run write nothing
        lock_run_dir(run_dir)
    configure_threads(parallel_jobs(hc))
    keep_freed_memory()
    seed_everything(cfg.seed)
    cfg.device = str(resolve_device(cfg.device))
    for logger in (cfg.logger or {}).values():  # loggers that group runs (W&B) group a sweep's jobs
        if logger is not None and "group" in logger and logger.group is None:
            logger.group = sweep_group(hc)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # an interpolation in a user override that points nowhere
        raise SeqepError(f"the config does not resolve: {str(err).splitlines()[0]}") from err
    if world.main:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    return cfg, run_dir, provenance


def join_workers(cfg: DictConfig):
    """A launcher that started several tasks for this job (SLURM `tasks_per_node` x `nodes`, submitit local): the
    tasks become the workers of one data-parallel training (`seqep.training.distributed`). Returns the World."""
    from seqep.training import distributed

    tasks = distributed.launcher_tasks()
    if tasks is None:
        return distributed.current()
    if cfg.task != "train":
        raise SeqepError(f"the launcher started {tasks.size} tasks for this job, but only task=train runs on several "
                         f"workers: use hydra.launcher.tasks_per_node=1 and hydra.launcher.nodes=1")
    return distributed.join_launcher_tasks(str(resolve_device(str(cfg.device))), int(cfg.trainer.devices))


_LOCKS: dict[Path, int] = {}  # run dir -> the open descriptor holding its lock


def lock_run_dir(run_dir: Path) -> None:
    """Own `run_dir` for this run: an exclusive `flock` on `<run_dir>/.lock` (the kernel drops it when the process
    dies, so a crashed run never leaves it stuck). A second live run in the same directory fails in one line
    before writing anything."""
    import fcntl

    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SeqepError(f"{run_dir} belongs to another run that is still going (pid {holder}): give this run its "
                         f"own directory (drop hydra.run.dir / paths.run_dir, or choose another)") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _LOCKS[run_dir] = fd


def check_run_dir_free(run_dir: str | Path) -> None:
    """Fail (one line) when a live run owns `run_dir`; used by run.py before Hydra writes into a given run dir."""
    run_dir = Path(run_dir)
    if (run_dir / ".lock").is_file():
        lock_run_dir(run_dir)
        unlock_run_dirs()


def unlock_run_dirs() -> None:
    import fcntl

    while _LOCKS:
        _, fd = _LOCKS.popitem()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def run_task(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Import the task's module and call it."""
    module_name, fn_name = TASKS[cfg.task]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise SeqepError(f"task={cfg.task} is not available in this install ({module_name} is missing)") from err
    return getattr(module, fn_name)(cfg, run_dir)


def dispatch(cfg: DictConfig) -> dict[str, Any]:
    """Run one job; returns its summary (Hydra hands it to callbacks as the job's return value)."""
    from seqep.training import distributed

    world = distributed.current()
    try:
        cfg, run_dir, provenance = prepare(cfg)
        world = distributed.current()
        summary = run_task(cfg, run_dir) or {}
    except Exception as err:
        if world.active and not world.main:  # a worker of a launcher's tasks: rank 0 records the job
            raise SeqepError(f"rank {world.rank} of {world.size}: {str(err).strip().splitlines()[0]}") from err
        raise
    finally:
        unlock_run_dirs()
        if distributed.launcher_tasks() is not None:  # this job's tasks were joined: leave the group
            distributed.leave()
    if not world.main:
        return summary
    summary = {"task": cfg.task, **summary, **provenance, "environment": environment(cfg.device)}
    tmp = run_dir / "summary.json.tmp"  # atomically: sweeps read it while other jobs run
    tmp.write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    os.replace(tmp, run_dir / "summary.json")
    return summary


def in_multirun() -> bool:
    """Whether this job is one of a multirun's (Hydra's `-m`, a sweep config or a search)."""
    from hydra.types import RunMode

    hc = _hydra_config()
    return hc is not None and OmegaConf.select(hc, "mode", default=None) == RunMode.MULTIRUN


def on_cluster() -> bool:
    """Whether this multirun's jobs are submitted by submitit (`launcher=slurm`, `slurm_local`): each job is then
    a process of its own that a scheduler may signal alone."""
    return OmegaConf.select(_hydra_config(), "launcher.submitit_folder", default=None) is not None


def run_job(cfg: DictConfig) -> Any:
    """What `run.py` runs for each job: `dispatch`; in a multirun a failing job is recorded, not raised, so every
    other job still runs and the sweep's table is written (`seqep.sweep`). A job stopped by a signal (Ctrl-C,
    SIGTERM) under a launcher that runs jobs on this machine is raised: the signal came to the sweep, which stops
    with it (on SLURM a signal is the scheduler's to one job: a time limit, a preemption; the others go on).
    Returns the summary, or the value of `optimized_metric` for a search (NaN when the job failed: the trial counts
    as failed)."""
    from seqep.training import distributed
    from seqep.training.stop import Interrupted

    try:
        summary = dispatch(cfg)
    except Exception as err:
        tasks = distributed.launcher_tasks()
        if tasks is not None and not tasks.main:  # a worker other than rank 0: rank 0 records the job
            raise
        if not in_multirun() or (isinstance(err, Interrupted) and not on_cluster()):
            raise
        summary = record_failure(cfg, err)
    metric = OmegaConf.select(cfg, "optimized_metric", default=None)
    if metric is None:
        return summary
    value = summary.get(metric)
    return float(value) if isinstance(value, (int, float)) and summary.get("status") == "completed" else math.nan


def record_failure(cfg: DictConfig, err: BaseException) -> dict[str, Any]:
    """A failed job's `summary.json` (`status: failed`, the one-line error, kept from the task's own if it wrote
    one) and `config.yaml` (if the job failed before writing it), the error on stderr, the traceback in run.log
    when it is not a user error."""
    import logging
    import sys

    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if not isinstance(err, (SeqepError, ValueError)):
        logging.getLogger("seqep").error("the job failed", exc_info=err)
        line = f"{type(err).__name__}: {line}"
    print(f"error: {line}", file=sys.stderr, flush=True)
    out = Path(OmegaConf.select(_hydra_config(), "runtime.output_dir", default=None))
    if not (out / "config.yaml").exists():  # failed in validation: the config as composed, resolved where it can be
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved_config(job)))
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    status = "interrupted" if summary.get("status") == "interrupted" else "failed"
    summary.update({"status": status, "error": summary.get("error") or line, "error_type": type(err).__name__})
    path.write_text(json.dumps(_jsonable(summary), indent=2) + "\n")
    return summary


def _jsonable(value: Any) -> Any:
    """Plain JSON: tensors/numpy scalars to numbers, NaN/Inf to null, unknown objects to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)

