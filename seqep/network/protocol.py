"""What the rest of seqep calls on a network: `relax`, the estimators, diagnostics and the GDU check use only
these members, so a second network type plugs in by providing them (and `nn.Module`'s parameters). `relax` runs
EP's phases through the allocation-free `seqep.phase.ClosedFormPhase` for `HopfieldEPNet` and through `step`
for any other network.

States are a list of tensors, one per state group, the output neurons last; `x` is the input batch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

States = list[Tensor]


@runtime_checkable
class Network(Protocol):
    kind: str  # the data kind it reads (sentiment | nli for the Hopfield models): checked against the dataset
    fc: list[int]  # dense sizes, the number of classes last
    n_proj: int  # synapses before the dense chain (their learning rates come first in optimizer.lrs)
    synapses: nn.ModuleList  # one module per synapse: one optimizer parameter group each
    activation: str  # name of the dense activation (diagnostics read its floor)

    @property
    def n_classes(self) -> int: ...

    def init_states(self, batch_size: int, *, device=None, dtype=None) -> States:
        """All-zero states: where every free phase starts."""

    def output(self, states: States) -> Tensor:
        """The output neurons `(B, n_classes)`."""

    def layer_states(self, states: States) -> States:
        """The states one tensor per layer, as the GDU check names them (`s1` [.. `s4`], `h1`, ..., `out`)."""

    def keys(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-batch constants of the dynamics that phases share (Hopfield keys and padding mask)."""

    def input_drive(self, x: Tensor) -> Tensor:
        """The constant input term of the fields, computed once per phase."""

    def phi(self, x: Tensor, states: States, beta=0.0, target: Tensor | None = None,
            drive: Tensor | None = None) -> Tensor:
        """Φ per sample `(B,)`, differentiable in states and parameters (SPEC.md §2)."""

    def fields(self, x: Tensor, states: States, beta=0.0, target: Tensor | None = None,
               drive: Tensor | None = None) -> States:
        """Local fields ∂Φ/∂s, one per state tensor."""

    def attention_scores(self, g_proj: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
        """Scores of the projection blocks' retrieval (diagnostics: attention entropy)."""

    def update(self, fields: States, keys: Tensor, mask: Tensor | None) -> States:
        """The update rule applied to fields (the GDU check compares fields and states step by step)."""

    def step(self, x: Tensor, states: States, beta=0.0, target: Tensor | None = None,
             drive: Tensor | None = None, keys=None) -> States:
        """One synchronous step from closed-form fields (functional: BPTT differentiates through it)."""

    def step_autograd(self, x: Tensor, states: States, beta=0.0, target: Tensor | None = None,
                      drive: Tensor | None = None, keys=None) -> States:
        """One step with fields from autograd of Φ (the oracle)."""

    def phi_grad_difference(self, x: Tensor, a: States, b: States, scale: float = 1.0, out=None) -> list[Tensor]:
        """`scale · Σ_batch (∂Φ/∂θ(a) − ∂Φ/∂θ(b))` for every parameter, in `parameters()` order. (EP with
        `adaptive_beta` passes HopfieldEPNet a `(B,)` scale, one per example; other networks get autograd of Φ.)"""
