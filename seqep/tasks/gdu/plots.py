"""Seaborn figures of the GDU check, written under `<run_dir>/plots/` (how to read them: docs/gdu.md)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as mticker  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402

from seqep.tasks.gdu.check import GDUResult  # noqa: E402

CURVE_STYLE = {"BPTT": "", "EP positive": (4, 2), "EP negative": (1, 2), "EP symmetric": (6, 2)}
PALETTE = {"BPTT": "black", "EP positive": "tab:blue", "EP negative": "tab:green", "EP symmetric": "tab:red",
           "positive": "tab:blue", "negative": "tab:green", "symmetric": "tab:red"}


def pick_elements(bptt: torch.Tensor, n: int, generator: torch.Generator) -> list[int]:
    """`n` flat indices drawn uniformly (seeded) among elements that BPTT moves at some step; any if none."""
    moving = (bptt.flatten(1) != 0).any(0).nonzero().flatten()
    pool = moving if len(moving) else torch.arange(bptt[0].numel())
    chosen = torch.randperm(len(pool), generator=generator)[: min(n, len(pool))]
    return sorted(int(pool[i]) for i in chosen)


def _index(shape: torch.Size, flat: int) -> str:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return ", ".join(str(i) for i in reversed(idx))


def plot_cumulative(result: GDUResult, path: Path, n_elements: int = 3, seed: int = 0) -> Path:
    """Grid: one row per parameter, one column per random element; cumulative Σ_{τ<=t} of BPTT (solid) and of
    every EP variant (dashed), against the nudged step t. The last point of each curve is the K-step estimate."""
    g = torch.Generator().manual_seed(seed)
    names = result.names("param")
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(names), n_elements, figsize=(3.2 * n_elements, 2.1 * len(names)),
                             squeeze=False, sharex=True)
    steps = list(range(1, result.K + 1))
    for row, name in zip(axes, names):
        bptt = result.bptt[name]
        chosen = pick_elements(bptt, n_elements, g)
        for ax, flat in zip(row, chosen):
            curves = {"BPTT": bptt.flatten(1)[:, flat]}
            curves |= {f"EP {v}": ep[name].flatten(1)[:, flat] for v, ep in result.ep.items()}
            for curve, values in curves.items():
                dashes = CURVE_STYLE[curve]
                ax.plot(steps, values.double().cumsum(0).tolist(), color=PALETTE[curve], label=curve,
                        lw=1.6 if curve == "BPTT" else 1.3, **({"dashes": dashes} if dashes else {}))
            ax.axhline(0, color="0.75", lw=0.6, zorder=0)
            ax.set_title(f"{name}[{_index(bptt.shape[1:], flat)}]", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in row[len(chosen):]:
            ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("nudged step t")
    for row in axes:
        row[0].set_ylabel("cumulative update", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0), fontsize=8)
    fig.suptitle(f"GDU: cumulative EP updates (dashed) vs BPTT gradients (solid), β={result.beta:g}", y=1.025)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_distance_ratio(metrics: pd.DataFrame, path: Path) -> Path:
    """Bars per layer: relative RMSE of symmetric EP divided by that of one-sided EP (< 1: symmetric closer)."""
    wide = metrics.pivot_table(index=["kind", "tensor"], columns="variant", values="rmse", sort=False)
    rows = []
    for (kind, tensor), r in wide.iterrows():
        for one_sided in ("positive", "negative"):
            if one_sided in r and "symmetric" in r and r[one_sided] > 0:
                rows.append({"kind": kind, "tensor": tensor, "one-sided": one_sided,
                             "ratio": r["symmetric"] / r[one_sided]})
    df = pd.DataFrame(rows)
    kinds = [k for k in ("param", "field", "state") if k in set(df["kind"])]
    grid = sns.catplot(data=df, x="tensor", y="ratio", hue="one-sided", col="kind", col_order=kinds, kind="bar",
                       palette=PALETTE, sharex=False, height=3.4, aspect=1.2)
    for ax in grid.axes.flat:
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    grid.set_axis_labels("", "RMSE symmetric / RMSE one-sided")
    grid.figure.suptitle("symmetric vs one-sided distance to BPTT per layer (below 1: symmetric is closer)", y=1.03)
    grid.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(grid.figure)
    return path


def plot_beta_sweep(sweep: pd.DataFrame, slopes: dict[str, float], path: Path) -> Path:
    """Log-log relative error (parameters) against β: thin lines per tensor, thick the geometric mean; the
    legend gives the fitted slope of each variant (1 expected for one-sided, 2 for symmetric EP)."""
    params = sweep[sweep["kind"] == "param"]
    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    sns.lineplot(data=params, x="beta", y="rel_err", hue="variant", units="tensor", estimator=None,
                 palette=PALETTE, alpha=0.25, lw=0.8, legend=False, ax=ax)
    pooled = (params.groupby(["variant", "beta"], sort=False)["rel_err"]
              .apply(lambda s: math.exp(s[s > 0].apply(math.log).mean()) if (s > 0).any() else math.nan)
              .reset_index())
    pooled["label"] = pooled["variant"].map(lambda v: f"{v} (slope {slopes.get(v, math.nan):.2f})")
    palette = {f"{v} (slope {slopes.get(v, math.nan):.2f})": PALETTE[v] for v in pooled["variant"].unique()}
    sns.lineplot(data=pooled, x="beta", y="rel_err", hue="label", palette=palette, marker="o", lw=2, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="β", ylabel="‖EP − BPTT‖ / ‖BPTT‖ (per-step, parameters)",
           title="GDU error against β")
    ax.legend(title="EP variant", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
