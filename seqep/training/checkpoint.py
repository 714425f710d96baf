"""Checkpoints: atomic writes, `weights_only=True` loads, full resume state, old-code imports.

Our file (`checkpoints/last.pt`, `checkpoints/best.pt`) is a plain dict of tensors and primitives:

    format: "seqep-checkpoint", version: 1
    model_state_dict   keys `synapses.<i>.weight|bias`, as in the old code (projections first)
    optimizer, scheduler   their state_dicts (last.pt only; scheduler may be None)
    epoch              epochs completed
    best               {"val_acc": float, "epoch": int}
    rng                torch / numpy / python (/ cuda) states and named generators ('data' = batch order)
    config             the resolved run config (plain dict)

`load_weights` also reads the old code's `checkpoint.tar` (`model_state_dict`, `opt`, `train_acc`, `test_acc`,
`best`, `epoch`, `scheduler`) and a bare state dict. Its pickled `model.pt` cannot be read safely and is refused.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqep.errors import SeqepError

FORMAT = "seqep-checkpoint"
VERSION = 1
CKPT_DIR = "checkpoints"


# ------------------------------------------------------------------------------------------ writing
def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` to `path` atomically: a temp file in the same directory, fsync, then `os.replace`.

    A crash mid-write leaves the previous file untouched (and no stray temp file on a Python error).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # partial files of writes that a kill interrupted
        stale.unlink(missing_ok=True)
    return path


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint file atomically (e.g. the old run's best.pt into a resumed run)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.copy.tmp")
    tmp.write_bytes(Path(src).read_bytes())
    os.replace(tmp, dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def weights_state(model: nn.Module, epoch: int, val_acc: float, config: dict[str, Any]) -> dict[str, Any]:
    """best.pt: the weights of the best validation epoch, without optimizer or RNG state."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": int(epoch),
        "best": {"val_acc": float(val_acc), "epoch": int(epoch)},
        "config": config,
    }


def training_state(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
    epoch: int,
    best_val_acc: float,
    best_epoch: int,
    generators: dict[str, torch.Generator],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resume needs, as a `weights_only`-loadable dict."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "best": {"val_acc": float(best_val_acc), "epoch": int(best_epoch)},
        "rng": capture_rng(generators),
        "config": config,
    }


# ------------------------------------------------------------------------------------------ RNG
def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Global torch, numpy, python (and cuda) states plus named generators (`data` shuffling, ...) as tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    saved = state.get("generators", {})
    for name, g in generators.items():
        if name in saved:
            g.set_state(saved[name])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ reading
# Old-code checkpoints may hold numpy scalars (accuracies); these few inert types are allowed, nothing else.
_NUMPY_SCALARS: list = [
    np._core.multiarray.scalar,
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),  # files written with numpy 1.x
    np.dtype,
    np.dtypes.Float64DType, np.dtypes.Float32DType, np.dtypes.Int64DType, np.dtypes.Int32DType,
]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """`torch.load(weights_only=True)` on CPU; any failure becomes a one-line `SeqepError`."""
    path = Path(path)
    if not path.is_file():
        raise SeqepError(f"checkpoint not found: {path}")
    verify_integrity(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_SCALARS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a refused object: the bytes themselves are broken
            raise SeqepError(f"checkpoint {path} is corrupt or not a PyTorch file (unreadable data)") from None
        raise SeqepError(
            f"checkpoint {path} holds a pickled Python object ({found.group(1)}) that cannot be loaded safely "
            "with weights_only=True; if it is the old code's model.pt, load its checkpoint.tar instead, "
            "or save `model.state_dict()` from the old code"
        ) from None
    except Exception as err:  # truncated or garbage bytes surface as many different exception types
        raise SeqepError(f"checkpoint {path} is corrupt or not a PyTorch file ({_first_line(err)})") from None
    if not isinstance(obj, dict):
        raise SeqepError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def verify_integrity(path: Path) -> None:
    """A checkpoint saved by torch is a zip whose members carry CRC-32s: check every one, so flipped bits in the
    tensor data are an error instead of weights of 1e25 (torch.load does not check them). Files of the legacy
    non-zip format are left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise SeqepError(f"checkpoint {path} is corrupt ({_first_line(err)})") from None
    if bad is not None:
        raise SeqepError(f"checkpoint {path} is corrupt: the CRC of {bad} does not match its data (flipped bits or a "
                         f"partial copy); use another checkpoint, e.g. the run's other one in checkpoints/")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0].split(". ")[0][:160] if lines else type(err).__name__


def resolve_checkpoint_path(target: str | os.PathLike, name: str = "last.pt") -> Path:
    """A run directory means `<run dir>/checkpoints/<name>`; a file path is used as is."""
    path = Path(target).expanduser()
    if path.is_dir():
        for candidate in (path / CKPT_DIR / name, path / name):
            if candidate.is_file():
                return candidate
        raise SeqepError(f"no checkpoint in {path}: looked for {path / CKPT_DIR / name}")
    if not path.exists():
        raise SeqepError(f"checkpoint not found: {path}")
    return path


def extract_state_dict(obj: dict[str, Any], path: str | os.PathLike = "?") -> tuple[dict[str, torch.Tensor], str]:
    """The model weights of ours / the old code's checkpoint.tar / a bare state dict, and which it was."""
    if obj.get("format") == FORMAT:
        return obj["model_state_dict"], "seqep"
    if isinstance(obj.get("model_state_dict"), dict):
        return obj["model_state_dict"], "old-code checkpoint.tar"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "bare state dict"
    raise SeqepError(
        f"checkpoint {path} has no model weights: expected a seqep checkpoint, the old code's checkpoint.tar "
        f"(with 'model_state_dict') or a state dict of tensors; found keys {sorted(obj)[:8]}"
    )


def describe_model(model: nn.Module) -> str:
    """One line naming the configured architecture, for mismatch errors."""
    head = ""
    if hasattr(model, "kind"):
        head = f"model.kind={model.kind}, L={model.seq_len}, d={model.embed_dim}, model.fc={list(model.fc)}: "
    return head + describe_shapes(model.state_dict())


def describe_shapes(state: dict[str, torch.Tensor]) -> str:
    weights = sorted((k for k in state if k.endswith(".weight")), key=_synapse_index)
    return ", ".join(f"{k.removesuffix('.weight')} {tuple(state[k].shape)}" for k in weights)


def _synapse_index(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 1 << 30, key)


def load_weights(model: nn.Module, target: str | os.PathLike) -> dict[str, Any]:
    """Load weights from our checkpoint, an old-code checkpoint.tar or a bare state dict into `model`.

    A run directory means its `checkpoints/best.pt`. Returns the file's metadata (kind, path, epoch, ...).
    Raises `SeqepError` naming both architectures when the shapes do not fit.
    """
    path = resolve_checkpoint_path(target, name="best.pt")
    obj = read_checkpoint(path)
    state, kind = extract_state_dict(obj, path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        problems = []
        if wrong:
            k = wrong[0]
            problems.append(f"{k} is {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} expected")
        if missing:
            problems.append(f"missing {', '.join(missing[:4])}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected[:4])}")
        raise SeqepError(
            f"checkpoint {path} ({kind}) does not fit the configured model ({'; '.join(problems)}). "
            f"Configured: {describe_model(model)}. In the file: {describe_shapes(state)}. "
            "Set model.fc, model.kind, dataset.seq_len and the word vectors to match the file"
        )
    tensors = {k: v.to(dtype=expected[k].dtype, device=expected[k].device) for k, v in state.items()}
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise SeqepError(f"checkpoint {path} holds NaN or Inf in {k}")
    model.load_state_dict(tensors)
    meta = {"path": str(path), "kind": kind, "epoch": obj.get("epoch")}
    if kind == "seqep":
        meta["best"] = obj.get("best")
    return meta


# ------------------------------------------------------------------------------------------ resume
# Configs stored before the groups named their classes recorded `name:`; the class each name meant.
LEGACY_TARGETS = {
    "optimizer": {"adam": "torch.optim.Adam", "sgd": "torch.optim.SGD"},
    "scheduler": {"cosine": "torch.optim.lr_scheduler.CosineAnnealingLR", "none": None},
    "algorithm": {"ep": "seqep.estimators.EP", "bptt": "seqep.estimators.BPTT"},
    "dataset": {"rt_snippets": "seqep.data.RtSnippets", "imdb": "seqep.data.Imdb", "snli": "seqep.data.Snli",
                "synth_sentiment": "seqep.data.SynthSentiment", "synth_nli": "seqep.data.SynthNli"},
}


def object_target(config: dict[str, Any], group: str) -> str | None:
    """The `_target_` a saved config gave a group (None: no object, e.g. `scheduler: null`)."""
    node = (config or {}).get(group)
    if not isinstance(node, dict):
        return None
    if "_target_" in node:
        return str(node["_target_"])
    return LEGACY_TARGETS.get(group, {}).get(str(node.get("name")), node.get("name"))


def restore_training(target: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     generators: dict[str, torch.Generator], config: dict[str, Any]) -> dict[str, Any]:
    """Load a full training checkpoint (a run dir means its last.pt) into the run's objects; returns the state,
    with `path`. The optimizer and scheduler must be built from the same classes (`_target_`) as the saved run."""
    path = resolve_checkpoint_path(target, name="last.pt")
    state = read_checkpoint(path)
    if state.get("format") != FORMAT or state.get("optimizer") is None:
        raise SeqepError(f"{path} is not a full seqep training checkpoint (no optimizer state); resume from a "
                         "run's checkpoints/last.pt, or start from its weights with checkpoint.load")
    load_weights(model, path)
    for group in ("optimizer", "scheduler"):
        saved, current = (state.get("config") or {}).get(group), (config or {}).get(group)
        then, now = object_target(state.get("config"), group), object_target(config, group)
        if then != now:
            raise SeqepError(f"{path} was trained with {group} {then}, this run has {group} {now}: resume with "
                             f"the same {group} option, or start from its weights with checkpoint.load")
        if isinstance(saved, dict) and isinstance(current, dict) and "_target_" in saved:
            changed = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
            if changed:
                k = changed[0]
                raise SeqepError(f"{path} was trained with {group}.{k}={saved.get(k)}, this run has {group}.{k}="
                                 f"{current.get(k)}: a resume restores the saved {group} state, so its settings "
                                 f"must match; resume with the saved values, or start from its weights with "
                                 f"checkpoint.load")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as err:
        raise SeqepError(f"the optimizer state in {path} does not fit this run's optimizer ({_first_line(err)}); "
                         "start from its weights with checkpoint.load instead") from None
    restore_rng(state["rng"], generators)
    return {**state, "path": path}


def run_dir_of(path: Path) -> Path:
    """The run directory of a checkpoint file (`<run>/checkpoints/x.pt` or `<run>/x.pt`) or of a run directory."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == CKPT_DIR else path.parent


def carry_best(path: Path, best_path: Path) -> None:
    """Copy the resumed run's best.pt into the new run (unless it is the same file)."""
    old_best = run_dir_of(path) / CKPT_DIR / "best.pt"
    if old_best.is_file() and old_best.resolve() != best_path.resolve():
        copy_checkpoint(old_best, best_path)


def read_history(path: Path, epoch: int) -> list[dict[str, Any]]:
    """The epoch rows of the resumed run's metrics.jsonl up to `epoch` (so the new run's curves stay whole)."""
    import json

    history, metrics = {}, run_dir_of(path) / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill mid-write: that row is simply not carried over
                continue
            if isinstance(row, dict) and row.pop("kind", "epoch") == "epoch" and row.get("epoch", epoch + 1) <= epoch:
                history[row["epoch"]] = row
    return [history[k] for k in sorted(history)]
