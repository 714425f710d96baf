"""The summary figure, the shared diagnostics layout and the W&B dashboard script (its dry run)."""

from __future__ import annotations

import csv
import importlib.util
import math
import re
from pathlib import Path

import pytest

import seqep.diagnostics
from seqep.plots import DASHBOARD, Panel, plot_run_summary
from seqep.tasks import train
from seqep.training.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ["synapses.0.weight", "synapses.1.weight", "synapses.1.bias", "synapses.2.weight", "synapses.2.bias"]


def load_dashboard():
    spec = importlib.util.spec_from_file_location("seqep_dashboard", ROOT / "sweeps" / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_families() -> list[str]:
    """The metric names of seqep/diagnostics.py's docstring, `<phase>`-style placeholders as `*`."""
    names = re.findall(r"`([a-z_]+/[^`]+)`", seqep.diagnostics.__doc__)
    return sorted({re.sub(r"<[a-z]+>", "*", n) for n in names})


def layout_metrics() -> set[str]:
    return {m for panels in DASHBOARD.values() for p in panels for m in p.metrics}


def synthetic_rows(epochs: int = 5, diagnostics: bool = True, probe_every: int = 2) -> list[dict]:
    """Rows shaped like metrics.csv: learning metrics always; diagnostics optional; probe on some epochs only."""
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train/loss": 0.3 / e, "val/loss": 0.31 / e, "train/acc": 0.5 + 0.05 * e,
               "val/acc": 0.5 + 0.04 * e, "train/tie_rate": max(0.0, 0.5 - 0.25 * e), "val/tie_rate": 0.0,
               "lr/0": 1e-3}
        if diagnostics:
            for phase in ("free", "plus", "minus"):
                row |= {f"relax/{phase}/max_change": 0.02 * e, f"relax/{phase}/mean_change": 0.0 if e == 1 else 4e-5,
                        f"relax/{phase}/frac_unsettled": 0.1 * e, f"relax/{phase}/steps": 20 if phase == "free" else 8,
                        f"relax/{phase}/phi": 0.4 * e}
            row |= {"out/tie_rate": 0.0, "out/sat/h1": 0.5, "out/sat/out": 0.0, "attn/entropy/s1": 4.1 - 0.01 * e}
            for p in PARAMS:
                row |= {f"grad/norm/{p}": 1e-3 * e, f"grad/weight_norm/{p}": 1.0 + e,
                        f"grad/update_ratio/{p}": 1e-3 / e}
            if probe_every and e % probe_every == 1:
                for p in PARAMS:
                    row |= {f"ep/probe/cos/{p}": 0.999, f"ep/probe/rel_err/{p}": 0.02}
                row["ep/probe/cos_min"] = 0.999
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ the layout
def test_layout_draws_every_documented_diagnostic_and_the_learning_metrics():
    families = documented_families()
    assert len(families) >= 14 and "relax/*/max_change" in families and "ep/probe/cos_min" in families
    missing = set(families) - layout_metrics()
    assert not missing, f"metrics in seqep/diagnostics.py with no panel in seqep.plots.DASHBOARD: {missing}"
    assert {"train/loss", "val/loss", "train/acc", "val/acc", "train/tie_rate"} <= layout_metrics()
    assert list(DASHBOARD) == ["Learning", "Convergence", "Output health", "EP vs BPTT probe", "Attention",
                               "Gradients"]


def test_panel_matches_keys_by_wildcard_and_names_the_series():
    panel = Panel("cos", ("ep/probe/cos/*", "ep/probe/cos_min"), "cosine", labels=(("ep/probe/cos_min", "min"),))
    keys = ["ep/probe/cos_min", "ep/probe/cos/synapses.0.weight", "ep/probe/rel_err/synapses.0.weight",
            "ep/probe/cos/a/b"]
    assert panel.columns(keys) == [("ep/probe/cos/synapses.0.weight", "synapses.0.weight"), ("ep/probe/cos_min", "min")]
    rx = re.compile(panel.regex)
    assert [k for k in keys if rx.match(k)] == keys[:2]  # the W&B regex selects the same keys
    assert not Panel("loss", ("train/loss",), "loss").has_wildcard


# ------------------------------------------------------------------------------------------ the figure
def is_png(path: Path, min_size: int) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and min_size < path.stat().st_size < 3_000_000


def test_summary_figure_from_metrics_csv_with_diagnostics_and_some_probe_epochs(tmp_path):
    """Rows as metrics.csv gives them back: strings, empty cells where a metric (the probe) was not logged; NaN/Inf."""
    rows = synthetic_rows(epochs=5, probe_every=2)
    assert sum("ep/probe/cos_min" in r for r in rows) == 3
    rows[1]["relax/free/max_change"] = math.inf
    rows[2]["grad/norm/synapses.0.weight"] = math.nan
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "metrics.csv", newline="") as f:
        as_strings = list(csv.DictReader(f))
    path = plot_run_summary(as_strings, tmp_path / "plots" / "summary.png")
    assert path == tmp_path / "plots" / "summary.png" and is_png(path, 150_000)


def test_summary_figure_without_diagnostics_or_without_rows(tmp_path):
    """Learning metrics only (trainer.diagnostics_every=0, probe_every=0): the other charts say they have no data."""
    assert is_png(plot_run_summary(synthetic_rows(diagnostics=False), tmp_path / "plain.png"), 100_000)
    assert is_png(plot_run_summary([], tmp_path / "empty.png"), 50_000)


@pytest.mark.figures
def test_plot_writes_both_figures_and_the_tracker_logs_them(tmp_path, monkeypatch):
    """train._plot: a failing figure only warns and the drawn ones are returned; the tracker hands them to every
    logger, and a logger that fails to take them only warns."""
    def draw(rows, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
        return path

    def broken(rows, path):
        raise ValueError("bad rows")

    monkeypatch.setattr("seqep.plots.plot_learning_curves", draw)
    monkeypatch.setattr("seqep.plots.plot_run_summary", broken)
    drawn = train._plot([{"epoch": 1}], tmp_path)
    assert drawn == {"plots/learning_curves": tmp_path / "plots" / "learning_curves.png"}

    class Recorder:
        def __init__(self, fail=False):
            self.images, self.fail = [], fail

        def start(self, run):
            pass

        def log_images(self, images, step):
            if self.fail:
                raise RuntimeError("no images here")
            self.images.append((dict(images), step))

        def finish(self, exit_code=0):
            pass

    good, bad = Recorder(), Recorder(fail=True)
    with Tracker(tmp_path, {"bad": bad, "good": good}) as tracker:
        tracker.log_images(drawn)
    assert good.images == [(drawn, 0)]


# ------------------------------------------------------------------------------------------ the dashboard
def test_dashboard_dry_run_lists_every_section_and_metric_family(capsys):
    dashboard = load_dashboard()
    assert dashboard.main(["--dry-run", "--entity", "me", "--project", "seqep"]) == 0
    out = capsys.readouterr().out
    assert "me/seqep" in out and ("nothing was sent" in out or "layout only" in out)
    for section in DASHBOARD:
        assert f"[{section}]" in out
    for family in documented_families():
        assert family in out, family


def test_dashboard_builds_the_wandb_workspace_without_a_server():
    pytest.importorskip("wandb_workspaces")
    dashboard = load_dashboard()
    workspace = dashboard.build_workspace("me", "seqep", "view")
    assert (workspace.entity, workspace.project, workspace.name) == ("me", "seqep", "view")
    assert [s.name for s in workspace.sections] == list(DASHBOARD)
    for section, panels in zip(workspace.sections, DASHBOARD.values()):
        assert len(section.panels) == len(panels)
        for chart, panel in zip(section.panels, panels):
            assert chart.title == panel.title and bool(chart.log_y) == panel.log_y
            assert chart.metric_regex == panel.regex if panel.has_wildcard else chart.y == list(panel.metrics)
    workspace._to_model()  # serialises (what save() would send) without contacting anything
