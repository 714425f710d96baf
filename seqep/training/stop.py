"""Clean stops: SIGTERM (what `timeout`, docker, Kubernetes and SLURM's scancel send) and SIGINT (Ctrl-C) end a
training run after the current batch, with its loggers finished (a non-success state, every epoch kept),
`summary.json` saying `interrupted` and one line saying how to resume. A second signal stops at once."""

from __future__ import annotations

import signal
import threading
from typing import Any

from seqep.errors import SeqepError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}  # the shell's 128 + signal number


class Interrupted(SeqepError):
    """The run was asked to stop; `exit_status` is what run.py exits with."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name, self.exit_status = signal_name, EXIT_STATUS.get(signal_name, 2)


class StopSignals:
    """`with StopSignals() as stop:` ... `stop.check(...)` between batches raises `Interrupted` once a signal came.
    Only the main thread can take signals; elsewhere it does nothing."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
        self.signals, self.received = signals, None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        for sig, previous in self._previous.items():  # a second signal: the default (stop now)
            signal.signal(sig, previous)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def check(self, where: str, last_good: str, run_dir: Any, received: str | None = None) -> None:
        """Raise `Interrupted` when a signal came (`received`: one that came to another worker of the run)."""
        received = received or self.received
        if received:
            raise Interrupted(f"stopped by {received} {where}; the last good checkpoint is {last_good}; "
                              f"continue with: python run.py checkpoint.resume={run_dir}", received)
