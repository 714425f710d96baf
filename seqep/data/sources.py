"""Where files are: the data root, user paths, and file identities for cache keys."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from seqep.data.errors import missing_file_error


def data_root(root: str) -> Path:
    """The data root as an absolute path (a relative `dataset.root` is relative to the current directory)."""
    return Path(os.path.expandvars(str(root))).expanduser().resolve()


def candidate_paths(value: str, root: Path) -> list[Path]:
    """Where a user path may be: itself if absolute, else the current directory and then the data root."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    cands = [Path.cwd() / path, root / path]
    return list(dict.fromkeys(p.resolve() for p in cands))


def find_path(value: str, root: Path) -> Path | None:
    """The first existing candidate of `value`, or None."""
    return next((p for p in candidate_paths(value, root) if p.exists()), None)


def require_path(value: str, root: Path, what: str, how: str) -> Path:
    """`find_path`, or a missing-file `DataError` naming every place searched and how to get the file."""
    path = find_path(value, root)
    if path is None:
        raise missing_file_error(what, [value], candidate_paths(value, root), how)
    return path


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size and mtime of a file; for a folder, a digest of those of every file below it."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    digest = hashlib.sha256()
    n_files = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            st = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), path)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            n_files += 1
    return {"path": str(path), "files": n_files, "digest": digest.hexdigest()}


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
