"""The shared path of every text dataset: cache lookup -> read and clean -> vocabulary -> vectors -> ids -> cache.

A dataset module supplies a `read()` that returns, per split, the cleaned documents and their labels: a document
is a token list (sentiment) or a `(premise, hypothesis)` pair of token lists (NLI). Tokens without a vector are
dropped; each sequence is then cut to `L` or right-padded with id 0 (the zero vector), so NLI rows hold `2L` ids.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from seqep.data.bundle import PAD_WORD, SPLITS, DataBundle, make_bundle, seeded_permutation
from seqep.data.cache import cache_file, cache_key, load_bundle, save_bundle
from seqep.data.errors import DataError
from seqep.data.sources import data_root
from seqep.data.vectors import load_vectors, vectors_identity

log = logging.getLogger("seqep.data")

Document = list[str] | tuple[list[str], list[str]]
RawSplits = dict[str, tuple[Sequence[Document], Sequence[int]]]
# Config keys that do not change the prepared arrays (so they stay out of the cache key).
NON_DATA_KEYS = ("root", "batch_size", "eval_batch_size", "use_cache")


def data_settings(cfg: DictConfig) -> dict[str, Any]:
    """The config values that shape the arrays (part of the cache key)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    return {k: v for k, v in values.items() if k not in NON_DATA_KEYS}


def prepare_text_dataset(
    cfg: DictConfig,
    *,
    n_classes: int,
    source: str,
    source_identity: dict[str, Any],
    read: Callable[[], RawSplits],
    extra_info: dict[str, Any] | None = None,
) -> DataBundle:
    """Load `cfg.name` from the cache, or build it with `read()` and cache it. `source` describes the origin.

    `extra_info` (which `read` may fill in) is added to `bundle.info`.
    """
    start = time.perf_counter()
    root = data_root(cfg.root)
    key = cache_key(
        {
            "settings": data_settings(cfg),
            "source": source_identity,
            "vectors": vectors_identity(cfg.vectors, root),
        }
    )
    path = cache_file(root, cfg.name, key)
    bundle = load_bundle(path) if cfg.use_cache else None
    if bundle is not None:
        bundle.info.update(from_cache=True, cache_path=str(path), seconds=round(time.perf_counter() - start, 3))
        log.info(
            "loaded %s from cache %s in %.2f s (train/val/test %s)",
            cfg.name, path, bundle.info["seconds"], "/".join(str(len(bundle.split(s))) for s in SPLITS),
        )
        return bundle

    raw = read()
    for s in SPLITS:
        if len(raw[s][0]) == 0:
            raise DataError(f"dataset {cfg.name}: the {s} split is empty after reading {source}")
    counts = Counter(tok for s in SPLITS for doc in raw[s][0] for seq in _sequences(doc) for tok in seq)
    vecs = load_vectors(cfg.vectors, counts.keys(), root=root, fmt=cfg.vectors_format)
    if not vecs.words:
        raise DataError(
            f"dataset {cfg.name}: none of the {len(counts)} corpus words has a vector in {vecs.source} "
            "(wrong file or dataset.vectors_format?)"
        )
    row = dict(zip(vecs.words, range(len(vecs.words))))
    words = sorted(vecs.words, key=lambda w: (-counts[w], w))
    matrix = np.zeros((len(words) + 1, vecs.matrix.shape[1]), dtype=np.float32)
    matrix[1:] = vecs.matrix[[row[w] for w in words]]
    index = {w: i + 1 for i, w in enumerate(words)}

    stats = Counter()
    splits = {}
    for s in SPLITS:
        docs, labels = raw[s]
        splits[s] = (encode_documents(docs, index, cfg.seq_len, stats), np.asarray(labels, dtype=np.int64))
    n_tokens = sum(counts.values())
    info = {
        "source": source,
        "vectors": vecs.source,
        "cache_path": str(path),
        "vocab_size": len(index) + 1,
        "corpus_words": len(counts),
        "oov_rate": round(stats["oov"] / max(n_tokens, 1), 5),
        "truncated_rate": round(stats["truncated"] / max(stats["sequences"], 1), 5),
        "empty_sequences": stats["empty"],
        **(extra_info or {}),
    }
    bundle = make_bundle(
        name=cfg.name, kind=cfg.kind, seq_len=cfg.seq_len, n_classes=n_classes, vectors=matrix,
        splits=splits, synthetic=False, info=info, words=[PAD_WORD, *words],
    )
    if bundle.embed_dim < 1 or not np.isfinite(bundle.vectors.numpy()).all():  # never cache a broken preparation
        raise DataError(f"dataset {cfg.name}: the vectors from {vecs.source} are not usable ({bundle.embed_dim}-d, "
                        f"finite: {bool(np.isfinite(bundle.vectors.numpy()).all())}); check the vectors file")
    if cfg.use_cache:
        save_bundle(path, bundle)
    bundle.info.update(from_cache=False, seconds=round(time.perf_counter() - start, 3))
    log.info(
        "prepared %s from %s with %s in %.1f s: train/val/test %s, vocabulary %d, OOV %.2f%%, cached at %s",
        cfg.name, source, vecs.source, bundle.info["seconds"],
        "/".join(str(len(bundle.split(s))) for s in SPLITS), len(index) + 1, 100 * info["oov_rate"], path,
    )
    return bundle


def carve_validation(
    docs: Sequence[Document], labels: Sequence[int], fraction: float, seed: int
) -> tuple[tuple[list, list], tuple[list, list]]:
    """Split one official train split into (train, val): a seeded `int(fraction * N)` documents go to val."""
    order = seeded_permutation(len(docs), seed)
    n_val = int(fraction * len(docs))
    train, val = order[n_val:], order[:n_val]
    return ([docs[i] for i in train], [labels[i] for i in train]), ([docs[i] for i in val], [labels[i] for i in val])


def _sequences(doc: Document) -> tuple[list[str], ...]:
    return doc if isinstance(doc, tuple) else (doc,)


def encode_documents(docs: Sequence[Document], index: dict[str, int], seq_len: int, stats: Counter) -> np.ndarray:
    """Token ids `(N, S)` int32: each sequence of a document cut/padded to `seq_len`, sequences side by side.

    Tokens missing from `index` are dropped before cutting. `stats` counts oov tokens, sequences, truncated
    and empty sequences.
    """
    n_seq = len(_sequences(docs[0])) if len(docs) else 1
    ids = np.zeros((len(docs), n_seq * seq_len), dtype=np.int32)
    for i, doc in enumerate(docs):
        for j, seq in enumerate(_sequences(doc)):
            kept = [index[t] for t in seq if t in index]
            stats["oov"] += len(seq) - len(kept)
            stats["sequences"] += 1
            stats["truncated"] += len(kept) > seq_len
            stats["empty"] += not kept
            kept = kept[:seq_len]
            ids[i, j * seq_len : j * seq_len + len(kept)] = kept
    return ids
