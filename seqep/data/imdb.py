"""IMDB reviews (Maas et al. 2011, "Learning Word Vectors for Sentiment Analysis"), 25k train / 25k test.

Accepted layouts (`dataset.path`, or searched in `<root>` and `<root>/imdb`):
* the folder `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` (or a folder holding `aclImdb/`);
* the archive `aclImdb_v1.tar.gz` (read in place, not extracted);
* keras' `imdb.npz` with `imdb_word_index.json` next to it (or `dataset.word_index`), as the old code used.
pos = 1, neg = 0; `unsup/`, `*.feat` and `urls_*` are ignored. Validation is carved from the official train
split with `split_seed`; test is the official test split.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from seqep.data.bundle import DataBundle
from seqep.data.clean import TextCleaner
from seqep.data.errors import DataError, missing_file_error
from seqep.data.prepare import RawSplits, carve_validation, prepare_text_dataset
from seqep.data.sources import candidate_paths, data_root, file_identity, find_path, require_path

FOLDER = "aclImdb"
ARCHIVE = "aclImdb_v1.tar.gz"
KERAS_NPZ = "imdb.npz"
KERAS_INDEX = "imdb_word_index.json"
REVIEW = re.compile(r"(?:^|/)(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
HOW_TO_GET = (
    f"download {ARCHIVE} from https://ai.stanford.edu/~amaas/data/sentiment/ and put it (or the extracted "
    f"{FOLDER}/ folder) under the data root, or set dataset.path=<folder, archive or {KERAS_NPZ}>"
)

Reviews = dict[str, tuple[list[str], list[int]]]  # official split -> (texts, labels)


def load_imdb(cfg: DictConfig) -> DataBundle:
    """The `imdb` bundle (cached after the first call)."""
    root = data_root(cfg.root)
    path = locate_imdb(cfg, root)

    def read() -> RawSplits:
        reviews = read_keras(path, cfg, root) if path.suffix == ".npz" else read_reviews(path)
        clean = TextCleaner(fix_az_range=cfg.fix_az_range)
        docs = {s: [clean(t) for t in texts] for s, (texts, _) in reviews.items()}
        train, val = carve_validation(docs["train"], reviews["train"][1], cfg.val_fraction, cfg.split_seed)
        return {"train": train, "val": val, "test": (docs["test"], reviews["test"][1])}

    return prepare_text_dataset(cfg, n_classes=2, source=str(path), source_identity=file_identity(path), read=read)


def locate_imdb(cfg: DictConfig, root: Path) -> Path:
    """The IMDB folder, archive or npz to read (see the module docstring)."""
    if cfg.path:
        path = require_path(cfg.path, root, "IMDB data (dataset.path)", HOW_TO_GET)
        return path / FOLDER if (path / FOLDER).is_dir() else path
    searched = []
    for folder in (root, root / "imdb"):
        for name in (FOLDER, ARCHIVE, KERAS_NPZ):
            searched.append(folder / name)
            if searched[-1].exists():
                return searched[-1]
    raise missing_file_error("IMDB data", [f"{FOLDER}/", ARCHIVE, KERAS_NPZ], searched, HOW_TO_GET)


def read_reviews(path: Path) -> Reviews:
    """Texts and labels of the official splits from the folder or the tar archive, in a fixed order."""
    found: dict[tuple[str, str], list[tuple[int, str]]] = {
        (s, c): [] for s in ("train", "test") for c in ("neg", "pos")
    }
    if path.is_dir():
        for (split, cls), items in found.items():
            folder = path / split / cls
            if folder.is_dir():
                for f in folder.iterdir():
                    m = REVIEW.search(f"{split}/{cls}/{f.name}")
                    if m:
                        items.append((int(m.group(3)), f.read_text(encoding="utf-8", errors="replace")))
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    m = REVIEW.search(member.name)
                    if m and member.isfile():
                        text = tar.extractfile(member).read().decode("utf-8", errors="replace")
                        found[(m.group(1), m.group(2))].append((int(m.group(3)), text))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable IMDB archive ({exc})") from None
    reviews: Reviews = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, cls in enumerate(("neg", "pos")):
            for _, text in sorted(found[(split, cls)], key=lambda item: item[0]):
                texts.append(text)
                labels.append(label)
        if not texts:
            raise DataError(
                f"IMDB: no reviews found for the {split} split in {path} "
                f"(expected {split}/pos/<id>_<rating>.txt and {split}/neg/<id>_<rating>.txt)"
            )
        reviews[split] = (texts, labels)
    return reviews


def read_keras(path: Path, cfg: DictConfig, root: Path) -> Reviews:
    """Reviews decoded from keras' `imdb.npz` (word ranks) with `imdb_word_index.json` (word -> rank).

    The npz holds object arrays, so it is loaded with `allow_pickle=True`: only use files you trust.
    """
    index_path = find_path(cfg.word_index, root) if cfg.word_index else path.with_name(KERAS_INDEX)
    if index_path is None or not index_path.is_file():
        searched = candidate_paths(cfg.word_index, root) if cfg.word_index else [path.with_name(KERAS_INDEX)]
        raise missing_file_error(
            "keras IMDB word index", [KERAS_INDEX], searched,
            f"keras saves it next to {KERAS_NPZ} (~/.keras/datasets/); or set dataset.word_index=<path>",
        )
    try:
        word_of = {rank: word for word, rank in json.loads(index_path.read_text(encoding="utf-8")).items()}
    except (ValueError, AttributeError) as exc:
        raise DataError(f"{index_path}: not a JSON object word -> rank ({exc})") from None
    reviews: Reviews = {}
    try:
        with np.load(path, allow_pickle=True) as z:
            for split in ("train", "test"):
                seqs, labels = z[f"x_{split}"], z[f"y_{split}"]
                texts = [" ".join(word_of.get(int(r), "#") for r in seq) for seq in seqs]
                reviews[split] = (texts, [int(v) for v in labels])
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a keras IMDB npz with x_train/y_train/x_test/y_test ({exc})") from None
    return reviews
