"""Runs re-evaluate themselves: `task=test` and `task=gdu` with `checkpoint.load=<run>` take the dataset, model and
learning rule of the run they load from the config stored in its checkpoint, so what is evaluated is what was
trained (a model trained with T=10 is tested at T=10, on its own data).

An override of those groups on the command line is explicit and recorded (`summary.json`: `config_from`,
`changed_from_stored`): `algorithm.T=20` changes that key of the stored rule, `dataset=snli` replaces the group.
Weights without a stored config (the old code's checkpoint.tar, a bare state dict) use the config as composed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seqep.training import checkpoint as ckpt

GROUPS = ("dataset", "model", "algorithm")  # what a checkpoint's weights mean
# keys of configs stored before the groups named classes (ckpt.LEGACY_TARGETS) that the classes do not take
LEGACY_UNUSED = {"algorithm": {"ep": ("name", "truncate"), "bptt": ("name", "variant", "betas")},
                 "dataset": ("kind", "n_classes")}


def stored_config(target: str) -> tuple[dict[str, Any] | None, Path]:
    """The resolved config a seqep checkpoint (a run dir means its best.pt) was written with; None for weights
    without one."""
    path = ckpt.resolve_checkpoint_path(target, name="best.pt")
    state = ckpt.read_checkpoint(path)
    config = state.get("config") if isinstance(state, dict) and state.get("format") == ckpt.FORMAT else None
    return (config if isinstance(config, dict) else None), path


def modern(group: str, node: dict[str, Any]) -> dict[str, Any]:
    """A stored group node as today's options write it (`_target_` instead of the old `name:`)."""
    node = dict(node)
    if "_target_" in node:
        return node
    if group == "model":
        return {"_target_": "seqep.network.HopfieldEPNet", **node}
    name = str(node.get("name"))
    unused = LEGACY_UNUSED[group].get(name, ()) if group == "algorithm" else LEGACY_UNUSED[group]
    return {"_target_": ckpt.LEGACY_TARGETS[group][name], **{k: v for k, v in node.items() if k not in unused}}


def explicit_overrides() -> list[str]:
    """The job's command-line overrides (Hydra's `overrides.task`); none outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def apply_stored(cfg: DictConfig, explicit: list[str]) -> dict[str, Any]:
    """Replace `cfg`'s dataset, model and algorithm by those stored with `checkpoint.load`, keeping the explicit
    overrides; returns what summary.json records (empty when the weights carry no config)."""
    stored, path = stored_config(str(cfg.checkpoint.load))
    if stored is None or not all(isinstance(stored.get(g), dict) for g in GROUPS):
        return {}
    changed = []
    keys = [o.split("=", 1)[0].lstrip("+~") for o in explicit if "=" in o]
    for group in GROUPS:
        if group in keys:  # `dataset=snli`: the group replaced, on purpose
            changed.append(f"{group}={OmegaConf.select(cfg, f'{group}._target_')} (stored: "
                           f"{modern(group, stored[group])['_target_']})")
            continue
        node = OmegaConf.create(modern(group, stored[group]))
        for key in (k for k in keys if k.startswith(f"{group}.")):
            value, before = OmegaConf.select(cfg, key), OmegaConf.select(node, key[len(group) + 1:])
            OmegaConf.update(node, key[len(group) + 1:], value, force_add=True)
            if value != before:
                changed.append(f"{key}={value} (stored: {before})")
        with open_dict(cfg):
            cfg[group] = node
    return {"config_from": str(path), "changed_from_stored": changed}
