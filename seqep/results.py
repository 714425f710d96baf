"""Results of many runs: one row per run, then seeds as replicates — mean, std, n and a 95 % interval of each
accuracy per configuration — as CSV, as a markdown table and as a figure.

    python -m seqep.results outputs/multirun/2026-12-03/12-00-00-123456_sweep outputs/2026-12-0*/*_ep_*
        [--out results]            # writes results_runs.csv, results.csv, results.md, results.png there

Runs are found under the given directories and globs, mixed and nested (a sweep directory, single run
directories, a folder of both): every directory with a `summary.json` is a run, and so is a sweep's job
directory with `.hydra/` but no summary (a job that was killed: status `missing`). A run's configuration is its
resolved `config.yaml`; the keys whose value differs between the runs (seed and bookkeeping keys aside) are the
configurations the table groups by, and the command prints them. The sweep callback (`seqep.sweep`) uses the same
functions on one sweep directory.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from seqep.utils import flatten

log = logging.getLogger(__name__)

METRICS = ("test/acc", "val/best_acc")  # summarised and plotted when present, in this order
REPLICATES = ("seed",)  # differ between runs of one configuration
# bookkeeping: never a configuration (they differ between runs without changing what is trained)
IGNORED_PREFIXES = ("paths.", "logger.", "checkpoint.", "hydra.")
IGNORED_KEYS = ("name", "sweep_name", "device", "trainer.progress", "trainer.log_every")


# ------------------------------------------------------------------------------------------ finding runs
def run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every run directory under `paths` (directories or globs): those with a summary.json, and a sweep's job
    directories (with `.hydra/`) that have none."""
    found: dict[Path, None] = {}
    for pattern in map(str, paths):
        matches = [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]
        for root in matches:
            if not root.exists():
                raise FileNotFoundError(f"{root}: no such run or sweep directory")
            for path in [root, *sorted((p for p in root.rglob("*") if p.is_dir()), key=_natural)]:
                if (path / "summary.json").is_file() or (path / ".hydra").is_dir() and path.name.isdigit():
                    if "wandb" not in path.parts:
                        found[path.resolve()] = None
    return list(found)


def _natural(path: Path) -> list:
    """Sort key: job directories 2 before 10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return None


def read_run(path: Path) -> dict[str, Any]:
    """One row: `run_dir`, `job`, `status`, `error`, the summary's values, and `config.<key>` per config key."""
    row: dict[str, Any] = {"run_dir": str(path), "job": path.name}
    summary_path = path / "summary.json"
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    except json.JSONDecodeError as err:
        summary = {"status": "failed", "error": f"summary.json is not valid JSON ({err})"}
    if summary is None:
        summary = {"status": "missing", "error": "no summary.json: the job was killed or is still running"}
    for key, value in summary.items():
        row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
    row.setdefault("status", "completed")
    row["run_dir"] = str(path)
    config = read_yaml(path / "config.yaml") or read_yaml(path / ".hydra" / "config.yaml") or {}
    for key, value in flatten(config).items():
        row[f"config.{key}"] = value
    overrides = read_yaml(path / ".hydra" / "overrides.yaml") or []
    row["overrides"] = " ".join(map(str, overrides))
    return row


def collect(paths: list[str | Path]) -> pd.DataFrame:
    """One row per run (`read_run`), in the order of `paths`, sweep jobs in job order."""
    return pd.DataFrame([read_run(p) for p in run_dirs(paths)])


# ------------------------------------------------------------------------------------------ configurations
def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key in IGNORED_KEYS


def varying_keys(df: pd.DataFrame) -> list[str]:
    """Config keys (without `config.`) whose value differs between the runs: the configurations, seeds aside."""
    keys = []
    for column in df.columns:
        if column.startswith("config."):
            key = column[len("config."):]
            if not _ignored(key) and df[column].astype(str).nunique(dropna=False) > 1:
                keys.append(key)
    return keys


def _short(value: Any) -> Any:
    """`seqep.estimators.EP` -> `EP` (a `_target_` as a label)."""
    if isinstance(value, str) and value.count(".") >= 1 and value.split(".")[0].isidentifier() and " " not in value:
        return value.rsplit(".", 1)[-1]
    return value


def configurations(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs with one `configuration` label per run, and the keys that make it (seeds aside): the columns named
    in `df.attrs["axes"]` (a sweep's swept keys, as typed on the command line), else the config keys that differ."""
    axes = df.attrs.get("axes")
    keys = list(axes) if axes is not None else [k for k in varying_keys(df) if k not in REPLICATES]
    column = (lambda k: k) if axes is not None else (lambda k: f"config.{k}")
    df = df.copy()
    if keys:
        df["configuration"] = df.apply(
            lambda r: ", ".join(f"{k}={_short(r[column(k)])}" for k in keys
                                if not (isinstance(r[column(k)], float) and math.isnan(r[column(k)]))),
            axis=1)
    else:
        df["configuration"] = "all runs"
    return df, keys


def t_quantile(n: int) -> float:
    """The two-sided 95 % quantile of Student's t with n − 1 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.nan


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (in first-appearance order): runs, completed, failed, and for each metric mean, std, n
    and the 95 % interval half-width (t-based; NaN for n = 1)."""
    df, _ = configurations(df)
    rows = []
    for label, part in df.groupby("configuration", sort=False):
        ok = part[part["status"] == "completed"]
        row: dict[str, Any] = {"configuration": label, "runs": len(part), "failed": int((part["status"] != "completed")
                                                                                        .sum())}
        for metric in METRICS:
            if metric not in ok.columns:
                continue
            values = pd.to_numeric(ok[metric], errors="coerce").dropna()
            n = len(values)
            std = float(values.std(ddof=1)) if n > 1 else math.nan
            row[f"{metric} mean"] = float(values.mean()) if n else math.nan
            row[f"{metric} std"] = std
            row[f"{metric} n"] = n
            row[f"{metric} ci95"] = t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table: `mean ± std (n)` per metric, and the 95 % interval."""
    metrics = [m for m in METRICS if f"{m} mean" in table.columns]
    header = ["configuration", "runs", "failed", *[f"{m} mean ± std (n)" for m in metrics],
              *[f"{m} 95% CI" for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
    for r in table.to_dict("records"):
        cells = [str(r["configuration"]), str(r["runs"]), str(r["failed"])]
        for m in metrics:
            std = "" if math.isnan(r[f"{m} std"]) else f" ± {r[f'{m} std']:.4f}"
            cells.append(f"{fmt(r[f'{m} mean'])}{std} ({r[f'{m} n']})")
        for m in metrics:
            mean, half = r[f"{m} mean"], r[f"{m} ci95"]
            cells.append("–" if math.isnan(half) else f"[{mean - half:.4f}, {mean + half:.4f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the figure
def plot(df: pd.DataFrame, path: str | Path, title: str = "") -> Path | None:
    """Each metric's mean per configuration with its 95 % interval (t-based over seeds) as error bars, n in the
    tick labels; configurations are categories, so points are never joined by lines. None without metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(df)
    metrics = [m for m in METRICS if f"{m} mean" in table.columns and table[f"{m} mean"].notna().any()]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 1.6 * len(table)) * len(metrics), 4.2),
                             squeeze=False)
    x = list(range(len(table)))
    position = dict(zip(table["configuration"], x))
    runs, _ = configurations(df)
    runs = runs[runs["status"] == "completed"]
    for ax, metric in zip(axes[0], metrics):
        means, halves = table[f"{metric} mean"], table[f"{metric} ci95"].fillna(0.0)
        ax.errorbar(x, means, yerr=halves, fmt="o", capsize=4, linestyle="none", zorder=4,
                    label="mean ± 95 % CI over seeds (t); no bar: n = 1")
        ax.scatter(runs["configuration"].map(position), pd.to_numeric(runs[metric], errors="coerce"), s=14,
                   color="gray", alpha=0.7, zorder=3, label="single runs")
        ax.set_xticks(x, [f"{c}\n(n={n}{f', {f} failed' if f else ''})"
                          for c, n, f in zip(table["configuration"], table[f"{metric} n"], table["failed"])],
                      rotation=20 if len(table) > 3 else 0, ha="right" if len(table) > 3 else "center", fontsize=8)
        ax.set_title(metric)
        ax.set_ylabel("accuracy")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.5, len(table) - 0.5)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(table) > 3 else -0.18), fontsize=7,
                  frameon=False)
    failed = int((df["status"] != "completed").sum())
    fig.suptitle(f"{title}  ({len(df)} runs{f', {failed} failed' if failed else ''})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ the command
FILES = {"runs": "results_runs.csv", "table": "results.csv", "markdown": "results.md", "figure": "results.png"}


def report(df: pd.DataFrame, out_dir: str | Path, title: str = "", files: dict[str, str] = FILES) -> dict[str, Path]:
    """Write the runs table (one row per run), the configurations table (CSV and markdown) and the figure into
    `out_dir` under the names in `files`; print the differing keys, the markdown table and the failed runs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df, keys = configurations(df)
    table = summarize(df)
    written = {k: out_dir / files[k] for k in ("runs", "table", "markdown")}
    df.to_csv(written["runs"], index=False)
    table.to_csv(written["table"], index=False)
    md = markdown(table)
    written["markdown"].write_text(md + "\n")
    figure = plot(df, out_dir / files["figure"], title)
    if figure is not None:
        written["figure"] = figure
    print(f"{len(df)} runs; configurations differ in: {', '.join(keys) if keys else 'nothing (replicates only)'}")
    print(md)
    failed = df[df["status"] != "completed"]
    for r in failed.to_dict("records"):
        print(f"{r['status']}: {r['run_dir']}: {r.get('error') or ''}")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqep.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run or sweep directories, or globs of them")
    parser.add_argument("--out", default="results", help="where the tables and the figure go (default: results/)")
    args = parser.parse_args(argv)
    try:
        df = collect(args.paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"error: no runs (directories with summary.json) under {' '.join(args.paths)}", file=sys.stderr)
        return 2
    report(df, args.out, title=" ".join(args.paths) if len(args.paths) == 1 else f"{len(args.paths)} paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
