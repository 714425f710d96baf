"""Datasets for seqep: token ids per split plus one word-vector matrix, looked up per batch.

    bundle = SynthNli(n_train=100).load()     # or load_dataset(cfg.dataset): a config node with _target_
    for x, y in iterate_batches(bundle.train, bundle.vectors, 64, shuffle=True):
        ...                                   # x (B, S, d) float, y (B,) long; S = L or 2L (NLI)

See docs/data.md for formats, where files go and the synthetic tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from seqep.data.batches import iterate_batches
from seqep.data.bundle import DataBundle, TokenSplit
from seqep.data.datasets import Dataset, Imdb, RtSnippets, Snli, SynthNli, SynthSentiment, TextDataset
from seqep.data.errors import DataError

__all__ = ["DataBundle", "DataError", "Dataset", "Imdb", "RtSnippets", "Snli", "SynthNli", "SynthSentiment",
           "TextDataset", "TokenSplit", "iterate_batches", "load_dataset"]


def load_dataset(spec: Any | Mapping[str, Any]) -> DataBundle:
    """The `DataBundle` of a dataset object, or of a config node / dict with `_target_` (built with Hydra's
    instantiate). Raises `DataError` (a `ValueError`) with a one-line, actionable message when files are missing
    or malformed."""
    if isinstance(spec, Mapping) or hasattr(spec, "_target_"):
        from seqep.training.builders import build_dataset

        spec = build_dataset(spec)
    return spec.load()
