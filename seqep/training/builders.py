"""Config -> objects, in one place for every task (train, test, gdu, bench, baseline): each group's node is built
with `hydra.utils.instantiate` from its `_target_`, so a class of one's own plugs in by YAML alone.

A constructor's `ValueError`/`TypeError` becomes one `SeqepError` line naming the key (`algorithm.K=30 > T=20 ...`).

    data    = build_dataset(cfg.dataset).load()
    net     = build_model(cfg.model, seq_len=data.seq_len, embed_dim=data.embed_dim)
    est     = build_estimator(cfg.algorithm, generator, cfg.precision)
    opt     = build_optimizer(cfg.optimizer, net)          # one parameter group per synapse, optimizer.lrs
    sched   = build_scheduler(cfg.scheduler, opt)          # Schedule(scheduler, interval) or None
    loggers = build_loggers(cfg.logger)                    # {name: logger}
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seqep.config import DEFAULT_INTERVAL, INTERVALS
from seqep.errors import SeqepError
from seqep.estimators.base import laid_out_as
from seqep.network import Network

# Arguments of optimizers and schedules that no class should get out of range (torch checks some, not all:
# CosineAnnealingLR takes eta_min=-1 and drives the learning rate negative).
NON_NEGATIVE = ("lr", "eps", "weight_decay", "momentum", "dampening", "eta_min", "warmup_steps", "gamma")
POSITIVE = ("T_max", "step_size", "total_steps")


def check_ranges(node: DictConfig, key: str) -> None:
    """One line for a value out of range among the common optimizer and schedule arguments."""
    for name in (*NON_NEGATIVE, *POSITIVE):
        value = node.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or (value == 0 and name in POSITIVE):
                raise SeqepError(f"{key}.{name}={value} must be {'> 0' if name in POSITIVE else '>= 0'}")


def _node(node: Any, drop: tuple[str, ...] = ()) -> DictConfig:
    node = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    return OmegaConf.create({k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in drop})


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build(node: Any, key: str, *args: Any, drop: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """`instantiate(node, *args, **kwargs)` with seqep's own keys dropped; errors become one line naming `key`."""
    node = _node(node, drop)
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        if isinstance(cause, SeqepError):
            raise cause from None
        raise SeqepError(_keyed(key, node, cause)) from None
    except (ValueError, TypeError) as err:
        raise SeqepError(_keyed(key, node, err)) from None


def _keyed(key: str, node: DictConfig, err: BaseException) -> str:
    """`variant='x' is not allowed` -> `algorithm.variant='x' is not allowed`; else `algorithm (target): ...`."""
    message = _one_line(err)
    unexpected = re.search(r"unexpected keyword argument '(\w+)'", message)
    if unexpected:
        return f"{key}.{unexpected.group(1)} is not a key of {node.get('_target_')}"
    head = message.split("=", 1)[0].split(" ", 1)[0].split("[", 1)[0]
    if head in node and head != "_target_":
        return f"{key}.{message}"
    return f"{key} ({node.get('_target_')}): {message}"


# ------------------------------------------------------------------------------------------ the groups
def build_dataset(node: Any) -> Any:
    """The dataset object (nothing loaded yet: `.load()` reads the files)."""
    return build(node, "dataset")


def build_model(node: Any, *, seq_len: int, embed_dim: int) -> Network:
    """The network, with the sizes that come from the data."""
    return build(node, "model", seq_len=seq_len, embed_dim=embed_dim)


def build_estimator(node: Any, generator: torch.Generator | None = None, precision: str = "fp32") -> Any:
    """The learning rule; it gets `generator` (seeded, saved in checkpoints) when its class takes one, and the
    top-level `precision` as its attribute (`seqep.estimators.Estimator.precision`)."""
    target = _node(node)._target_
    from hydra.utils import get_object

    takes_generator = "generator" in inspect.signature(get_object(target)).parameters
    estimator = build(node, "algorithm", **({"generator": generator} if takes_generator else {}))
    if not hasattr(estimator, "precision"):
        if precision != "fp32":
            raise SeqepError(f"precision={precision}: {target} has no `precision` attribute; subclass "
                             f"seqep.estimators.Estimator (its free phase and predict follow it) or use precision=fp32")
        return estimator
    try:
        estimator.precision = precision
    except ValueError as err:
        raise SeqepError(_one_line(err)) from None
    return estimator


def param_groups(net: Network, lrs: list[float] | None) -> list[dict[str, Any]]:
    """One parameter group per synapse (projections first), each with its own learning rate when `lrs` is given."""
    if lrs is None:
        return [{"params": list(syn.parameters())} for syn in net.synapses]
    if len(lrs) != len(net.synapses):
        order = [f"proj{i + 1}" if net.n_proj > 1 else "proj" for i in range(net.n_proj)]
        order += [f"fc{i + 1}" for i in range(len(net.synapses) - net.n_proj)]
        raise SeqepError(
            f"optimizer.lrs has {len(lrs)} value{'s' if len(lrs) != 1 else ''} but model '{net.kind}' with "
            f"fc={list(net.fc)} has {len(net.synapses)} synapses: give one learning rate per synapse, projections "
            f"first: [{', '.join(order)}] (or optimizer.lrs=null and optimizer.lr for all)")
    for i, lr in enumerate(lrs):
        if lr < 0:
            raise SeqepError(f"optimizer.lrs[{i}]={lr} must be >= 0")
    return [{"params": list(syn.parameters()), "lr": float(lr)} for syn, lr in zip(net.synapses, lrs)]


def build_optimizer(node: Any, net: Network) -> torch.optim.Optimizer:
    """The optimizer's partial (`_partial_: true`) called with one parameter group per synapse; before each step it
    lays every gradient out as its parameter (`grads_laid_out`), whatever learning rule filled it."""
    node = _node(node)
    check_ranges(node, "optimizer")
    lrs = node.get("lrs")
    groups = param_groups(net, None if lrs is None else list(lrs))
    factory = build(node, "optimizer", drop=("lrs",), _partial_=True)
    try:
        optimizer = factory(groups)
    except (ValueError, TypeError, RuntimeError) as err:
        raise SeqepError(_keyed("optimizer", node, err)) from None
    optimizer.register_step_pre_hook(grads_laid_out)
    return optimizer


def grads_laid_out(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: every `p.grad` laid out as `p` (`seqep.estimators.base.laid_out_as`; a copy only where the
    strides differ). A learning rule of one's own may fill `p.grad` in any layout, and the fused Adam/AdamW of the
    default configs would silently mis-step (CPU) or refuse (CUDA) a gradient laid out otherwise."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad = laid_out_as(p, p.grad)


@dataclass
class Schedule:
    """A learning-rate scheduler and how often it steps (`interval`: epoch | step)."""

    scheduler: Any
    interval: str = "epoch"


def build_scheduler(node: Any, optimizer: torch.optim.Optimizer) -> Schedule | None:
    """The scheduler's partial called with the optimizer; None for `scheduler: null` (constant rates)."""
    if node is None:
        return None
    node = _node(node)
    check_ranges(node, "scheduler")
    interval = node.get("interval", DEFAULT_INTERVAL)
    if interval not in INTERVALS:
        raise SeqepError(f"scheduler.interval={interval!r} is not allowed; choose one of: {', '.join(INTERVALS)}")
    factory = build(node, "scheduler", drop=("interval",), _partial_=True)
    try:
        return Schedule(factory(optimizer), interval)
    except (ValueError, TypeError) as err:
        raise SeqepError(_keyed("scheduler", node, err)) from None


def build_loggers(node: Any) -> dict[str, Any]:
    """Every logger under `logger` (`logger=[wandb,tensorboard]` gives two), by name."""
    if not node:
        return {}
    items = node.items() if isinstance(node, Mapping) else OmegaConf.to_container(node).items()
    return {name: build(sub, f"logger.{name}") for name, sub in items if sub is not None}


def describe(obj: Any) -> str:
    """What an object says of itself (`describe()`), else its class name."""
    return obj.describe() if hasattr(obj, "describe") else type(obj).__name__


# ------------------------------------------------------------------------------------------ before a run
def dry_run(cfg: DictConfig) -> None:
    """Build every object once without data (the model on the meta device, the optimizer on stand-in tensors), so
    constructor errors and mismatches between groups fail before anything runs. A task of `DATA_ONLY` (baseline)
    builds the dataset and the loggers only."""
    from seqep.tasks import DATA_ONLY

    data = build_dataset(cfg.dataset)
    if OmegaConf.select(cfg, "task", default="train") in DATA_ONLY:
        build_loggers(OmegaConf.select(cfg, "logger", default=None))
        return
    build_estimator(cfg.algorithm, torch.Generator(), str(cfg.precision))
    with torch.device("meta"):
        net = build_model(cfg.model, seq_len=int(data.seq_len), embed_dim=int(getattr(data, "embed_dim", 4)))
    if net.kind != data.kind:
        raise SeqepError(f"model.kind={net.kind!r} does not fit dataset {data.name!r} of kind {data.kind!r}: use "
                         f"model={data.kind} (or experiment=paper_snli / paper_imdb)")
    if net.n_classes != data.n_classes:
        raise SeqepError(f"model.fc={list(net.fc)} ends in {net.n_classes} output neurons but dataset "
                         f"{data.name!r} has {data.n_classes} classes")
    stand_in = _StandIn(net)
    optimizer = build_optimizer(cfg.optimizer, stand_in)
    build_scheduler(OmegaConf.select(cfg, "scheduler", default=None), optimizer)
    build_loggers(OmegaConf.select(cfg, "logger", default=None))


class _StandIn:
    """A network's synapse layout with one small CPU tensor per synapse: enough to build optimizers."""

    def __init__(self, net: Network) -> None:
        self.kind, self.fc, self.n_proj = net.kind, list(net.fc), net.n_proj
        self.synapses = [torch.nn.Linear(1, 1, bias=False) for _ in net.synapses]
