"""Sweep results: one table and one figure per multirun, failed jobs included.

`AggregateSweep` is a Hydra callback (conf/config.yaml, `hydra.callbacks.aggregate_sweep`): when a multirun ends
it reads every job directory of the sweep (its `summary.json`, `config.yaml` and `.hydra/overrides.yaml`;
`seqep.results`) and writes, in the sweep directory,
    sweep_results.csv   one row per job: job, status, error, the overridden keys, every summary value, the config
    sweep_summary.csv   one row per configuration, seeds as replicates: mean, std, n, 95 % interval
    sweep_summary.md    the same as a markdown table (also printed)
    sweep_results.png   the configurations' means with 95 % intervals, n in the labels
then says how many jobs failed; run.py then exits with status 1 if any did.
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

from seqep import results

log = logging.getLogger(__name__)

RESULTS_CSV = "sweep_results.csv"
RESULTS_PNG = "sweep_results.png"
FILES = {"runs": RESULTS_CSV, "table": "sweep_summary.csv", "markdown": "sweep_summary.md", "figure": RESULTS_PNG}
FAILED: list[str] = []  # jobs of the last aggregated sweep that did not complete (run.py's exit status)


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
    """One row per job directory (`seqep.results.read_run`) plus one column per overridden key, with the keys in
    `df.attrs["overrides"]` (command-line order)."""
    sweep_dir = Path(sweep_dir)
    df = results.collect([sweep_dir]) if sweep_dir.is_dir() else pd.DataFrame()
    keys: dict[str, None] = {}
    columns: list[dict[str, Any]] = []
    for run_dir in df.get("run_dir", []):
        row = {}
        for text in results.read_yaml(Path(run_dir) / ".hydra" / "overrides.yaml") or []:
            parsed = _parse_override(str(text))
            if parsed is not None:
                row[parsed[0]] = parsed[1]
                keys[parsed[0]] = None
        columns.append(row)
    if keys:
        extra = pd.DataFrame(columns, index=df.index)
        rest = df.drop(columns=["job", "status", *[k for k in keys if k in df.columns]])
        df = pd.concat([df[["job", "status"]], extra[list(keys)], rest], axis=1)
    df.attrs["overrides"] = list(keys)
    df.attrs["axes"] = [k for k in swept_keys(df) if k not in results.REPLICATES]  # the table's configurations
    return df


def swept_keys(df: pd.DataFrame) -> list[str]:
    """The override keys whose value differs between jobs (the sweep's axes), in command-line order."""
    return [k for k in df.attrs.get("overrides", []) if k in df.columns and df[k].astype(str).nunique() > 1]


def aggregate(sweep_dir: str | Path) -> pd.DataFrame:
    """Write the sweep's tables and figure into `sweep_dir`; returns the per-job table. Sets `FAILED`."""
    sweep_dir = Path(sweep_dir)
    df = collect(sweep_dir)
    FAILED.clear()
    if df.empty:
        log.warning("no job directories under %s: nothing to aggregate", sweep_dir)
        return df
    results.report(df, sweep_dir, title=f"sweep {sweep_dir.name}", files=FILES)
    FAILED.extend(df.loc[df["status"] != "completed", "job"].astype(str))
    if FAILED:
        print(f"{len(FAILED)} of {len(df)} jobs failed: {', '.join(FAILED)} (status and error in "
              f"{sweep_dir / RESULTS_CSV})")
    return df


class AggregateSweep(Callback):
    """Hydra callback: aggregate a multirun's jobs when the sweep ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            aggregate(config.hydra.sweep.dir)
        except Exception as err:  # a plotting problem must not turn a finished sweep into a failure
            log.warning("could not aggregate the sweep in %s: %s", config.hydra.sweep.dir, err)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m seqep.sweep <sweep dir>")
    aggregate(sys.argv[1])
    sys.exit(1 if FAILED else 0)
