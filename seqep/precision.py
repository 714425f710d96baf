"""Precision of the relaxation (issue 13): which parts of a training step may run in a low precision.

The top-level key `precision` (checked by `seqep.config.validate`, given to the estimator by
`seqep.training.builders.build_estimator`) takes one of `PRECISIONS`:

    fp32        everything in the network's dtype (float32; float64 for checks)
    bf16-mixed  the free phase and every evaluation (`Estimator.predict`) in bfloat16, on a bfloat16 copy of the
                weights (`Bf16Copy`, cast afresh at every use; the attention softmax is taken in float32 and
                rounded, 2-3x faster than bfloat16's on CPU); the nudged phases start from the free state cast
                back to float32, and the nudged phases, the EP gradient (from state differences) and the optimizer
                stay float32 on the float32 master weights. BPTT: its graph-free head likewise, its graph steps
                under `torch.autocast(bfloat16)`.
    bf16-delta  bf16-mixed, and the nudged phases' two products with the first dense weight (the largest: at the
                SNLI shape 90 % of a step's FLOPs) in bfloat16 on the deviation from the free state: the product
                at the free state is taken once in float32, each step adds a bfloat16 copy of that weight times
                the (small) deviation of the states from it (`seqep.phase.ClosedFormPhase`, `around`). States,
                the other products, the EP gradient and the optimizer stay float32. Closed-form path only; the
                `autograd` path and BPTT run as in bf16-mixed.
    tf32        the same split, the free phase's float32 matmuls on TF32 tensor cores (CUDA only)

Why this split: EP's gradient is a difference of two nearby states divided by β, which bfloat16's 8 bits of
mantissa destroy (all-bf16 EP: cosine 0.53 to the float64 EP gradient on the trained default model), while the
free phase only has to land near the fixed point the float32 nudged phases then refine (measured cosines in
README, "Precision"). Casting the weights, not autocast, because the closed-form engine (`seqep.phase`) writes
its products into reused buffers (`out=`), which autocast leaves in float32; the cast copy was also faster here
(SNLI shape, T=60, B=32, 2-core EPYC with AVX512-BF16: free phase 1.15 s fp32, 0.42 s cast, 0.57 s autocast).

Hardware without fast bfloat16 (a CPU without AVX512-BF16/AMX, a GPU without bf16) and tf32 anywhere but CUDA
fall back to fp32 with one warning line per process.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from seqep.utils import say

PRECISIONS = ("fp32", "bf16-mixed", "bf16-delta", "tf32")  # the top-level key `precision`; fp32 is the default
BF16_FREE = ("bf16-mixed", "bf16-delta")  # the precisions whose free phase and evaluation run in bfloat16
LOW_DTYPE = torch.bfloat16  # the free phase's dtype in bf16-mixed
# bfloat16's machine epsilon: its states cannot show smaller changes (one step of a state near 1 is 2^-8, of one
# in [1, 2) 2^-7), so a per-example `tol` below it would never be met; the bf16 free phase settles to this instead,
# measured relative to max(1, |s|) (`seqep.relax._layer_changes`: larger states round more coarsely). On the
# default run's epoch-15 weights: 15.8 mean steps and no example at the cap (absolute: 23 steps, 6 % at the cap;
# with tol 1e-3 17 % ran to the cap); states 0.03 from float32's, as bfloat16 itself is
LOW_RESOLUTION = 2.0**-7
# a bfloat16 change that stopped shrinking within this many `LOW_RESOLUTION`s is a cycle of roundings, not motion
# (`seqep.relax.converged`): one example in ~1000 of the default run flipped a state between two neighbours 1-1.5
# resolutions apart and, without this, ran to the step cap alone
LOW_STALL = 4.0


def resolution(dtype: torch.dtype) -> float:
    """The smallest state change a phase in `dtype` can tell from rounding noise: `LOW_RESOLUTION` for bfloat16
    (relative to max(1, |s|)), 2 machine epsilons otherwise (two roundings of a state near 1). Larger states round
    more coarsely (the attention blocks' reach ~5-8 on trained weights), so an example asking for a tol this
    small may run to its step cap; only the few that need it ask: EP's tiny-β nudges (`adaptive_beta`'s kink
    reruns at β₂/100: with the floor at 32 eps their phases stopped after 3 steps, and one example's gradient
    was 80 % off; at 2 eps, 3 %)."""
    return LOW_RESOLUTION if dtype == LOW_DTYPE else 2 * torch.finfo(dtype).eps


def settle_tol(tol: float | torch.Tensor | None, dtype: torch.dtype) -> float | torch.Tensor | None:
    """A per-example settling tolerance a phase in `dtype` can meet: `tol`, but never below what the dtype can
    show (`resolution`; `tol·β` of EP's nudged phases with a small tol would otherwise never be met).
    A tensor (one tolerance per example) is floored element by element."""
    if tol is None:
        return None
    floor = resolution(dtype)
    if isinstance(tol, torch.Tensor):
        return tol.clamp_min(floor)
    return max(float(tol), floor)


_WARNED: set[tuple[str, str]] = set()


def check_precision(value: str, key: str = "precision") -> str:
    """`value` if it is one of `PRECISIONS`; else one ValueError line naming `key`."""
    if value not in PRECISIONS:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of: {', '.join(PRECISIONS)}")
    return value


@lru_cache(maxsize=None)
def fast_bf16(device_type: str) -> bool:
    """Whether bfloat16 matmuls are fast here: CUDA's `is_bf16_supported`; on CPU oneDNN (mkldnn) and the
    AVX512-BF16 or AMX-BF16 instructions (/proc/cpuinfo; without them bf16 is emulated and slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def supported(precision: str, device: torch.device | str) -> bool:
    """Whether `precision` runs as such on `device` (fp32 always; bf16-* with fast bfloat16; tf32 on CUDA)."""
    kind = torch.device(device).type
    return precision == "fp32" or (precision in BF16_FREE and fast_bf16(kind)) or \
        (precision == "tf32" and kind == "cuda")


def effective_precision(precision: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """What `precision` becomes on `device` for tensors of `dtype`: itself, or fp32 where it cannot help (then one
    warning line per process and case). Tensors other than float32 (float64 checks) always run as they are."""
    if precision == "fp32" or dtype != torch.float32:
        return "fp32"
    kind = torch.device(device).type
    if supported(precision, kind):
        return precision
    why = ("this hardware has no fast bfloat16 (CPU: AVX512-BF16 or AMX)" if precision in BF16_FREE
           else f"TF32 exists only on CUDA devices, not {kind}")
    if (precision, kind) not in _WARNED:
        _WARNED.add((precision, kind))
        say(f"warning: precision={precision} falls back to fp32: {why}")
    return "fp32"


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """CUDA float32 matmuls (and cuDNN) on TF32 tensor cores inside the block; the old settings after it."""
    if not enabled:
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


class Bf16Copy:
    """A bfloat16 copy of one network, refreshed from its float32 master weights at every use (the cast costs
    ~2 ms for SNLI's 12 M parameters against ~0.4 s of free phase). Not keyed on parameter versions: the fused
    optimizers update weights in place without bumping them. Holds the network weakly."""

    def __init__(self) -> None:
        self._net: weakref.ref | None = None
        self._copy: nn.Module | None = None
        self._layout: list | None = None

    def of(self, net: nn.Module) -> nn.Module:
        params = list(net.parameters())
        layout = [(p.shape, p.device) for p in params]
        if self._copy is None or self._net() is not net or layout != self._layout:
            low = copy.deepcopy(net).to(LOW_DTYPE)
            for p in low.parameters():
                p.grad = None
                p.requires_grad_(False)
            self._net, self._copy, self._layout = weakref.ref(net), low, layout
            return low
        with torch.no_grad():
            for low, p in zip(self._copy.parameters(), params):
                low.copy_(p)
        return self._copy
