"""Datasets for seqep: token ids per split plus one word-vector matrix, looked up per batch.

    bundle = load_dataset(cfg.dataset)        # dispatches on cfg.dataset.name
    for x, y in iterate_batches(bundle.train, bundle.vectors, 64, shuffle=True):
        ...                                   # x (B, S, d) float, y (B,) long; S = L or 2L (NLI)

See docs/data.md for formats, where files go and the synthetic tasks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from seqep.data.batches import iterate_batches
from seqep.data.bundle import DataBundle, TokenSplit
from seqep.data.errors import DataError
from seqep.data.imdb import load_imdb
from seqep.data.rt_snippets import load_rt_snippets
from seqep.data.schema import SCHEMAS, DatasetConfig, register_dataset_configs
from seqep.data.snli import load_snli
from seqep.data.synthetic import load_synth_nli, load_synth_sentiment

LOADERS: dict[str, Callable[[DictConfig], DataBundle]] = {
    "rt_snippets": load_rt_snippets,
    "imdb": load_imdb,
    "snli": load_snli,
    "synth_sentiment": load_synth_sentiment,
    "synth_nli": load_synth_nli,
}

__all__ = [
    "DataBundle",
    "DataError",
    "DatasetConfig",
    "TokenSplit",
    "iterate_batches",
    "load_dataset",
    "register_dataset_configs",
]


def load_dataset(cfg: DictConfig | DatasetConfig | Mapping[str, Any]) -> DataBundle:
    """The dataset described by `cfg` (the `dataset` config node, a schema dataclass or a plain dict).

    Missing keys take the defaults of the schema of `cfg.name`, so `load_dataset({"name": "synth_nli"})` works.
    Raises `DataError` (a `ValueError`) with a one-line, actionable message when files are missing or malformed.
    """
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    name = values.get("name")
    if name not in LOADERS:
        raise DataError(f"unknown dataset.name={name!r}; available: {', '.join(LOADERS)}")
    merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[name]), values)
    _check(merged)
    return LOADERS[name](merged)


def _check(cfg: DictConfig) -> None:
    """Values no loader can honour: a changed kind or class count, L < 1, split fractions outside [0, 1)."""
    for key in ("kind", "n_classes"):
        fixed = SCHEMAS[cfg.name].__dataclass_fields__[key].default
        if cfg[key] != fixed:
            raise DataError(f"dataset.{key}={cfg[key]} but {cfg.name} has {key} {fixed}; drop the override")
    if cfg.seq_len < 1:
        raise DataError(f"dataset.seq_len={cfg.seq_len} must be >= 1")
    fractions = [cfg[k] for k in ("val_fraction", "test_fraction") if k in cfg]
    if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
        raise DataError(f"dataset val/test fractions {fractions} must be in [0, 1) and sum to less than 1")
