"""Mini-batches that look word vectors up per batch (never the whole N x S x d tensor)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from seqep.data.bundle import TokenSplit


def iterate_batches(
    split: TokenSplit,
    vectors: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    part: Callable[[int], slice] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `(x, y)`: `x = vectors[ids]` of shape `(B, S, d)` in `dtype` on `device`, `y` int64 `(B,)`.

    `shuffle` draws one permutation per call from `generator` (a CPU `torch.Generator`; the global RNG if None).
    The last batch is smaller unless `drop_last`. The vector matrix `(V, d)` is moved to `device` once per call.
    `part`: this worker's share of a batch of n (`World.part`, data-parallel runs): every worker draws the same
    order and takes its own disjoint slice of each batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    table = vectors.to(device=device, dtype=dtype)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if part is not None:
            idx = idx[part(len(idx))]
        ids = split.ids[idx].to(device=device, dtype=torch.long, non_blocking=True)
        yield table[ids], split.labels[idx].to(device=device, non_blocking=True)
