"""Learning-rate schedules of seqep's own (torch's are used directly from YAML, e.g. CosineAnnealingLR)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warm-up from 0 to each group's learning rate over `warmup_steps`, then cosine annealing down to
    `eta_min` at `total_steps`, constant after. Meant to step once per optimizer step (`interval: step`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps={total_steps} must be > warmup_steps={warmup_steps}")
        if eta_min < 0:
            raise ValueError(f"eta_min={eta_min} must be >= 0")
        self.warmup_steps, self.total_steps, self.eta_min = warmup_steps, total_steps, eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t = self.last_epoch  # optimizer steps taken so far
        if t < self.warmup_steps:
            return [base * (t + 1) / (self.warmup_steps + 1) for base in self.base_lrs]
        progress = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return [self.eta_min + (base - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
                for base in self.base_lrs]
