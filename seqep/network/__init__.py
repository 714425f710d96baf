"""The network: states, Φ, closed-form local fields and the update rule (SPEC.md §1-3)."""

from seqep.network.activations import ACTIVATION_FLOOR, ACTIVATIONS, get_activation
from seqep.network.model import HopfieldEPNet, States, build_model, one_hot

__all__ = ["ACTIVATIONS", "ACTIVATION_FLOOR", "HopfieldEPNet", "States", "build_model", "get_activation", "one_hot"]
