"""EP-vs-BPTT step-by-step comparison (the GDU property, SPEC.md §4): computation, metrics, plots, `task=gdu`."""

from seqep.tasks.gdu.check import (
    KINDS,
    VARIANTS,
    BPTTSteps,
    GDUResult,
    bptt_steps,
    bptt_steps_reference,
    ep_steps,
    gdu_check,
    gdu_sweep,
    nudged_trajectories,
    state_names,
)
from seqep.tasks.gdu.metrics import compare, cosine, fit_slope, relative_error, relative_rmse, sign_agreement
from seqep.tasks.gdu.report import run_gdu

__all__ = ["KINDS", "VARIANTS", "BPTTSteps", "GDUResult", "bptt_steps", "bptt_steps_reference", "compare",
           "cosine", "ep_steps", "fit_slope", "gdu_check", "gdu_sweep", "nudged_trajectories", "relative_error",
           "relative_rmse", "run_gdu", "sign_agreement", "state_names"]
