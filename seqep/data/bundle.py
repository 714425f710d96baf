"""The in-memory dataset: token ids per split plus one word-vector matrix (never N x L x d floats)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SPLITS = ("train", "val", "test")


@dataclass
class TokenSplit:
    """One split. `ids`: int32 `(N, S)` rows into the vector matrix (0 = padding), `labels`: int64 `(N,)`.

    `S = L` for sentiment data and `S = 2L` for NLI (premise tokens, then hypothesis tokens).
    """

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataBundle:
    """Everything a run needs from a dataset.

    `vectors`: float32 `(V, d)`, row 0 is the zero padding vector. `seq_len` is L (per sentence for NLI).
    `info` holds small JSON-friendly facts (split sizes, cache path, OOV rate, source files, timings).
    `words[i]` is the word of vector row i (`words[0] == "<pad>"`).
    """

    name: str
    kind: str
    seq_len: int
    embed_dim: int
    n_classes: int
    vectors: torch.Tensor
    train: TokenSplit
    val: TokenSplit
    test: TokenSplit
    synthetic: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    def split(self, name: str) -> TokenSplit:
        """The split called `name` ("train", "val" or "test")."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]


PAD_WORD = "<pad>"


def make_bundle(
    *,
    name: str,
    kind: str,
    seq_len: int,
    n_classes: int,
    vectors: np.ndarray,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    synthetic: bool,
    info: dict[str, Any],
    words: list[str],
) -> DataBundle:
    """Build a `DataBundle` from numpy arrays: `vectors` (V, d), `splits[s] = (ids (N, S), labels (N,))`."""
    tensors = {
        s: TokenSplit(
            ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32)),
            labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        )
        for s, (ids, labels) in splits.items()
    }
    info = dict(info)
    info["split_sizes"] = {s: len(tensors[s]) for s in SPLITS}
    return DataBundle(
        name=name,
        kind=kind,
        seq_len=seq_len,
        embed_dim=int(vectors.shape[1]),
        n_classes=n_classes,
        vectors=torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
        train=tensors["train"],
        val=tensors["val"],
        test=tensors["test"],
        synthetic=synthetic,
        info=info,
        words=words,
    )


def seeded_permutation(n: int, seed: int) -> np.ndarray:
    """The permutation of `range(n)` used for every seeded split in the package."""
    return np.random.default_rng(seed).permutation(n)
