"""The datasets as objects: each class is a `dataset=<option>` (`_target_: seqep.data.<Class>`), its fields are
the option's keys with their defaults (the one place they are written), and `load()` returns the `DataBundle`.

A dataset of one's own is any class with the attributes of `Dataset` (`name`, `kind`, `n_classes`, `seq_len`,
`batch_size`, `eval_batch_size`) and a `load()` returning a `DataBundle` (README, "Extending seqep").
Relative paths (`root`, `path`, `vectors`, `sdist`, `txt`) are looked up in the current directory, then under
the data root (`root`, default `$SEQEP_DATA` or `./data`); caches go to `<root>/cache`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import DictConfig, OmegaConf

from seqep.data.bundle import DataBundle
from seqep.data.errors import DataError

GOOGLE_NEWS = "GoogleNews-vectors-negative300.bin.gz"
DEFAULT_ROOT = "${oc.env:SEQEP_DATA,data}"


@dataclass
class Dataset:
    """Keys every dataset has. `kind` (sentiment | nli) and `n_classes` are fixed by the data: class attributes,
    not keys, so the model can be checked against them before anything loads."""

    kind: ClassVar[str]
    n_classes: ClassVar[int]
    reader: ClassVar[str]  # `module.function` that turns `settings()` into the DataBundle
    name: str = ""
    root: str = DEFAULT_ROOT  # data root (relative: to the current directory); cache in <root>/cache
    seq_len: int = 0  # L: tokens per sequence (per sentence for NLI)
    batch_size: int = 64
    eval_batch_size: int = 256
    split_seed: int = 0  # seed of the train/val split (text data) or of the generator (synthetic data)

    def __post_init__(self) -> None:
        if self.root == DEFAULT_ROOT:  # built from Python rather than from the config
            self.root = os.environ.get("SEQEP_DATA", "data")
        for key in ("seq_len", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise DataError(f"{key}={getattr(self, key)} must be >= 1")
        for f in dataclasses.fields(self):  # counts and sizes of one's data: never negative
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 and f.name != "split_seed":
                raise DataError(f"{f.name}={value} must be >= 0")
        fractions = [getattr(self, k) for k in ("val_fraction", "test_fraction") if hasattr(self, k)]
        if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
            raise DataError(f"val/test fractions {fractions} must be in [0, 1) and sum to less than 1")

    def settings(self) -> DictConfig:
        """Every key plus `kind` and `n_classes`, as the loaders (and the cache key) read them."""
        return OmegaConf.create({**dataclasses.asdict(self), "kind": self.kind, "n_classes": self.n_classes})

    def load(self) -> DataBundle:
        """Read (or generate) the data with the class's `reader`, a function of `settings()`; a dataset of one's own
        may instead override `load` itself."""
        from hydra.utils import get_object

        return get_object(self.reader)(self.settings())


@dataclass
class TextDataset(Dataset):
    """Real text: cleaning settings, word vectors and the cache."""

    vectors: str = "glove-6b-50d"  # "glove-6b-50d" (installed package) or a path to a vectors file
    vectors_format: str = "auto"  # auto | word2vec_binary | word2vec_text | glove_text | kv
    fix_az_range: bool = False  # False keeps the old code's [^a-zA-z...] typo (faithful)
    use_cache: bool = True


@dataclass
class RtSnippets(TextDataset):
    """Rotten Tomatoes snippets (Hutto & Gilbert 2014) from the vaderSentiment 3.3.2 sdist; seeded 80/10/10."""

    name: str = "rt_snippets"
    kind: ClassVar[str] = "sentiment"
    seq_len: int = 48
    n_classes: ClassVar[int] = 2
    reader: ClassVar[str] = "seqep.data.rt_snippets.load_rt_snippets"
    sdist: Optional[str] = None  # local vaderSentiment-3.3.2.tar.gz instead of `pip download`
    txt: Optional[str] = None  # local movieReviewSnippets_GroundTruth.txt instead of the sdist
    verify_sha256: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class Imdb(TextDataset):
    """IMDB (Maas et al. 2011): aclImdb/ folder, aclImdb_v1.tar.gz or keras imdb.npz. Paper preset L=600, d=300."""

    name: str = "imdb"
    kind: ClassVar[str] = "sentiment"
    seq_len: int = 600
    n_classes: ClassVar[int] = 2
    reader: ClassVar[str] = "seqep.data.imdb.load_imdb"
    batch_size: int = 100
    eval_batch_size: int = 250
    vectors: str = GOOGLE_NEWS
    path: Optional[str] = None  # aclImdb folder (or its parent), aclImdb_v1.tar.gz or imdb.npz
    word_index: Optional[str] = None  # imdb_word_index.json for imdb.npz (default: next to it)
    val_fraction: float = 0.1  # carved from the official train split with split_seed


@dataclass
class Snli(TextDataset):
    """SNLI 1.0 (Bowman et al. 2015): snli_1.0/ folder or snli_1.0.zip. Paper preset L=25, d=300."""

    name: str = "snli"
    kind: ClassVar[str] = "nli"
    seq_len: int = 25
    n_classes: ClassVar[int] = 3
    reader: ClassVar[str] = "seqep.data.snli.load_snli"
    batch_size: int = 200
    eval_batch_size: int = 500
    vectors: str = GOOGLE_NEWS
    path: Optional[str] = None  # snli_1.0 folder (or its parent), snli_1.0.zip, or a folder of CSV files
    format: str = "auto"  # auto (jsonl, then txt, then csv) | jsonl | txt | csv
    val_fraction: float = 0.0  # 0: official dev split; > 0: carve validation from train instead


@dataclass
class SynthSentiment(Dataset):
    """IMDB-shaped synthetic sentiment: a few cue tokens anywhere in a long sequence decide the label."""

    name: str = "synth_sentiment"
    kind: ClassVar[str] = "sentiment"
    seq_len: int = 64
    n_classes: ClassVar[int] = 2
    reader: ClassVar[str] = "seqep.data.synthetic.load_synth_sentiment"
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
class SynthNli(Dataset):
    """SNLI-shaped synthetic NLI over real GloVe words: subset / replacement / negation."""

    name: str = "synth_nli"
    kind: ClassVar[str] = "nli"
    seq_len: int = 25
    n_classes: ClassVar[int] = 3
    reader: ClassVar[str] = "seqep.data.synthetic.load_synth_nli"
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
