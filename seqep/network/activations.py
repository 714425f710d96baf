"""The five activations of SPEC.md §3, by the names the old code's `--act` used."""

from collections.abc import Callable

import torch


def my_hard_sig(x: torch.Tensor) -> torch.Tensor:
    """The paper's activation: clamp(x / 2, 0, 1)."""
    return torch.clamp(0.5 * x, 0.0, 1.0)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, 0.0, 1.0)


def my_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-4 (x - 0.5)))."""
    return torch.sigmoid(4.0 * (x - 0.5))


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "my_hard_sig": my_hard_sig,
    "hard_sigmoid": hard_sigmoid,
    "my_sigmoid": my_sigmoid,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}

# (floor, ceiling) of each activation's range: an output neuron "at the floor" is dead (SPEC.md §8, pitfall 2);
# diagnostics count units at either bound as saturated.
ACTIVATION_RANGE: dict[str, tuple[float, float]] = {
    "my_hard_sig": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "my_sigmoid": (0.0, 1.0), "sigmoid": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
}


# the states where an activation's slope jumps (its clamps): an EP nudge that takes a unit across one measures
# neither side's slope (seqep.estimators.EP's `adaptive_beta` reruns such examples with a smaller β)
ACTIVATION_KINKS: dict[str, tuple[float, float]] = {"my_hard_sig": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0)}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation={name!r} is not allowed; choose one of: {', '.join(ACTIVATIONS)}") from None
