"""Data-parallel training with torch.distributed: one run, several worker processes (README "Several GPUs and
nodes").

EP is data-parallel by nature: every worker relaxes its shard of the global batch and the estimator fills `p.grad`
with the mean over that shard (no backward pass, so DDP's autograd hooks would never fire); the shards' gradients,
weighted by their sizes, are summed across workers, so every worker steps its optimizer on the gradient of the whole
batch, exactly as one process would (up to float summation order). Batch statistics and evaluation are sharded and
summed the same way. Only rank 0 writes (checkpoints, metrics, loggers, summary.json) or prints.

Where the workers come from:

- `trainer.devices=N` (`launch`): seqep starts N processes on this machine after Hydra has composed the config and
  made the one run directory; gloo on CPU, NCCL on GPUs (worker r on `cuda:r`).
- a SLURM job with several tasks (`launcher=slurm hydra.launcher.nodes=2 hydra.launcher.tasks_per_node=4`, or
  `submitit_local` with `tasks_per_node`): every task is one worker (`join_launcher_tasks`); the rendezvous comes
  from the job's environment (submitit: the first node's host name, a port drawn from the job id).

    world = current()            # World(rank, size, local_rank); size 1 outside a distributed run
    world.reduce_sums([loss, correct, n])      # summed over workers
    world.average_gradients(net, n_local, n)   # p.grad of every worker = the gradient of the global batch
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from seqep.errors import SeqepError

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a silent worker before it fails
STOP_GRACE_S = 20.0  # after a worker failed: how long the others get to stop before they are killed


@dataclass(frozen=True)
class World:
    """This process's place among the workers of a run (rank 0 writes; size 1 = not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def part(self, n: int) -> slice:
        """This worker's contiguous share of `n` items (shares differ by at most one; the first get the extra)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def reduce_sums(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """`values` summed over every worker (float64 on the wire), in order."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params: Sequence[torch.nn.Parameter], n_local: int, n_total: int) -> None:
        """`p.grad` (the mean over this worker's `n_local` examples) becomes the mean over all `n_total`."""
        if not self.active:
            return
        weight = n_local / n_total
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad.mul_(weight))
        for work in [dist.all_reduce(g, async_op=True) for g in grads]:
            work.wait()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights on every worker (they are built from the same seed; this makes sure)."""
        if self.active:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


_WORLD = World()
_LAUNCHED = False  # a worker started by `launch` (its parent passes signals on)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals a training run stops cleanly on: SIGTERM and SIGINT; SIGTERM only in a worker of `launch`."""
    return (signal.SIGTERM,) if _LAUNCHED else (signal.SIGTERM, signal.SIGINT)


def current() -> World:
    """This process's `World` (size 1 unless it is a worker of a distributed run)."""
    return _WORLD


def worker_device(device: str, world: World) -> str:
    """The device of this worker: `cuda` (or `cuda:k`) means one GPU per worker on each machine, `cuda:<local
    rank>` (the one GPU a job sees when SLURM gives each task its own); anything else as it is."""
    if not world.active or not device.startswith("cuda"):
        return device
    count = torch.cuda.device_count()
    return f"cuda:{world.local_rank % max(count, 1)}"


def cuda_index(device: str, world: World) -> int:
    """The GPU index a CUDA worker takes (`torch.cuda.set_device` needs one): its `worker_device`'s, and for a
    group of one (the bench's one-worker row, `device=cuda`) the index written in `device`, else 0."""
    index = torch.device(worker_device(device, world)).index
    return 0 if index is None else index


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def check_devices(devices: int, device: str) -> None:
    """`trainer.devices` against the machine: one GPU per worker."""
    if devices > 1 and device.startswith("cuda") and devices > torch.cuda.device_count():
        raise SeqepError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): one worker per GPU, so use trainer.devices<={torch.cuda.device_count()}")


# ------------------------------------------------------------------------------------------ joining
def _init(world: World, device: str, init_method: str) -> None:
    global _WORLD
    if device.startswith("cuda"):
        torch.cuda.set_device(cuda_index(device, world))
    dist.init_process_group(backend_for(device), init_method=init_method, rank=world.rank,
                            world_size=world.size, timeout=TIMEOUT)
    _WORLD = world


def leave() -> None:
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def launcher_tasks() -> World | None:
    """The workers a launcher started for one job: a submitit job (SLURM, or submitit's local executor) with more
    than one task; None otherwise."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks < 2:
        return None
    local_size = max(1, env.num_tasks // max(1, env.num_nodes))
    return World(env.global_rank, env.num_tasks, env.local_rank, local_size)


def join_launcher_tasks(device: str, devices: int) -> World:
    """Join the tasks of a submitit job into one process group (rendezvous: the first node, a port from the job
    id); returns this task's World. Does nothing (size 1) outside such a job or when already joined."""
    if _WORLD.active:
        return _WORLD
    world = launcher_tasks()
    if world is None:
        return _WORLD
    if devices not in (1, world.local_size):
        raise SeqepError(f"trainer.devices={devices} but the launcher started {world.local_size} task(s) per node: "
                         f"under a launcher the tasks are the workers, so leave trainer.devices=1 (or set it to "
                         f"hydra.launcher.tasks_per_node)")
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment()
    if world.rank > 0:
        quiet()
    _init(world, device, f"tcp://{env.master_addr}:{env.master_port}")
    return world


def in_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ


def quiet() -> None:
    """A worker other than rank 0 prints nothing but errors: stdout to /dev/null, no warnings, logging at ERROR."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("seqep").setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------ launching
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_to(run_log: str | None) -> None:
    """Rank 0 of `launch`: say() lines as Hydra's job logging does (conf/hydra/job_logging/seqep.yaml): plain on
    stdout and, with time and level, appended to the run's run.log."""
    import logging.config

    from omegaconf import OmegaConf

    from seqep.config import CONF_DIR

    spec = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "hydra" / "job_logging" / "seqep.yaml"))
    if run_log:
        spec["handlers"]["file"].update(filename=run_log, mode="a")
    else:
        del spec["handlers"]["file"]
        spec["root"]["handlers"].remove("file")
    logging.config.dictConfig(spec)


def _worker(rank: int, size: int, init_method: str, device: str, threads: int, run_log: str | None,
            fn: Callable[..., Any], args: tuple, conn: Any) -> None:
    """One worker of `launch`: join the group, run `fn(*args)`, send back ("ok", result) or the error."""
    global _LAUNCHED
    _LAUNCHED = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes Ctrl-C on as SIGTERM (`launch`)
    _stop_with_parent()
    if rank > 0:
        quiet()
    else:
        _log_to(run_log)
    torch.set_num_threads(threads)
    status = 0
    try:
        _init(World(rank, size, rank, size), device, init_method)
        result = fn(*args)
        conn.send(("ok", result))
        with contextlib.suppress(Exception):  # leave together: gloo can abort a process that tears down alone
            dist.barrier()
    except BaseException as err:  # reported to the parent, which stops the others and says it in one line
        status = getattr(err, "exit_status", 1)
        user = isinstance(err, (SeqepError, ValueError))
        line = (str(err).strip().splitlines() or [""])[0]
        if not user:
            traceback.print_exc(file=sys.stderr)
            line = f"{type(err).__name__}: {line}"
        with contextlib.suppress(Exception):
            conn.send(("error", type(err).__name__, line, getattr(err, "signal_name", None)))
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            leave()
    sys.exit(status)


def _stop_with_parent() -> None:
    """Linux: SIGTERM this worker when the process that launched it dies (even by SIGKILL), so no worker outlives
    its run; the workers then stop together as after any SIGTERM."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class WorkerFailed(SeqepError):
    """A worker of a distributed run failed; the others were stopped. `exit_status` as a one-process run's."""

    def __init__(self, message: str, exit_status: int = 2, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.exit_status, self.signal_name = exit_status, signal_name


def launch(fn: Callable[..., Any], args: tuple, devices: int, device: str, run_dir: Path | None = None) -> Any:
    """Run `fn(*args)` in `devices` worker processes on this machine, joined into one process group; returns rank
    0's result. A failure on any rank stops every rank and raises `WorkerFailed` with one line naming the rank.
    SIGTERM / SIGINT are passed on to the workers, which stop together after the current batch."""
    check_devices(devices, device)
    ctx = multiprocessing.get_context("spawn")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    threads = max(1, torch.get_num_threads() // devices) if not device.startswith("cuda") else 1
    run_log = str(run_dir / "run.log") if run_dir is not None else None
    procs, conns = [], []
    for rank in range(devices):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, name=f"seqep-rank{rank}",
                        args=(rank, devices, init_method, device, threads, run_log, fn, args, child))
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)

    received: list[str] = []

    def forward(signum: int, frame: Any) -> None:
        """Ctrl-C reaches every process of the terminal; the workers ignore SIGINT and take one SIGTERM from
        here instead, then stop together at the next batch (a second signal: at once)."""
        received.append(signal.Signals(signum).name)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)

    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: the workers take signals themselves
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    results: dict[int, tuple] = {}
    failed: tuple[int, tuple] | None = None
    try:
        pending = {p.sentinel: r for r, p in enumerate(procs)} | {c: r for r, c in enumerate(conns)}

        def receive(rank: int) -> None:  # a worker's one message, read once (none if its pipe broke)
            pending.pop(conns[rank], None)
            with contextlib.suppress(EOFError, OSError):
                results[rank] = conns[rank].recv()

        while pending and failed is None:
            for ready in wait(list(pending)):
                if ready not in pending:  # a message already read with its process's exit
                    continue
                rank = pending.pop(ready)
                if ready in conns:
                    receive(rank)
                else:
                    procs[rank].join()
                    if conns[rank] in pending and conns[rank].poll():  # its message came with its exit
                        receive(rank)
                    code = procs[rank].exitcode
                    # a worker that already sent its result has done its part, whatever its teardown did
                    if code != 0 and failed is None and rank not in results:
                        what = (f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with "
                                f"status {code}")
                        failed = (rank, ("error", "ProcessDied", f"its process {what}", None))
                if failed is None and results.get(rank, ("",))[0] == "error":
                    failed = (rank, results[rank])
        if failed is not None:
            _stop_all(procs)
            for rank in sorted(results):  # a stop asked for by a signal: every rank stopped at the same batch
                if results[rank][0] == "error" and results[rank][1] == "Interrupted":
                    sig = received[0] if received else results[rank][3]
                    line = results[rank][2].replace("SIGTERM", sig, 1)
                    raise WorkerFailed(line, 143 if sig == "SIGTERM" else 130, sig)
            rank, (_, _, line, _) = failed
            raise WorkerFailed(f"rank {rank} of {devices}: {line}")
        return results[0][1]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_all(procs)


def _stop_all(procs: list[Any], grace: float = STOP_GRACE_S) -> None:
    """Let the workers end on their own (after a failure the others see the broken group and exit, after a signal
    they stop together), then SIGTERM what still runs, then SIGKILL."""
    deadline = time.monotonic() + grace / 2
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        with contextlib.suppress(OSError):
            p.terminate()
    for p in alive:
        p.join(grace / 2)
        if p.is_alive():
            p.kill()
            p.join()
