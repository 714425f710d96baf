"""SNLI 1.0 (Bowman et al. 2015, "A large annotated corpus for learning natural language inference").

Accepted layouts (`dataset.path`, or searched under the data root): the folder `snli_1.0/` (or a folder holding
it), the archive `snli_1.0.zip` (read in place), each with `snli_1.0_{train,dev,test}.<ext>` where `<ext>` is
`jsonl` (keys `gold_label`, `sentence1`, `sentence2`), `txt` (tab-separated, header row) or `csv` (the old code's
`gold_label,sentence1,sentence2` files, e.g. in `snli_data/`). Labels: neutral 0, contradiction 1,
entailment 2; rows labelled `-` (no annotator majority) are dropped. Splits: official train / dev (= val) / test,
unless `val_fraction > 0` carves validation from train instead (for CSV sets without a dev file).
Each row becomes `2L` token ids: the premise cut/padded to `L`, then the hypothesis cut/padded to `L`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from seqep.data.bundle import DataBundle
from seqep.data.clean import TextCleaner
from seqep.data.errors import DataError, missing_file_error
from seqep.data.prepare import RawSplits, carve_validation, prepare_text_dataset
from seqep.data.sources import data_root, file_identity, require_path

LABELS = {"neutral": 0, "contradiction": 1, "entailment": 2}
NO_LABEL = "-"
FORMATS = ("jsonl", "txt", "csv")
OFFICIAL = {"train": "train", "val": "dev", "test": "test"}
FOLDERS = ("snli_1.0", "snli_1.0.zip", "snli/snli_1.0", "snli/snli_1.0.zip", "snli_data")
HOW_TO_GET = (
    "download snli_1.0.zip from https://nlp.stanford.edu/projects/snli/ and put it (or the extracted snli_1.0/ "
    "folder) under the data root, or set dataset.path=<folder or zip>"
)
Row = tuple[str, str, str]  # gold_label, sentence1, sentence2


def load_snli(cfg: DictConfig) -> DataBundle:
    """The `snli` bundle (cached after the first call)."""
    root = data_root(cfg.root)
    source = SnliSource(locate_snli(cfg, root), cfg.format)
    wanted = ("train", "test") if cfg.val_fraction > 0 else ("train", "val", "test")
    files = {s: source.find(OFFICIAL[s]) for s in wanted}
    extra: dict = {"source_files": {s: name for s, name in files.items()}}

    def read() -> RawSplits:
        clean = TextCleaner(snli=True, fix_az_range=cfg.fix_az_range)
        memo: dict[str, list[str]] = {}

        def tokens(text: str) -> list[str]:
            if text not in memo:
                memo[text] = clean(text)
            return memo[text]

        raw: RawSplits = {}
        for split, name in files.items():
            docs, labels, dropped = [], [], 0
            for lineno, (gold, s1, s2) in source.rows(name):
                if gold == NO_LABEL:
                    dropped += 1
                    continue
                if gold not in LABELS:
                    raise DataError(f"{source.where(name)}:{lineno}: unknown gold_label {gold!r} (expected "
                                    f"{', '.join(LABELS)} or '-')")
                docs.append((tokens(s1), tokens(s2)))
                labels.append(LABELS[gold])
            raw[split] = (docs, labels)
            extra[f"dropped_no_label_{split}"] = dropped
        if cfg.val_fraction > 0:
            raw["train"], raw["val"] = carve_validation(*raw["train"], cfg.val_fraction, cfg.split_seed)
        return raw

    return prepare_text_dataset(
        cfg, n_classes=3, source=str(source.path), source_identity=file_identity(source.path), read=read,
        extra_info=extra,
    )


def locate_snli(cfg: DictConfig, root: Path) -> Path:
    """The SNLI folder or zip to read."""
    if cfg.path:
        path = require_path(cfg.path, root, "SNLI data (dataset.path)", HOW_TO_GET)
        return path / "snli_1.0" if (path / "snli_1.0").is_dir() else path
    searched = [root / name for name in FOLDERS]
    for path in searched:
        if path.exists():
            return path
    raise missing_file_error("SNLI data", ["snli_1.0/", "snli_1.0.zip", "snli_data/"], searched, HOW_TO_GET)


class SnliSource:
    """The split files of a folder or zip: `find` picks a file per split, `rows` reads it."""

    def __init__(self, path: Path, fmt: str = "auto") -> None:
        if fmt != "auto" and fmt not in FORMATS:
            raise DataError(f"dataset.format={fmt!r} is not one of auto, {', '.join(FORMATS)}")
        self.path = path
        self.formats = FORMATS if fmt == "auto" else (fmt,)
        self.is_zip = path.is_file()
        if self.is_zip:
            try:
                with zipfile.ZipFile(path) as z:
                    names = [n for n in z.namelist() if not n.startswith("__MACOSX") and not n.endswith("/")]
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{path}: not a readable zip archive ({exc})") from None
            self.members = {n.rsplit("/", 1)[-1]: n for n in sorted(names, key=len, reverse=True)}
        else:
            self.members = {p.name: p.name for p in path.iterdir() if p.is_file()}

    def find(self, split: str) -> str:
        """The member/file name for an official split (`train`, `dev`, `test`) in the preferred format."""
        names = [f"snli_1.0_{split}.{ext}" for ext in self.formats]
        for name in names:
            if name in self.members:
                return self.members[name]
        how = HOW_TO_GET
        if split == "dev":
            how += "; without a dev file set dataset.val_fraction=0.02 to carve validation from train"
        raise missing_file_error(f"SNLI {split} split", names, [self.path], how)

    def where(self, name: str) -> str:
        """How a file is named in messages."""
        return f"{self.path}:{name}" if self.is_zip else str(self.path / name)

    def rows(self, name: str) -> Iterator[tuple[int, Row]]:
        """`(line number, (gold_label, sentence1, sentence2))` for each data row of a split file."""
        with self._open(name) as f:
            reader = {"jsonl": _jsonl_rows, "txt": _txt_rows, "csv": _csv_rows}[name.rsplit(".", 1)[-1]]
            yield from reader(f, self.where(name))

    @contextmanager
    def _open(self, name: str) -> Iterator[io.TextIOWrapper]:
        if self.is_zip:
            with zipfile.ZipFile(self.path) as z, z.open(name) as member:
                yield io.TextIOWrapper(member, encoding="utf-8", errors="replace", newline="")
        else:
            with open(self.path / name, encoding="utf-8", errors="replace", newline="") as f:
                yield f


def _jsonl_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, Row]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            row = (item["gold_label"], item["sentence1"], item["sentence2"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{where}:{lineno}: malformed SNLI jsonl line ({type(exc).__name__}: {exc}); "
                            "expected an object with gold_label, sentence1, sentence2") from None
        yield lineno, row


def _txt_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, Row]]:
    it = iter(lines)
    header = next(it, "").rstrip("\r\n").split("\t")
    cols = _columns(header, where)
    for lineno, line in enumerate(it, start=2):
        line = line.rstrip("\r\n")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) < len(header):
            raise DataError(f"{where}:{lineno}: {len(fields)} tab-separated fields, the header has {len(header)}")
        yield lineno, tuple(fields[c] for c in cols)


def _csv_rows(lines: Iterable[str], where: str) -> Iterator[tuple[int, Row]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(lines)
    header = next(reader, [])
    cols = _columns(header, where)
    for fields in reader:
        if not fields:
            continue
        if len(fields) < len(header):
            raise DataError(f"{where}:{reader.line_num}: {len(fields)} CSV fields, the header has {len(header)}")
        yield reader.line_num, tuple(fields[c] for c in cols)


def _columns(header: list[str], where: str) -> list[int]:
    names = [h.strip() for h in header]
    try:
        return [names.index(c) for c in ("gold_label", "sentence1", "sentence2")]
    except ValueError:
        raise DataError(f"{where}:1: header {names[:6]} lacks one of gold_label, sentence1, sentence2") from None
