"""Dataset config schemas (dataclasses) and their ConfigStore registration.

Each YAML file `conf/dataset/<name>.yaml` starts with `defaults: [<name>_schema, _self_]`, so Hydra type-checks
it against the dataclass below: a typo in a key or a wrong type fails when the config is composed.
Relative paths (`root`, `path`, `vectors`, `sdist`, `txt`) are looked up in the current directory, then under
the data root (`root`, default `$SEQEP_DATA` or `./data`); caches go to `<root>/cache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

GOOGLE_NEWS = "GoogleNews-vectors-negative300.bin.gz"


@dataclass
class DatasetConfig:
    """Keys every dataset has (the rest of the suite relies on these)."""

    name: str = MISSING
    kind: str = MISSING  # "sentiment" | "nli"
    root: str = "${oc.env:SEQEP_DATA,data}"  # data root; relative to the current directory
    seq_len: int = MISSING  # L: tokens per sequence (per sentence for NLI)
    n_classes: int = MISSING  # fixed by the dataset (2 sentiment, 3 NLI); lets config checks match model.fc
    batch_size: int = 64
    eval_batch_size: int = 256
    split_seed: int = 0  # seed of the train/val split (text data) or of the generator (synthetic data)


@dataclass
class TextDatasetConfig(DatasetConfig):
    """Real text: cleaning settings, word vectors and the cache."""

    vectors: str = "glove-6b-50d"  # "glove-6b-50d" (installed package) or a path to a vectors file
    vectors_format: str = "auto"  # auto | word2vec_binary | word2vec_text | glove_text | kv
    fix_az_range: bool = False  # False keeps the old code's [^a-zA-z...] typo (faithful)
    use_cache: bool = True


@dataclass
class RtSnippetsConfig(TextDatasetConfig):
    """Rotten Tomatoes snippets (Hutto & Gilbert 2014) from the vaderSentiment 3.3.2 sdist; seeded 80/10/10."""

    name: str = "rt_snippets"
    kind: str = "sentiment"
    seq_len: int = 48
    n_classes: int = 2
    sdist: Optional[str] = None  # local vaderSentiment-3.3.2.tar.gz instead of `pip download`
    txt: Optional[str] = None  # local movieReviewSnippets_GroundTruth.txt instead of the sdist
    verify_sha256: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class ImdbConfig(TextDatasetConfig):
    """IMDB (Maas et al. 2011): aclImdb/ folder, aclImdb_v1.tar.gz or keras imdb.npz. Paper preset L=600, d=300."""

    name: str = "imdb"
    kind: str = "sentiment"
    seq_len: int = 600
    n_classes: int = 2
    batch_size: int = 100
    eval_batch_size: int = 250
    vectors: str = GOOGLE_NEWS
    path: Optional[str] = None  # aclImdb folder (or its parent), aclImdb_v1.tar.gz or imdb.npz
    word_index: Optional[str] = None  # imdb_word_index.json for imdb.npz (default: next to it)
    val_fraction: float = 0.1  # carved from the official train split with split_seed


@dataclass
class SnliConfig(TextDatasetConfig):
    """SNLI 1.0 (Bowman et al. 2015): snli_1.0/ folder or snli_1.0.zip. Paper preset L=25, d=300."""

    name: str = "snli"
    kind: str = "nli"
    seq_len: int = 25
    n_classes: int = 3
    batch_size: int = 200
    eval_batch_size: int = 500
    vectors: str = GOOGLE_NEWS
    path: Optional[str] = None  # snli_1.0 folder (or its parent), snli_1.0.zip, or a folder of CSV files
    format: str = "auto"  # auto (jsonl, then txt, then csv) | jsonl | txt | csv
    val_fraction: float = 0.0  # 0: official dev split; > 0: carve validation from train instead


@dataclass
class SynthSentimentConfig(DatasetConfig):
    """IMDB-shaped synthetic sentiment: a few cue tokens anywhere in a long sequence decide the label."""

    name: str = "synth_sentiment"
    kind: str = "sentiment"
    seq_len: int = 64
    n_classes: int = 2
    embed_dim: int = 50
    vocab_size: int = 1000  # filler words (random unit vectors), cue words excluded
    cue_words: int = 10  # cue words per class
    cues_per_sequence: int = 3
    cue_reliability: float = 0.8  # probability that a cue belongs to the label's class
    min_length_fraction: float = 0.5  # sequence lengths uniform in [fraction * L, L], zero padding after
    n_train: int = 2000
    n_val: int = 500
    n_test: int = 500


@dataclass
class SynthNliConfig(DatasetConfig):
    """SNLI-shaped synthetic NLI over real GloVe words: subset / replacement / negation."""

    name: str = "synth_nli"
    kind: str = "nli"
    seq_len: int = 25
    n_classes: int = 3
    vectors: str = "glove-6b-50d"
    vectors_format: str = "auto"
    vocab_words: int = 2000  # content words taken from GloVe frequency ranks 100 onwards
    premise_len_min: int = 6
    premise_len_max: int = 14
    hypothesis_len_min: int = 3
    hypothesis_len_max: int = 8
    label_noise: float = 0.1  # fraction of labels replaced by one of the two other classes
    n_train: int = 3000
    n_val: int = 600
    n_test: int = 600


SCHEMAS: dict[str, type[DatasetConfig]] = {
    "rt_snippets": RtSnippetsConfig,
    "imdb": ImdbConfig,
    "snli": SnliConfig,
    "synth_sentiment": SynthSentimentConfig,
    "synth_nli": SynthNliConfig,
}


def register_dataset_configs(cs: ConfigStore) -> None:
    """Store every schema as `group="dataset", name="<name>_schema"`."""
    for name, schema in SCHEMAS.items():
        cs.store(group="dataset", name=f"{name}_schema", node=schema)
