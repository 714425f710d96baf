"""The network: states, Φ, closed-form local fields and the update rule (SPEC.md §1-3), and the interface
(`Network`) the relaxation, estimators, diagnostics and GDU check rely on."""

from seqep.network.activations import ACTIVATION_KINKS, ACTIVATION_RANGE, ACTIVATIONS, get_activation
from seqep.network.model import HopfieldEPNet, build_model, one_hot
from seqep.network.protocol import Network, States

__all__ = ["ACTIVATIONS", "ACTIVATION_KINKS", "ACTIVATION_RANGE", "HopfieldEPNet", "Network", "States", "build_model",
           "get_activation", "one_hot"]
