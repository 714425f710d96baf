"""Synthetic tasks: shapes, seeding, loud labelling, and the documented Bayes accuracy reached by the Bayes rule."""

import logging

import pytest
import torch

from seqep.data import DataError, load_dataset
from seqep.data.synthetic import NEGATIONS, sentiment_bayes_accuracy


def test_sentiment_bayes_formula():
    assert sentiment_bayes_accuracy(3, 0.8) == pytest.approx(0.896)
    assert sentiment_bayes_accuracy(1, 0.7) == pytest.approx(0.7)
    assert sentiment_bayes_accuracy(2, 0.7) == pytest.approx(0.7)  # a tie is a coin flip
    assert sentiment_bayes_accuracy(5, 0.5) == pytest.approx(0.5)


def test_synth_sentiment_shapes_seed_and_log(caplog):
    b = load_dataset({"_target_": "seqep.data.SynthSentiment"})
    assert (b.kind, b.n_classes, b.seq_len, b.embed_dim, b.synthetic) == ("sentiment", 2, 64, 50, True)
    assert b.info["split_sizes"] == {"train": 2000, "val": 500, "test": 500}
    assert b.train.ids.shape == (2000, 64) and b.train.ids.dtype == torch.int32
    assert torch.all(b.vectors[0] == 0) and b.info["bayes_accuracy"] == pytest.approx(0.896)
    assert "SYNTHETIC data: synth_sentiment" in caplog.text and "Bayes accuracy 0.896" in caplog.text
    again = load_dataset({"_target_": "seqep.data.SynthSentiment"})
    other = load_dataset({"_target_": "seqep.data.SynthSentiment", "split_seed": 1})
    assert torch.equal(b.train.ids, again.train.ids) and not torch.equal(b.train.ids, other.train.ids)
    lengths = (b.train.ids != 0).sum(1)
    assert lengths.min() >= 32 and lengths.max() == 64  # lengths in [0.5 L, L], zero padding after
    assert 0.4 < b.train.labels.float().mean() < 0.6


def test_synth_sentiment_bayes_rule_reaches_bayes_accuracy():
    b = load_dataset({"_target_": "seqep.data.SynthSentiment", "n_test": 20000, "seq_len": 200, "embed_dim": 8})
    pos = torch.tensor([w.startswith("pos_cue") for w in b.words])[b.test.ids.long()].sum(1)
    neg = torch.tensor([w.startswith("neg_cue") for w in b.words])[b.test.ids.long()].sum(1)
    assert torch.all(pos + neg == 3)
    accuracy = ((pos > neg).long() == b.test.labels).float().mean().item()
    assert accuracy == pytest.approx(0.896, abs=0.01)
    assert b.vectors.shape == (1 + 1000 + 20, 8)


def _nli_rule(b, split):
    """The Bayes rule: a negation -> contradiction (1), a word not in the premise -> neutral (0), else entailment."""
    L = b.seq_len
    neg_ids = {b.words.index(w) for w in NEGATIONS if w in b.words}
    preds = []
    for row in b.split(split).ids.tolist():
        premise, hyp = set(row[:L]) - {0}, [i for i in row[L:] if i]
        preds.append(1 if neg_ids & set(hyp) else 0 if any(i not in premise for i in hyp) else 2)
    return torch.tensor(preds)


def test_synth_nli_shapes_and_bayes_accuracy(caplog):
    b = load_dataset({"_target_": "seqep.data.SynthNli", "n_train": 300, "n_val": 100, "n_test": 5000})
    assert (b.kind, b.n_classes, b.seq_len, b.embed_dim, b.synthetic) == ("nli", 3, 25, 50, True)
    assert b.train.ids.shape == (300, 50) and b.info["bayes_accuracy"] == pytest.approx(0.9)
    assert "SYNTHETIC data: synth_nli" in caplog.text
    accuracy = (_nli_rule(b, "test") == b.test.labels).float().mean().item()
    assert accuracy == pytest.approx(0.9, abs=0.015)
    premise_len = (b.test.ids[:, :25] != 0).sum(1)
    hyp_len = (b.test.ids[:, 25:] != 0).sum(1)
    assert premise_len.min() >= 6 and premise_len.max() <= 14 and hyp_len.min() >= 3 and hyp_len.max() <= 8
    assert torch.bincount(b.test.labels, minlength=3).min() > 1400  # classes balanced
    assert "movie" in b.words or "people" in b.words  # real GloVe words


def test_synth_nli_without_noise_is_exactly_recoverable():
    b = load_dataset({"_target_": "seqep.data.SynthNli", "n_train": 50, "n_val": 50, "n_test": 600, "label_noise": 0.0,
                      "seq_len": 10, "premise_len_max": 20})
    assert torch.equal(_nli_rule(b, "test"), b.test.labels)
    assert b.info["bayes_accuracy"] == 1.0 and b.test.ids.shape == (600, 20)


def test_bad_synthetic_settings(caplog):
    caplog.set_level(logging.WARNING)
    with pytest.raises(DataError, match="cues_per_sequence <= seq_len"):
        load_dataset({"_target_": "seqep.data.SynthSentiment", "seq_len": 2, "cues_per_sequence": 3})
    with pytest.raises(DataError, match="hypothesis_len_min"):
        load_dataset({"_target_": "seqep.data.SynthNli", "hypothesis_len_min": 1})
