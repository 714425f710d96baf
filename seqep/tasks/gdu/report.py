"""`task=gdu`: load a model and N validation examples, run the check and the β sweep, write tables and plots.

    run_gdu(cfg, run_dir) -> summary dict     (seqep.tasks.dispatch writes it to summary.json)

Config read: the learning rule's T, K and nudge β (any estimator with `T`, `K` and `beta`), `gdu.beta` (null =
the rule's β), `gdu.betas` (the β sweep), `gdu.n_examples`, `gdu.n_elements`, `gdu.dtype`, `checkpoint.load`,
`seed`, `device`, `dataset`, `model`, `logger`.

Also the learning rule at the run's `precision` (`seqep.precision.PRECISIONS`) on a float32 copy of the model and
batch: its gradient against float32 BPTT and against itself in float64 (`gdu/probe/...`, `precision_check`).

Run directory:
    gdu_metrics.csv      one row per (variant, tensor): rmse, sign_agree_pct, rel_err, cos_cumulative,
                         cos_step_mean, cos_step_min, cos_step_<t>, norms (definitions: seqep/tasks/gdu/metrics.py)
    gdu_beta_sweep.csv   one row per (β, variant, parameter): rel_err
    plots/gdu_cumulative.png, plots/gdu_distance_ratio.png, plots/gdu_beta_sweep.png
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from seqep.errors import SeqepError
from seqep.tasks.gdu.check import VARIANTS, GDUResult, bptt_steps, gdu_check, gdu_sweep
from seqep.tasks.gdu.metrics import compare, fit_slope, geometric_mean, relative_error
from seqep.utils import resolve_device, resolve_dtype

CONVERGED = 1e-6  # largest |Δs| at the last free step below which the free phase counts as converged


def settings(cfg: DictConfig) -> dict[str, Any]:
    """The check's settings: T, K and the nudge from the configured learning rule (built, so its defaults hold),
    the rest from the `gdu` section."""
    from seqep.training.builders import build_estimator

    estimator = build_estimator(cfg.algorithm)
    g = cfg.gdu
    beta = g.beta if g.beta is not None else getattr(estimator, "beta", None)
    if beta is None:
        raise SeqepError(f"{type(estimator).__name__} has no nudge beta: set gdu.beta for the GDU check")
    out = {
        "T": int(estimator.T),
        "K": int(estimator.K),
        "beta": abs(float(beta)),
        "betas": sorted(abs(float(b)) for b in g.betas),
        "n_examples": int(g.n_examples),
        "n_elements": int(g.n_elements),
        "dtype": str(g.dtype),
        "seed": int(cfg.seed),
    }
    resolve_dtype(out["dtype"], key="gdu.dtype")
    if out["beta"] == 0 or not out["betas"] or 0 in out["betas"]:
        raise SeqepError("the GDU check needs non-zero nudges: set gdu.beta / algorithm.betas[1] and gdu.betas > 0")
    if not 1 <= out["K"] <= out["T"]:
        raise SeqepError(f"the GDU check backpropagates through the last K of T free steps: need 1 <= "
                         f"algorithm.K <= algorithm.T (got T={out['T']}, K={out['K']})")
    if out["n_examples"] < 1:
        raise SeqepError(f"gdu.n_examples={out['n_examples']} must be >= 1")
    return out


def precision_check(cfg: DictConfig, net: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """The learning rule at the run's `precision` on a float32 copy of the model and batch, against float32 BPTT
    (`gdu/probe/cos/<param>`, ...) and against itself in float64 (`gdu/probe/f64/cos/<param>`, ...): the training
    probe's metrics (`seqep.diagnostics.probe`), named `gdu/probe/...`."""
    import copy

    from seqep.diagnostics import probe
    from seqep.precision import effective_precision
    from seqep.training.builders import build_estimator

    estimator = build_estimator(cfg.algorithm, torch.Generator().manual_seed(int(cfg.seed)), str(cfg.precision))
    net32, x32 = copy.deepcopy(net).to(torch.float32), x.to(torch.float32)
    metrics = probe(net32, estimator, x32, y)
    out = {f"gdu/probe/{k.removeprefix('ep/probe/')}": v for k, v in metrics.items()}
    return {"gdu/precision": effective_precision(estimator.precision, x32.device), **out}


def load_inputs(cfg: DictConfig, n_examples: int, dtype: torch.dtype) -> tuple[Any, torch.Tensor, torch.Tensor,
                                                                                 dict[str, Any]]:
    """The configured model (weights from `checkpoint.load` if set) and the first N validation examples."""
    from seqep.data import iterate_batches
    from seqep.training import checkpoint as ckpt
    from seqep.training.builders import build_dataset, build_model

    device = resolve_device(str(cfg.device))
    bundle = build_dataset(cfg.dataset).load()
    net = build_model(cfg.model, seq_len=bundle.seq_len, embed_dim=bundle.embed_dim)
    info: dict[str, Any] = {"dataset": bundle.name, "weights": "fresh (seeded init)"}
    if cfg.checkpoint.load:
        meta = ckpt.load_weights(net, cfg.checkpoint.load)
        info["weights"] = f"{meta['path']} ({meta['kind']}, epoch {meta.get('epoch')})"
    net = net.to(device=device, dtype=dtype)
    if len(bundle.val) == 0:
        raise SeqepError(f"dataset {bundle.name} has an empty validation split: the GDU check needs examples")
    x, y = next(iter(iterate_batches(bundle.val, bundle.vectors, n_examples, shuffle=False, device=device,
                                     dtype=dtype)))
    return net, x, y, info


# ------------------------------------------------------------------------------------------------- tables
def metrics_frame(result: GDUResult) -> pd.DataFrame:
    """One row per (variant, tensor) with every metric of `compare`; `cos_steps` spread to `cos_step_<t>`."""
    rows = []
    for variant, updates in result.ep.items():
        for name, kind in result.kinds.items():
            m = compare(updates[name], result.bptt[name])
            steps = m.pop("cos_steps")
            rows.append({"variant": variant, "kind": kind, "tensor": name,
                         "shape": "x".join(str(s) for s in result.bptt[name].shape[1:]), "beta": result.beta,
                         **m, **{f"cos_step_{t}": c for t, c in enumerate(steps)}})
    return pd.DataFrame(rows)


def sweep_frame(sweep: dict[float, GDUResult]) -> pd.DataFrame:
    """One row per (β, variant, parameter tensor): `rel_err`, what the slopes are fitted on."""
    rows = []
    for beta, result in sweep.items():
        for variant, updates in result.ep.items():
            for name in result.names("param"):
                ep, bptt = updates[name], result.bptt[name]
                rows.append({"beta": beta, "variant": variant, "kind": "param", "tensor": name,
                             "rel_err": relative_error(ep, bptt)})
    return pd.DataFrame(rows)


def sweep_slopes(sweep: pd.DataFrame) -> dict[str, float]:
    """Per variant: log-log slope of the parameters' relative error (geometric mean over tensors) against β."""
    out = {}
    params = sweep[sweep["kind"] == "param"]
    for variant, part in params.groupby("variant", sort=False):
        pooled = part.groupby("beta")["rel_err"].apply(lambda s: geometric_mean(list(s)))
        out[str(variant)] = fit_slope(list(pooled.index), list(pooled.values))
    return out


def summarize(result: GDUResult, metrics: pd.DataFrame, slopes: dict[str, float]) -> dict[str, Any]:
    """Flat `gdu/...` numbers for summary.json and W&B."""
    out: dict[str, Any] = {"gdu/T": result.T, "gdu/K": result.K, "gdu/beta": result.beta, "gdu/loss": result.loss,
                           "gdu/free_max_change": result.free_max_change,
                           "gdu/converged": result.free_max_change < CONVERGED}
    for variant in result.ep:
        for kind in ("param", "field", "state"):
            part = metrics[(metrics["variant"] == variant) & (metrics["kind"] == kind)]
            out[f"gdu/{variant}/{kind}_rmse"] = float(part["rmse"].mean())
            if kind == "param":
                out[f"gdu/{variant}/param_sign_agree_pct"] = float(part["sign_agree_pct"].mean())
                out[f"gdu/{variant}/param_cos_cumulative"] = float(part["cos_cumulative"].mean())
                out[f"gdu/{variant}/param_cos_step_mean"] = float(part["cos_step_mean"].mean())
    rmse = metrics[metrics["kind"] == "param"].pivot_table(index="tensor", columns="variant", values="rmse")
    if {"symmetric", "positive", "negative"} <= set(rmse.columns):
        ratios = [r for v in ("positive", "negative") for r in (rmse["symmetric"] / rmse[v]).tolist()]
        out["gdu/param_sym_over_one_sided"] = geometric_mean(ratios)
        out["gdu/param_one_sided_over_sym"] = 1.0 / out["gdu/param_sym_over_one_sided"]
    out |= {f"gdu/slope/{v}": s for v, s in slopes.items()}
    return out


def print_table(metrics: pd.DataFrame, summary: dict[str, Any], header: str) -> None:
    """A rich table: per tensor, the relative RMSE of each variant, sign agreement and cosines (symmetric)."""
    from rich.console import Console
    from rich.table import Table

    variants = [v for v in VARIANTS if v in set(metrics["variant"])]
    table = Table(title=header, title_justify="left")
    for col in ["kind", "tensor", *[f"rmse {v[:3]}" for v in variants], "sign% sym", "cosΣ pos", "cosΣ sym",
                "cos/step sym"]:
        table.add_column(col, justify="left" if col in ("kind", "tensor") else "right")
    by = {(r.variant, r.tensor): r for r in metrics.itertuples()}
    fmt = lambda v, spec=".4f": "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
    for r in metrics[metrics["variant"] == variants[0]].itertuples():
        sym, pos = by.get(("symmetric", r.tensor)), by.get(("positive", r.tensor))
        table.add_row(r.kind, r.tensor, *[fmt(by[(v, r.tensor)].rmse) for v in variants],
                      fmt(sym.sign_agree_pct if sym else None, ".1f"), fmt(pos.cos_cumulative if pos else None),
                      fmt(sym.cos_cumulative if sym else None), fmt(sym.cos_step_mean if sym else None))
    console = Console(width=max(120, Console().width))
    console.print(table)
    slopes = ", ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in summary.items() if k.startswith("gdu/slope/"))
    ratio = summary.get("gdu/param_one_sided_over_sym")
    console.print(f"β sweep slopes (parameters; 1 expected one-sided, 2 symmetric): {slopes}")
    if ratio is not None:
        console.print(f"parameters: one-sided RMSE / symmetric RMSE = {ratio:.2f} (geometric mean over tensors)")
    if not summary["gdu/converged"]:
        console.print(f"[yellow]warning: the free phase has not converged (largest |Δs| at step T = "
                      f"{summary['gdu/free_max_change']:.2e}); the GDU property assumes an equilibrium, so EP and "
                      f"BPTT differ by a β-independent floor. Raise algorithm.T to check the theorem itself.[/]")


# ------------------------------------------------------------------------------------------------- task
def write_report(result: GDUResult, sweep: dict[float, GDUResult], run_dir: Path, n_elements: int = 3,
                 seed: int = 0) -> tuple[dict[str, Any], dict[str, Path], pd.DataFrame]:
    """CSV tables and the three plots; returns (summary, {plot name: path}, metrics table)."""
    from seqep.tasks.gdu import plots

    metrics = metrics_frame(result)
    sweep_df = sweep_frame(sweep)
    metrics.to_csv(run_dir / "gdu_metrics.csv", index=False)
    sweep_df.to_csv(run_dir / "gdu_beta_sweep.csv", index=False)
    slopes = sweep_slopes(sweep_df)
    summary = summarize(result, metrics, slopes)
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "cumulative": plots.plot_cumulative(result, plot_dir / "gdu_cumulative.png", n_elements, seed),
        "distance_ratio": plots.plot_distance_ratio(metrics, plot_dir / "gdu_distance_ratio.png"),
        "beta_sweep": plots.plot_beta_sweep(sweep_df, slopes, plot_dir / "gdu_beta_sweep.png"),
    }
    return summary, paths, metrics


def run_gdu(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """`task=gdu` (module doc). Returns the summary (also logged to W&B per `cfg.logger`)."""
    from seqep.training.tracking import Tracker

    run_dir, started = Path(run_dir), time.perf_counter()
    s = settings(cfg)
    net, x, y, info = load_inputs(cfg, s["n_examples"], resolve_dtype(s["dtype"]))
    bptt = bptt_steps(net, x, y, s["T"], s["K"])
    result = gdu_check(net, x, y, s["T"], s["K"], s["beta"], bptt=bptt)
    sweep = gdu_sweep(net, x, y, s["T"], s["K"], s["betas"], kinds=("param",), bptt=bptt)
    summary, paths, metrics = write_report(result, sweep, run_dir, s["n_elements"], s["seed"])
    summary |= precision_check(cfg, net, x, y)
    summary |= {"gdu/n_examples": int(x.shape[0]), "gdu/dtype": s["dtype"], "gdu/dataset": info["dataset"],
                "gdu/weights": info["weights"], "gdu/time_s": time.perf_counter() - started}
    print_table(metrics, summary, f"GDU check: {info['dataset']}, weights {info['weights']}, "
                                  f"N={x.shape[0]}, T={s['T']}, K={s['K']}, β={s['beta']:g}, {s['dtype']}")
    print(f"precision {summary['gdu/precision']}: the learning rule's gradient against itself in float64 cos_min "
          f"{summary['gdu/probe/f64/cos_min']:.5f}, rel_err_max {summary['gdu/probe/f64/rel_err_max']:.2e}; "
          f"against float32 BPTT cos_min {summary['gdu/probe/cos_min']:.4f} (gdu/probe/...)")
    with Tracker.from_config(cfg, run_dir, job_type="gdu") as tracker:
        tracker.log_summary(summary)
        tracker.log_table("gdu/metrics", metrics.fillna(np.nan))
        tracker.log_images({f"gdu/plots/{k}": p for k, p in paths.items()})
    print(f"wrote {run_dir / 'gdu_metrics.csv'}, {run_dir / 'gdu_beta_sweep.csv'} and "
          f"{', '.join(str(p) for p in paths.values())}")
    return summary
