"""What the bench times: the shapes (models and batches), the old code's reference numbers, the two field paths,
and the FLOP model of SPEC.md §7 that turns seconds into GFLOP/s."""

from __future__ import annotations

from dataclasses import dataclass

from seqep.network import HopfieldEPNet


@dataclass(frozen=True)
class Shape:
    """A model and batch to time. `run_T`/`run_K`: fewer steps actually run (per-step numbers stay exact; the
    full training step at `T`/`K` is then projected with the FLOP model)."""

    kind: str
    seq_len: int
    embed_dim: int
    fc: tuple[int, ...]
    T: int
    K: int
    batch: int
    run_T: int | None = None
    run_K: int | None = None

    @property
    def steps(self) -> tuple[int, int]:
        return self.run_T or self.T, self.run_K or self.K


SHAPES = {
    "snli": Shape("nli", 25, 300, (400, 3), T=60, K=30, batch=32),
    "imdb": Shape("sentiment", 600, 300, (1000, 40, 2), T=50, K=25, batch=8, run_T=4, run_K=2),
    "default": Shape("sentiment", 48, 50, (128, 2), T=20, K=8, batch=64),  # SPEC §8's model, the one the
    # README's per-step `default` rows were measured with; the default *run* trains fc 256 (conf/model/sentiment.yaml)
    "tiny": Shape("nli", 3, 8, (6, 3), T=6, K=3, batch=4),  # tests
}
# SPEC.md §6-7: the old code's seconds per relaxation step at its batch size, on 2 cores whose fp32 matmul
# ceiling was about 115 GFLOP/s; `steps` is how many we time here
OLD_CODE = {"snli": {"batch": 200, "s_per_step": 0.195, "steps": 10},
            "imdb": {"batch": 100, "s_per_step": 2.2, "steps": 3}}
OLD_CODE_CEILING = 115.0
PATHS = ("closed", "autograd")


# ------------------------------------------------------------------------------------------------ FLOP model
def step_flops(net: HopfieldEPNet, batch: int) -> int:
    """Model FLOPs of one synchronous relaxation step (SPEC.md §7): both directions of every dense coupling
    (`2·in·out` each) and the two attention products of every Hopfield block (`g_P X_Pᵀ` and `A X_P`,
    `2·L²·d` each). Element-wise work, softmax and the (hoisted) input drive are not counted."""
    dense = sum(2 * 2 * s.in_features * s.out_features for s in net.dense)
    attention = net.n_proj * 2 * 2 * net.seq_len**2 * net.embed_dim
    return batch * (dense + attention)


def drive_flops(net: HopfieldEPNet, batch: int) -> int:
    """`x_P W_Pᵀ` for every block: once per phase on the closed path."""
    return batch * net.n_proj * 2 * net.seq_len * net.embed_dim**2


def train_flops(net: HopfieldEPNet, algorithm: str, batch: int, T: int, K: int) -> int:
    """Model FLOPs of one training step. EP (symmetric): the drive, T steps at B, K steps at 2B, and
    ∂Φ/∂θ on the 2B stack (`s_{k+1} s_kᵀ`, `Σ_l s_P,l x_P,lᵀ`: one product per weight and sample). BPTT (last
    K): the drive, T forward steps and a backward pass over K of them counted as twice their forward cost."""
    grad_outer = sum(2 * s.in_features * s.out_features for s in net.dense) * batch + drive_flops(net, batch)
    if algorithm == "ep":
        return drive_flops(net, batch) + step_flops(net, batch) * (T + 2 * K) + 2 * grad_outer
    return 2 * drive_flops(net, batch) + step_flops(net, batch) * (T + 2 * K)
