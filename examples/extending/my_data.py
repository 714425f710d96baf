"""A dataset of one's own: majority of two token kinds in a short sequence (learnable in one epoch).

Picked with `dataset=majority` (my_conf/dataset/majority.yaml); its fields are the option's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from seqep.data import DataBundle, Dataset
from seqep.data.bundle import make_bundle


@dataclass
class Majority(Dataset):
    kind: ClassVar[str] = "sentiment"  # read by a sentiment model (one Hopfield block)
    n_classes: ClassVar[int] = 2
    name: str = "majority"
    seq_len: int = 7
    n_train: int = 256
    n_eval: int = 64

    def load(self) -> DataBundle:
        rng = np.random.default_rng(self.split_seed)
        vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # row 0: padding
        splits = {}
        for split, n in (("train", self.n_train), ("val", self.n_eval), ("test", self.n_eval)):
            ids = rng.integers(1, 3, size=(n, self.seq_len))
            splits[split] = (ids, ((ids == 2).sum(1) > self.seq_len // 2).astype(np.int64))
        return make_bundle(name=self.name, kind=self.kind, seq_len=self.seq_len, n_classes=self.n_classes,
                           vectors=vectors, splits=splits, synthetic=True, info={}, words=["<pad>", "a", "b"])
