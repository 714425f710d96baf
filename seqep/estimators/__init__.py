"""Estimators: how parameter gradients come out of the dynamics. One interface (`compute_gradients` fills
`p.grad`), so EP variants, BPTT and a learning rule of one's own swap without touching a model."""

from seqep.estimators.base import Estimator, StepOutput, grads_by_name, mse_loss
from seqep.estimators.bptt import BPTT, TRUNCATIONS
from seqep.estimators.ep import EP, VARIANTS

__all__ = ["BPTT", "EP", "Estimator", "StepOutput", "TRUNCATIONS", "VARIANTS", "grads_by_name", "mse_loss"]
