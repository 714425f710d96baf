"""On-disk cache of prepared datasets: one uncompressed `.npz` per (dataset, settings) key.

The file holds the int32 token ids and int64 labels of each split, the float32 vector matrix and a JSON string
`meta` (words, info). It is written to a temporary file in the same folder and moved into place with
`os.replace`, so a crash never leaves a half-written cache behind. The key is a hash of everything that
changes the arrays: source file identities, cleaning and split settings, `L` and the vectors' identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from seqep.data.bundle import SPLITS, DataBundle, make_bundle

log = logging.getLogger("seqep.data")

CACHE_VERSION = 1  # bump when a code change alters prepared arrays, so old caches are not reused


def cache_key(parts: dict[str, Any]) -> str:
    """16 hex digits of the sha256 of `parts` as sorted JSON (plus the cache format version)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_file(root: Path, name: str, key: str) -> Path:
    """`<root>/cache/<name>-<key>.npz`."""
    return root / "cache" / f"{name}-{key}.npz"


def save_bundle(path: Path, bundle: DataBundle) -> None:
    """Write `bundle` to `path` atomically (temporary file + `os.replace`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {k: v for k, v in bundle.info.items() if k not in ("from_cache", "seconds", "cache_path")}
    meta = {
        "name": bundle.name,
        "kind": bundle.kind,
        "seq_len": bundle.seq_len,
        "n_classes": bundle.n_classes,
        "words": bundle.words,
        "info": info,
    }
    arrays: dict[str, np.ndarray] = {"vectors": bundle.vectors.numpy(), "meta": np.array(json.dumps(meta))}
    for s in SPLITS:
        arrays[f"{s}_ids"] = bundle.split(s).ids.numpy()
        arrays[f"{s}_labels"] = bundle.split(s).labels.numpy()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_bundle(path: Path) -> DataBundle | None:
    """The cached bundle at `path`, or None when there is none or it is unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            splits = {s: (z[f"{s}_ids"], z[f"{s}_labels"]) for s in SPLITS}
            vectors = z["vectors"]
    except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
        log.warning("ignoring unreadable data cache %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    return make_bundle(
        name=meta["name"],
        kind=meta["kind"],
        seq_len=meta["seq_len"],
        n_classes=meta["n_classes"],
        vectors=vectors,
        splits=splits,
        synthetic=False,
        info=meta["info"],
        words=meta["words"],
    )
