"""A learning rule that fails on one worker of a data-parallel run, for tests/test_distributed.py (imported by the
spawned workers through `algorithm._target_=distributed_rules.FailOnRank`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import torch

from seqep.estimators import EP
from seqep.training import distributed


class FailOnRank(EP):
    """Symmetric EP that raises (`how=raise`) or SIGKILLs its own process (`how=kill`) on worker `rank` at its
    `at_batch`-th training batch."""

    def __init__(self, T: int = 20, K: int = 8, betas: Sequence[float] = (0.0, 0.1), variant: str = "symmetric",
                 field_mode: str = "closed", tol: float | None = None, generator: torch.Generator | None = None,
                 rank: int = 1, at_batch: int = 9, how: str = "raise", updates: str = "alternating",
                 adaptive_beta: bool = False) -> None:
        super().__init__(T, K, betas, variant, field_mode, tol, generator, updates, adaptive_beta)
        self.rank, self.at_batch, self.how, self.calls = rank, at_batch, how, 0

    def compute_gradients(self, net, x, y):
        self.calls += 1
        if distributed.current().rank == self.rank and self.calls == self.at_batch:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected failure")
        return super().compute_gradients(net, x, y)
