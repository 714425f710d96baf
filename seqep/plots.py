"""Seaborn figures from the per-epoch metrics rows (the same rows as metrics.csv).

`plot_learning_curves` (plots/learning_curves.png) and `plot_run_summary` (plots/summary.png: every chart of
`DASHBOARD`, the layout `sweeps/dashboard.py` also builds as a W&B workspace). How to read them: docs/dashboards.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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


# ------------------------------------------------------------------------------ the diagnostics layout
@dataclass(frozen=True)
class Panel:
    """One chart: the metric keys it draws (`*` stands for one phase, layer, block or parameter name, never a
    `/`), the y label, and how to draw it. Shared by `plot_run_summary` and `sweeps/dashboard.py` (W&B)."""

    title: str
    metrics: tuple[str, ...]
    ylabel: str
    log_y: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # legend names of literal keys; a `*` key is named by what `*` matched
    ylim: tuple[float, float] | None = None
    ref: tuple[float, str] | None = None  # a dotted horizontal line at this value, with this legend name
    highlight: str | None = None  # drawn as a black dashed line (a summary of the others, e.g. the minimum)
    mark_best: str | None = None  # mark the epoch where this key peaks
    hint: str = ""  # why the panel may be empty

    @property
    def regex(self) -> str:
        """One anchored regular expression matching every key of the panel (W&B `metric_regex`)."""
        return "^(?:" + "|".join(_pattern(m, "[^/]+") for m in self.metrics) + ")$"

    @property
    def has_wildcard(self) -> bool:
        return any("*" in m for m in self.metrics)

    def columns(self, available) -> list[tuple[str, str]]:
        """`(key, legend name)` of the available keys this panel draws, in the panel's order, then the keys'."""
        names, found = dict(self.labels), []
        for metric in self.metrics:
            rx = re.compile(f"^{_pattern(metric)}$")
            for key in available:
                m = rx.match(key)
                if m and key not in (k for k, _ in found):
                    found.append((key, m.group(1) if m.groups() else names.get(key, key)))
        return found


def _pattern(metric: str, star: str = "([^/]+)") -> str:
    return star.join(re.escape(part) for part in metric.split("*"))


_FRACTION = (-0.03, 1.03)
_DIAG = "no diagnostics rows: trainer.diagnostics_every=0?"
_PROBE = "no probe rows: trainer.probe_every=0?"

# Sections → panels, in reading order. Metric names: seqep/diagnostics.py (module docstring) and docs/training.md.
DASHBOARD: dict[str, tuple[Panel, ...]] = {
    "Learning": (
        Panel("loss (free phase)", ("train/loss", "val/loss"), "½‖s_out − e_y‖²",
              labels=(("train/loss", "train"), ("val/loss", "val"))),
        Panel("accuracy", ("train/acc", "val/acc"), "accuracy",
              labels=(("train/acc", "train"), ("val/acc", "val")), mark_best="val/acc"),
    ),
    "Convergence": (
        Panel("largest |Δs| at the last step", ("relax/*/max_change",), "max |Δs| (log)", log_y=True, hint=_DIAG),
        Panel("mean |Δs| at the last step", ("relax/*/mean_change",), "mean |Δs| (log)", log_y=True, hint=_DIAG),
        Panel("examples not settled (max |Δs| > tol)", ("relax/*/frac_unsettled",), "fraction of examples",
              ylim=_FRACTION, hint=_DIAG),
        Panel("relaxation steps used", ("relax/*/steps",), "steps", hint=_DIAG),
        Panel("steps per example (algorithm.tol: each example stops when settled)", ("relax/*/mean_steps",), "steps",
              hint=_DIAG),
        Panel("Φ at the end of each phase", ("relax/*/phi",), "Φ (batch mean)", hint=_DIAG),
    ),
    "Output health": (
        Panel("dead outputs (all outputs at the floor)", ("out/tie_rate", "train/tie_rate", "val/tie_rate"),
              "fraction of examples", ylim=_FRACTION,
              labels=(("out/tie_rate", "diagnostics"), ("train/tie_rate", "train"),
                      ("val/tie_rate", "val"))),
        Panel("saturated units per layer", ("out/sat/*",), "fraction at floor or ceiling", ylim=_FRACTION,
              hint=_DIAG),
    ),
    "EP vs BPTT probe": (
        Panel("cosine(EP, BPTT) per tensor", ("ep/probe/cos/*", "ep/probe/cos_min", "ep/probe/smooth/cos_min"),
              "cosine", labels=(("ep/probe/cos_min", "min over tensors"),
                                ("ep/probe/smooth/cos_min", "min, examples away from kinks")),
              highlight="ep/probe/cos_min", ref=(0.99, "0.99"), hint=_PROBE),
        Panel("probe examples with a unit at an activation kink (±β on its two sides)", ("ep/probe/kink_examples",),
              "examples", hint=_PROBE),
        Panel("relative error ‖g_EP − g_BPTT‖ / ‖g_BPTT‖", ("ep/probe/rel_err/*",), "relative error (log)",
              log_y=True, hint=_PROBE),
        Panel("cosine(EP at the run's precision, EP in float64)", ("ep/probe/f64/cos/*", "ep/probe/f64/cos_min"),
              "cosine", labels=(("ep/probe/f64/cos_min", "min over tensors"),),
              highlight="ep/probe/f64/cos_min", ref=(0.999, "0.999"), hint=_PROBE),
        Panel("relative error against float64", ("ep/probe/f64/rel_err/*", "ep/probe/f64/rel_err_max"),
              "relative error (log)", log_y=True, labels=(("ep/probe/f64/rel_err_max", "max over tensors"),),
              highlight="ep/probe/f64/rel_err_max", hint=_PROBE),
    ),
    "Attention": (
        Panel("attention entropy per block", ("attn/entropy/*",), "entropy (nats, ≤ log L)", hint=_DIAG),
    ),
    "Gradients": (
        Panel("update / weight ratio ‖Δθ‖ / ‖θ‖", ("grad/update_ratio/*",), "ratio (log)", log_y=True,
              hint=_DIAG),
        Panel("gradient norm ‖g‖", ("grad/norm/*",), "‖g‖ (log)", log_y=True, hint=_DIAG),
        Panel("weight norm ‖θ‖", ("grad/weight_norm/*",), "‖θ‖ (log)", log_y=True, hint=_DIAG),
    ),
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
SECTION_COLORS = dict(zip(DASHBOARD, sns.color_palette("dark", len(DASHBOARD)).as_hex()))


def _numeric(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = df[["epoch", *keys]].apply(pd.to_numeric, errors="coerce")
    return out.replace([float("inf"), float("-inf")], float("nan"))


def _say(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.35", fontsize=10, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _halo_widths(long: pd.DataFrame, keys: list[str], panel: Panel) -> tuple[dict[str, float], list[list[str]]]:
    """Extra line width per series, and the groups of series that coincide: a series that coincides with
    later-drawn ones (the + and − phases, tie rates all 0) is drawn wider underneath them, so each stays visible."""
    wide = long.pivot_table(index="epoch", columns="key", values="value")
    if panel.log_y:
        wide = np.log10(wide)
    lo, hi = np.nanmin(wide.to_numpy()), np.nanmax(wide.to_numpy())
    span = (hi - lo) or (panel.ylim[1] - panel.ylim[0] if panel.ylim else 1.0)
    extra, groups, grouped = {}, [], set()
    for i, key in enumerate(keys):
        same = [key]
        for other in keys[i + 1:]:
            diff = (wide[key] - wide[other]).abs().dropna()
            if len(diff) >= 2 and (diff <= 0.015 * span).all():  # one shared point is no curve
                same.append(other)
        extra[key] = 1.3 * min(len(same) - 1, 2)  # capped: ten equal curves are one thick line, not a wall
        if len(same) > 1 and key not in grouped:
            groups.append(same)
            grouped.update(same)
    return extra, groups


def _draw_panel(ax, df: pd.DataFrame, panel: Panel, xlim: tuple[float, float]) -> None:
    columns = panel.columns(df.columns) if not df.empty else []
    ax.set(xlabel="epoch", ylabel=panel.ylabel)
    if not columns:
        keys = ", ".join(panel.metrics)
        _say(ax, f"no data\n({keys} not logged)" + (f"\n{panel.hint}" if panel.hint else ""))
        return
    wide = _numeric(df, [k for k, _ in columns])
    long = wide.melt(id_vars="epoch", var_name="key", value_name="value").dropna()
    dropped = 0
    if panel.log_y:
        dropped = int((long["value"] <= 0).sum())
        long = long[long["value"] > 0]
    if long.empty:
        _say(ax, "all values are 0: nothing to show on a log scale" if dropped else "no values logged (all empty)")
        return
    names = dict(columns)
    marker = len(set(long["epoch"])) <= 30
    series = [(k, n) for k, n in columns if k != panel.highlight and k in set(long["key"])]
    palette = sns.color_palette(n_colors=max(len(series), 1))
    halo, groups = _halo_widths(long, [k for k, _ in series], panel)
    for i, (key, name) in enumerate(series):
        width = 1.6 + halo[key]
        points = long[long["key"] == key].sort_values("epoch")
        ax.plot(points["epoch"], points["value"], color=palette[i], label=name, lw=width,
                marker=MARKERS[i % len(MARKERS)] if marker else None, markersize=4 + 1.5 * halo[key],
                markeredgewidth=0)
    if panel.highlight is not None:
        top = long[long["key"] == panel.highlight]
        if not top.empty:
            ax.plot(top["epoch"], top["value"], color="black", ls="--", lw=1.6, marker="o" if marker else None,
                    markersize=4, label=names[panel.highlight], zorder=5)
    if panel.ref is not None:
        ax.axhline(panel.ref[0], color="0.4", ls=":", lw=1.2, label=panel.ref[1], zorder=1)
    if panel.mark_best is not None and panel.mark_best in wide and wide[panel.mark_best].notna().any():
        best = wide.loc[wide[panel.mark_best].idxmax()]
        ax.axvline(best["epoch"], color="grey", ls="--", lw=1, label=f"best {names[panel.mark_best]} "
                   f"{best[panel.mark_best]:.3f} (epoch {int(best['epoch'])})", zorder=1)
    if panel.log_y:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False)  # an offset ("+4.158") reads badly for a flat curve
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set(xlabel="epoch", ylabel=panel.ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlim(*xlim)  # every panel spans the run's epochs, also the probe's (not every epoch has one)
    handles, labels = ax.get_legend_handles_labels()
    notes = [" ≈ ".join(names[k] for k in group) for group in groups]
    notes = [n if len(n) <= 40 else f"{len(g)} series coincide" for n, g in zip(notes, groups)]
    notes += [f"{dropped} zero values not shown"] if dropped else []
    for note in notes:
        handles.append(plt.Line2D([], [], ls="none"))
        labels.append(f"({note})")
    if handles:
        # Below the axes, never over the data: as many columns as fit the panel's width (~0.055 in a character).
        width = sum(0.055 * len(label) + 0.4 for label in labels)
        ncol = len(handles) if width <= 4.6 else max(1, int(4.6 // (0.055 * max(map(len, labels)) + 0.4)))
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol,
                  fontsize=8.5, frameon=False, handlelength=1.8, columnspacing=1.2)


def plot_run_summary(rows: list[dict], path: str | os.PathLike, title: str | None = None) -> Path:
    """Every panel of `DASHBOARD` from the per-epoch rows, one figure; an empty panel says why."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    if "epoch" not in df:
        df = pd.DataFrame(columns=["epoch"])
    panels = [(section, p) for section, ps in DASHBOARD.items() for p in ps]
    ncols = 3
    nrows = -(-len(panels) // ncols)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.3 * nrows), layout="constrained")
    epochs = pd.to_numeric(df["epoch"], errors="coerce").dropna()
    pad = 0.5 if epochs.empty or epochs.max() - epochs.min() < 10 else (epochs.max() - epochs.min()) / 30
    xlim = (epochs.min() - pad, epochs.max() + pad) if not epochs.empty else (0, 1)
    for ax, (section, panel) in zip(axes.flat, panels):
        _draw_panel(ax, df, panel, xlim)
        ax.set_title(f"{section}\n", loc="left", fontsize=10, color=SECTION_COLORS[section], fontweight="bold")
        ax.set_title(panel.title, fontsize=11)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    n = len(epochs)
    fig.suptitle(title or (f"EP diagnostics per epoch ({n} epoch{'s' * (n != 1)})" if n else "no epochs trained"),
                 fontsize=14)
    fig.get_layout_engine().set(h_pad=0.12, hspace=0.04)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
