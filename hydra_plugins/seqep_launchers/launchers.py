"""Hydra launchers that keep a sweep going when a job's *process* dies (killed, out of memory, node failure).

An exception inside a job is already recorded by the job itself (`seqep.tasks.run_job`); a dead process leaves
nothing behind, and Hydra's joblib and submitit launchers then abort the whole sweep before its table is written.
These subclasses record such a job as failed (`summary.json`: status `failed`, one-line error) and let the others
run, so the sweep's callback still writes the table (`seqep.sweep`). conf/launcher/*.yaml select them (this
package sits under `hydra_plugins`, where Hydra looks for launchers).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_joblib_launcher import _core as joblib_core
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
DIED = "the job's process died before it finished (killed, out of memory, or its node failed)"


def record_death(launcher: Any, idx: int, overrides: Sequence[str], reason: str = DIED) -> JobReturn:
    """Write the dead job's summary.json (unless it wrote one) and return what Hydra expects of a finished job:
    the summary, or NaN for a search (`optimized_metric`), so the sweep goes on."""
    job_dir = Path(str(launcher.config.hydra.sweep.dir)) / str(idx)
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if summary.get("status") not in ("completed", "failed"):
        summary = {**summary, "status": "failed", "error": reason, "error_type": "ProcessDied"}
        path.write_text(json.dumps(summary, indent=2) + "\n")
    log.error("job %d: %s", idx, summary.get("error"))
    metric = OmegaConf.select(launcher.config, "optimized_metric", default=None)
    value = summary if metric is None else summary.get(metric, math.nan) if summary["status"] == "completed" \
        else math.nan
    return JobReturn(overrides=list(overrides), working_dir=str(job_dir), task_name="run",
                     status=JobStatus.COMPLETED, _return_value=value)


class TolerantJoblibLauncher(JoblibLauncher):
    """Hydra's joblib launcher (same settings: `n_jobs`), with a process pool that outlives a dead worker: joblib's
    loky pool kills every worker when one dies, taking the jobs running beside it along. Each job runs in a
    spawned worker process that writes its pid into `<sweep dir>/.pids/<job>`; a job whose worker is gone before
    it returned is recorded as failed, the pool replaces the worker and the other jobs go on."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        (sweep_dir / ".pids").mkdir(parents=True, exist_ok=True)
        n_jobs = int(self.joblib.get("n_jobs") or 1)
        n_jobs = n_jobs if n_jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + n_jobs)  # joblib: -1 = every CPU
        log.info("%d processes launching %d jobs, sweep output dir: %s", n_jobs, len(job_overrides), sweep_dir)
        state = Singleton.get_state()
        jobs = {}
        with _ParentContext().Pool(n_jobs) as pool:
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                payload = cloudpickle.dumps((joblib_core.execute_job, (idx, overrides, self.hydra_context,
                                                                       self.config, self.task_function, state)))
                jobs[idx] = (overrides, pool.apply_async(_run_job_in_worker, (payload, str(sweep_dir / ".pids"))))
            results: dict[int, JobReturn] = {}
            while len(results) < len(jobs):
                for idx, (overrides, result) in jobs.items():
                    if idx in results:
                        continue
                    if result.ready():
                        try:
                            results[idx] = cloudpickle.loads(result.get())
                        except Exception as err:  # the job could not even be run (e.g. unpicklable)
                            results[idx] = record_death(self, idx, overrides, f"the job could not run: {err}")
                    elif _worker_died(sweep_dir / ".pids" / str(idx)):
                        results[idx] = record_death(self, idx, overrides)
                time.sleep(0.2)
        return [results[i] for i in sorted(results)]


class _ParentProcess(multiprocessing.get_context("spawn").Process):
    """A pool worker that may start processes of its own (a job with `trainer.devices=N` starts N workers); pool
    workers are daemons otherwise, and daemons cannot have children."""

    @property
    def daemon(self) -> bool:
        return False

    @daemon.setter
    def daemon(self, value: bool) -> None:
        pass


class _ParentContext(type(multiprocessing.get_context("spawn"))):
    Process = _ParentProcess


def _run_job_in_worker(payload: bytes, pid_dir: str) -> bytes:
    """Run one job in a pool worker; the JobReturn goes back cloudpickled (its config holds dynamic classes)."""
    import cloudpickle

    fn, args = cloudpickle.loads(payload)
    (Path(pid_dir) / str(args[0])).write_text(str(os.getpid()))
    return cloudpickle.dumps(fn(*args))


def _worker_died(pid_file: Path) -> bool:
    """Whether the worker process that started this job is gone (the job never returned)."""
    if not pid_file.is_file():
        return False  # not started yet
    try:
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


class _Tolerant:
    """A submitit job whose `results()` records a dead job instead of raising."""

    def __init__(self, job: Any, launcher: Any, idx: int, overrides: Sequence[str]) -> None:
        self.job, self.launcher, self.idx, self.overrides = job, launcher, idx, overrides

    def results(self) -> list[JobReturn]:
        try:
            return self.job.results()
        except Exception as err:
            reason = f"{DIED}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}"
            return [record_death(self.launcher, self.idx, self.overrides, reason)]


class _TolerantSubmitit:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        original = submitit.AutoExecutor.map_array
        launcher = self

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[Any]:
            jobs = original(executor, fn, *iterables)
            return [_Tolerant(job, launcher, idx, overrides)
                    for job, overrides, idx in zip(jobs, iterables[0], iterables[2])]

        submitit.AutoExecutor.map_array = map_array
        try:
            return super().launch(job_overrides, initial_job_idx)
        finally:
            submitit.AutoExecutor.map_array = original


class TolerantLocalLauncher(_TolerantSubmitit, LocalLauncher):
    """Hydra's submitit local launcher; a job whose process died is recorded as failed, the others' results stay."""


class TolerantSlurmLauncher(_TolerantSubmitit, SlurmLauncher):
    """Hydra's submitit SLURM launcher; a job whose process died is recorded as failed, the others' results stay."""
