"""Sweep results: one table and one figure per multirun.

`AggregateSweep` is a Hydra callback (conf/config.yaml, `hydra.callbacks.aggregate_sweep`): when a multirun ends
it reads every job's `summary.json` and `.hydra/overrides.yaml` and writes, in the sweep directory,
    sweep_results.csv   one row per job: job number, run dir, the swept keys, every summary metric
    sweep_results.png   accuracy against the swept keys (seaborn)
The same from a shell, e.g. after SLURM jobs finished on their own: `python -m seqep.sweep <sweep dir>`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

RESULTS_CSV = "sweep_results.csv"
RESULTS_PNG = "sweep_results.png"
ACCURACY_KEYS = ("test/acc", "val/best_acc")  # plotted when present, in this order
REPLICATE_KEYS = ("seed",)  # swept but not an axis: points show the mean, bars the min-max over them


def _parse_override(text: str) -> tuple[str, Any] | None:
    """`algorithm.T=20` -> ("algorithm.T", 20); group choices stay strings; `+`/`~` prefixes dropped."""
    if "=" not in text:
        return None
    key, value = text.split("=", 1)
    key = key.lstrip("+~")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (list, dict)):
        parsed = json.dumps(parsed)  # one cell, e.g. "[0.0, 0.1]"
    return key, parsed


def collect(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job directory holding a summary.json: `job`, the job's overrides (one column per key), then
    every summary value. `df.attrs["overrides"]` lists the override columns."""
    sweep_dir = Path(sweep_dir)
    rows, override_keys = [], {}
    for summary_path in sorted(sweep_dir.glob("**/summary.json")):
        job_dir = summary_path.parent
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            log.warning("skipping %s: not valid JSON (%s)", summary_path, err)
            continue
        row: dict[str, Any] = {"job": job_dir.name}
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        if overrides_path.exists():
            for text in yaml.safe_load(overrides_path.read_text()) or []:
                parsed = _parse_override(str(text))
                if parsed is not None:
                    row[parsed[0]] = parsed[1]
                    override_keys[parsed[0]] = None
        for key, value in summary.items():
            if key not in row:
                row[key] = json.dumps(value) if isinstance(value, (list, dict)) else value
        row.setdefault("run_dir", str(job_dir))
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        order = pd.to_numeric(df["job"], errors="coerce")
        df = df.assign(_order=order).sort_values(["_order", "job"]).drop(columns="_order").reset_index(drop=True)
    df.attrs["overrides"] = list(override_keys)
    return df


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The override keys whose value differs between jobs (the sweep's axes), in command-line order."""
    return [k for k in df.attrs.get("overrides", []) if k in df.columns and df[k].astype(str).nunique() > 1]


def plot(df: pd.DataFrame, path: str | Path) -> Path | None:
    """Accuracy (test and best validation, side by side) against the swept keys: x = first key, hue = second,
    rows = the rest combined; swept seeds are replicates (mean, min-max bars). Returns the path, or None when
    no job reported an accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "categorical units" chatter
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [k for k in ACCURACY_KEYS if k in df.columns and df[k].notna().any()]
    if not metrics:
        return None
    swept = swept_keys(df)
    keys = [k for k in swept if k not in REPLICATE_KEYS] or swept or ["job"]
    per_run = keys[0] in REPLICATE_KEYS or keys[0] == "job"  # one point per run: no lines between them
    data = df.melt(id_vars=[c for c in df.columns if c not in metrics], value_vars=metrics,
                   var_name="metric", value_name="accuracy")
    data = data.dropna(subset=["accuracy"])
    x = keys[0]
    hue = keys[1] if len(keys) > 1 else None
    row = None
    if len(keys) > 2:
        row = " ".join(keys[2:])
        data[row] = data[keys[2:]].astype(str).agg(", ".join, axis=1)
    values = list(dict.fromkeys(data[x]))  # first-appearance order; numeric axes sorted numerically
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        values = sorted(values)
    data[x] = data[x].astype(str)
    if hue:
        data[hue] = data[hue].astype(str)
    sns.set_theme(style="whitegrid")
    grid = sns.catplot(data=data, x=x, y="accuracy", hue=hue, col="metric", row=row, kind="point",
                       order=[str(v) for v in values], height=3.2, aspect=1.4, dodge=0.2 if hue else False,
                       sharey=False, errorbar=("pi", 100),  # several seeds per point: the min-max range
                       linestyles="none" if per_run else "-")
    grid.figure.suptitle(f"sweep: {Path(path).parent.name}  ({len(df)} jobs)", y=1.02)
    path = Path(path)
    grid.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    return path


def aggregate(sweep_dir: str | Path) -> pd.DataFrame:
    """Write sweep_results.csv and sweep_results.png into `sweep_dir`; returns the table."""
    sweep_dir = Path(sweep_dir)
    df = collect(sweep_dir)
    if df.empty:
        log.warning("no summary.json under %s: nothing to aggregate", sweep_dir)
        return df
    df.to_csv(sweep_dir / RESULTS_CSV, index=False)
    png = plot(df, sweep_dir / RESULTS_PNG)
    shown = [c for c in ["job", *swept_keys(df), *ACCURACY_KEYS] if c in df.columns]
    print(f"sweep results ({len(df)} jobs) -> {sweep_dir / RESULTS_CSV}" + (f", {png}" if png else ""))
    print(df[shown].to_string(index=False))
    return df


class AggregateSweep(Callback):
    """Hydra callback: aggregate a multirun's job summaries when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            aggregate(config.hydra.sweep.dir)
        except Exception as err:  # a plotting problem must not turn a finished sweep into a failure
            log.warning("could not aggregate the sweep in %s: %s", config.hydra.sweep.dir, err)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m seqep.sweep <sweep dir>")
    aggregate(sys.argv[1])
