"""Seaborn figures from the per-epoch metrics rows (the same rows as metrics.csv)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def _long(df: pd.DataFrame, metric: str, splits: tuple[str, ...]) -> pd.DataFrame:
    """`epoch, split, value` rows for `<split>/<metric>` columns that exist."""
    cols = {f"{s}/{metric}": s for s in splits if f"{s}/{metric}" in df}
    long = df[["epoch", *cols]].melt(id_vars="epoch", var_name="split", value_name=metric)
    long["split"] = long["split"].map(cols)
    return long.dropna()


def plot_learning_curves(rows: list[dict], path: str | os.PathLike) -> Path:
    """Loss and accuracy (train and validation) and the learning rate per synapse, against epochs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if df.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no epochs trained", ha="center", va="center", transform=ax.transAxes)
    else:
        for ax, metric, title in ((axes[0], "loss", "loss ½‖s_out − e_y‖² (free phase)"),
                                  (axes[1], "acc", "accuracy")):
            long = _long(df, metric, ("train", "val"))
            if not long.empty:
                sns.lineplot(long, x="epoch", y=metric, hue="split", marker="o", errorbar=None, ax=ax)
            ax.set_title(title)
        if "val/acc" in df and df["val/acc"].notna().any():
            best = df.loc[df["val/acc"].idxmax()]
            axes[1].axvline(best["epoch"], color="grey", ls="--", lw=1)
            axes[1].annotate(f"best val {best['val/acc']:.3f}", (best["epoch"], best["val/acc"]),
                             textcoords="offset points", xytext=(4, -14), fontsize=9)
        lr_cols = sorted((c for c in df if c.startswith("lr/")), key=lambda c: int(c.split("/")[1]))
        if lr_cols:
            long = df[["epoch", *lr_cols]].melt(id_vars="epoch", var_name="synapse", value_name="lr")
            long["synapse"] = long["synapse"].str.removeprefix("lr/")
            sns.lineplot(long, x="epoch", y="lr", hue="synapse", errorbar=None, ax=axes[2])
        axes[2].set_title("learning rate per synapse")
        for ax in axes:
            ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
