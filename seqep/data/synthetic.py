"""Synthetic tasks with the paper's shapes and a known Bayes accuracy (for CI and GPU-less users).

`synth_sentiment` (IMDB-shaped): every sequence has a random length in `[min_length_fraction * L, L]` (zero
padding after) of filler words, with `cues_per_sequence` (k) cue words at random positions. There are two sets of
cue words; each cue is drawn from the label's set with probability `cue_reliability` (p), else from the other set.
The counts of the two cue sets are sufficient statistics, so the Bayes rule is a majority vote of the cues and

    Bayes accuracy = P(Binomial(k, p) > k/2) + ½ P(Binomial(k, p) = k/2)     (defaults k=3, p=0.8: 0.896).

It does not depend on L, but the cues are k of up to L tokens, so learning gets harder as L grows. Word vectors
are random Gaussian vectors of any `embed_dim`.

`synth_nli` (SNLI-shaped) over real GloVe words: a premise of distinct content words; the hypothesis (same
length m for every class) is
* entailment (2): m premise words, in premise order (a subset);
* neutral (0): m-1 premise words plus one content word that is not in the premise (a replacement);
* contradiction (1): m-1 premise words plus one negation word ("not", "no", "never", ...) (a negation).
The construction is recoverable exactly from the words, and a fraction `label_noise` (ε) of labels is replaced by
one of the two other classes, so Bayes accuracy = 1 − ε (default 0.9).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from omegaconf import DictConfig

from seqep.data.bundle import PAD_WORD, SPLITS, DataBundle, make_bundle
from seqep.data.errors import DataError
from seqep.data.sources import data_root
from seqep.data.vectors import glove_package_words, load_vectors

log = logging.getLogger("seqep.data")

NEGATIONS = ("not", "no", "never", "nobody", "nothing", "none", "neither", "nor", "cannot", "without")
NLI_LABELS = {"neutral": 0, "contradiction": 1, "entailment": 2}


def sentiment_bayes_accuracy(k: int, p: float) -> float:
    """Accuracy of the majority vote over k cues, each correct with probability p (ties: a coin flip)."""
    acc = 0.0
    for j in range(k + 1):
        prob = math.comb(k, j) * p**j * (1 - p) ** (k - j)
        acc += prob if 2 * j > k else 0.5 * prob if 2 * j == k else 0.0
    return acc


def load_synth_sentiment(cfg: DictConfig) -> DataBundle:
    """The `synth_sentiment` bundle, generated from `cfg.split_seed` (see the module docstring)."""
    start = time.perf_counter()
    L, k, n_fill, n_cue = cfg.seq_len, cfg.cues_per_sequence, cfg.vocab_size, cfg.cue_words
    min_len = max(k, math.ceil(cfg.min_length_fraction * L))
    if not (1 <= k <= L and n_fill >= 1 and n_cue >= 1 and 0.0 <= cfg.cue_reliability <= 1.0):
        raise DataError(
            f"synth_sentiment: need 1 <= cues_per_sequence <= seq_len, vocab_size >= 1, cue_words >= 1 and "
            f"0 <= cue_reliability <= 1 (got {k}, {L}, {n_fill}, {n_cue}, {cfg.cue_reliability})"
        )
    rng = np.random.default_rng(cfg.split_seed)
    vectors = np.zeros((1 + n_fill + 2 * n_cue, cfg.embed_dim), dtype=np.float32)
    vectors[1:] = rng.standard_normal((n_fill + 2 * n_cue, cfg.embed_dim)) / math.sqrt(cfg.embed_dim)
    cue_base = np.array([1 + n_fill, 1 + n_fill + n_cue])  # first id of the class-0 and class-1 cue words
    splits = {}
    for s in SPLITS:
        n = cfg[f"n_{s}"]
        labels = rng.integers(0, 2, n)
        lengths = rng.integers(min_len, L + 1, n)
        ids = np.zeros((n, L), dtype=np.int32)
        agree = rng.random((n, k)) < cfg.cue_reliability
        cue_class = np.where(agree, labels[:, None], 1 - labels[:, None])
        cues = cue_base[cue_class] + rng.integers(0, n_cue, (n, k))
        for i in range(n):
            ids[i, : lengths[i]] = rng.integers(1, n_fill + 1, lengths[i])
            ids[i, rng.choice(lengths[i], k, replace=False)] = cues[i]
        splits[s] = (ids, labels)
    bayes = sentiment_bayes_accuracy(k, cfg.cue_reliability)
    words = [PAD_WORD] + [f"filler{i}" for i in range(n_fill)]
    words += [f"neg_cue{i}" for i in range(n_cue)] + [f"pos_cue{i}" for i in range(n_cue)]
    return _finish(cfg, 2, vectors, splits, words, bayes, start, f"{k} cues of reliability {cfg.cue_reliability}")


def load_synth_nli(cfg: DictConfig) -> DataBundle:
    """The `synth_nli` bundle, generated from `cfg.split_seed` (see the module docstring)."""
    start = time.perf_counter()
    L = cfg.seq_len
    p_lo, p_hi = cfg.premise_len_min, min(cfg.premise_len_max, L)
    h_lo, h_hi = cfg.hypothesis_len_min, cfg.hypothesis_len_max
    if not (2 <= h_lo <= h_hi and h_lo <= p_lo <= p_hi and 0.0 <= cfg.label_noise <= 1.0):
        raise DataError(
            "synth_nli: need 2 <= hypothesis_len_min <= hypothesis_len_max, hypothesis_len_min <= premise_len_min "
            f"<= min(premise_len_max, seq_len) and 0 <= label_noise <= 1 (got {h_lo}, {h_hi}, {p_lo}, {p_hi}, "
            f"{cfg.label_noise})"
        )
    excluded = set(NEGATIONS)
    candidates = [w for w in glove_package_words()[100:] if w.isalpha() and w not in excluded]
    candidates = candidates[: cfg.vocab_words]
    vecs = load_vectors(cfg.vectors, set(candidates) | excluded, root=data_root(cfg.root), fmt=cfg.vectors_format)
    row = dict(zip(vecs.words, range(len(vecs.words))))
    content = [w for w in candidates if w in row]
    negations = [w for w in NEGATIONS if w in row]
    if len(content) < p_hi + 1 or not negations:
        raise DataError(f"synth_nli: {vecs.source} has {len(content)} of the content words and {len(negations)} "
                        f"negation words; need at least {p_hi + 1} and 1")
    words = [PAD_WORD, *content, *negations]
    vectors = np.zeros((len(words), vecs.matrix.shape[1]), dtype=np.float32)
    vectors[1:] = vecs.matrix[[row[w] for w in words[1:]]]
    neg_ids = np.arange(1 + len(content), len(words))

    rng = np.random.default_rng(cfg.split_seed)
    splits = {}
    for s in SPLITS:
        n = cfg[f"n_{s}"]
        built = rng.integers(0, 3, n)
        ids = np.zeros((n, 2 * L), dtype=np.int32)
        for i in range(n):
            premise = 1 + rng.choice(len(content), rng.integers(p_lo, p_hi + 1), replace=False)
            m = int(rng.integers(h_lo, min(h_hi, len(premise), L) + 1))
            kept = premise[np.sort(rng.choice(len(premise), m if built[i] == 2 else m - 1, replace=False))]
            if built[i] != 2:
                if built[i] == 1:
                    extra = rng.choice(neg_ids)
                else:
                    extra = 1 + rng.integers(len(content))
                    while extra in premise:
                        extra = 1 + rng.integers(len(content))
                kept = np.insert(kept, rng.integers(0, len(kept) + 1), extra)
            ids[i, : len(premise)] = premise
            ids[i, L : L + len(kept)] = kept
        flip = rng.random(n) < cfg.label_noise
        labels = np.where(flip, (built + rng.integers(1, 3, n)) % 3, built)
        splits[s] = (ids, labels)
    what = f"subset/replacement/negation over {len(content)} GloVe words, label noise {cfg.label_noise}"
    bayes = max(1.0 - cfg.label_noise, cfg.label_noise / 2)  # the second term only wins for noise above 2/3
    return _finish(cfg, 3, vectors, splits, words, bayes, start, what)


def _finish(
    cfg: DictConfig,
    n_classes: int,
    vectors: np.ndarray,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    words: list[str],
    bayes: float,
    start: float,
    what: str,
) -> DataBundle:
    info = {
        "source": f"SYNTHETIC ({what}, seed {cfg.split_seed})",
        "bayes_accuracy": round(bayes, 4),
        "vocab_size": len(words),
        "seconds": round(time.perf_counter() - start, 3),
    }
    bundle = make_bundle(
        name=cfg.name, kind=cfg.kind, seq_len=cfg.seq_len, n_classes=n_classes, vectors=vectors, splits=splits,
        synthetic=True, info=info, words=words,
    )
    log.warning(
        "SYNTHETIC data: %s, L=%d, d=%d, train/val/test %s, %s; Bayes accuracy %.3f (not a real-text result)",
        cfg.name, cfg.seq_len, bundle.embed_dim, "/".join(str(len(bundle.split(s))) for s in SPLITS), what, bayes,
    )
    return bundle
