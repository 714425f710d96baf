"""Build the seqep EP-diagnostics dashboard as a saved view (workspace) of a W&B project, in one command.

    pip install -e '.[dashboard]'                                  # wandb-workspaces, only this script needs it
    wandb login                                                    # or WANDB_API_KEY (+ WANDB_BASE_URL for a server)
    python sweeps/dashboard.py --entity <team or user> --project seqep
    python sweeps/dashboard.py --dry-run                           # print the panels; no package, no server needed

Sections and panels come from `seqep.plots.DASHBOARD`, the layout `plots/summary.png` draws, so the W&B view and
the run's figure show the same charts. A key with `*` (one phase, layer, block or parameter name) becomes the
chart's metric regex, so a model with more layers or parameters needs no change here. The x axis is W&B's step,
which seqep sets to the epoch. Each call saves a new view (the URL is printed); docs/dashboards.md says how to
read each chart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seqep.plots import DASHBOARD, Panel

DEFAULT_NAME = "seqep: EP diagnostics"
COLUMNS = 3  # panels per row in every section


def describe(entity: str | None, project: str, name: str) -> str:
    """The layout as text: sections, then each chart's title, scale and metric keys."""
    lines = [f"W&B workspace {name!r} for {entity or '<default entity>'}/{project} "
             f"({sum(len(p) for p in DASHBOARD.values())} line plots, x = epoch)"]
    for section, panels in DASHBOARD.items():
        lines.append(f"\n[{section}]")
        for panel in panels:
            scale = " [log y]" if panel.log_y else ""
            lines.append(f"  {panel.title}{scale}")
            lines.append(f"      y: {', '.join(panel.metrics)}")
            if panel.has_wildcard:
                lines.append(f"      regex: {panel.regex}")
    return "\n".join(lines)


def line_plot(panel: Panel) -> Any:
    """One W&B line plot for a panel: literal keys as y, or the panel's regex when a key has a `*`."""
    import wandb_workspaces.reports.v2 as wr

    options: dict[str, Any] = {"title": panel.title, "x": "Step", "title_x": "epoch", "title_y": panel.ylabel,
                               "log_y": panel.log_y or None, "legend_position": "south"}
    if panel.ylim is not None:
        options["range_y"] = panel.ylim
    if panel.has_wildcard:
        options["metric_regex"] = panel.regex
    else:
        options["y"] = list(panel.metrics)
    return wr.LinePlot(**options)


def build_workspace(entity: str, project: str, name: str = DEFAULT_NAME) -> Any:
    """The `wandb_workspaces` Workspace object (not saved)."""
    import wandb_workspaces.workspaces as ws

    sections = [
        ws.Section(name=section, panels=[line_plot(p) for p in panels], is_open=True,
                   layout_settings=ws.SectionLayoutSettings(columns=COLUMNS, rows=-(-len(panels) // COLUMNS)))
        for section, panels in DASHBOARD.items()
    ]
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections,
                        settings=ws.WorkspaceSettings(x_axis="Step"))


def _default_entity() -> str | None:
    import wandb

    try:
        return wandb.Api().default_entity
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", help="W&B team or user that owns the project (default: your default entity)")
    parser.add_argument("--project", default="seqep", help="W&B project the runs log to (default: seqep, as "
                        "logger.wandb.project)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"name of the saved view (default: {DEFAULT_NAME!r})")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the panel layout and build the view locally; contact no server")
    args = parser.parse_args(argv)

    if args.dry_run:
        print(describe(args.entity, args.project, args.name))
        try:
            build_workspace(args.entity or "entity", args.project, args.name)
        except ImportError:
            print("\n(wandb-workspaces is not installed: layout only; pip install -e '.[dashboard]' to save it)")
        else:
            print("\nbuilt the W&B view locally (dry run: nothing was sent)")
        return 0

    try:
        import wandb_workspaces  # noqa: F401
    except ImportError:
        print("error: this needs wandb-workspaces: pip install -e '.[dashboard]' (or pip install "
              "wandb-workspaces==0.4.13)", file=sys.stderr)
        return 2
    entity = args.entity or _default_entity()
    if not entity:
        print("error: no W&B entity: pass --entity <team or user>, or log in first (wandb login)", file=sys.stderr)
        return 2
    try:
        saved = build_workspace(entity, args.project, args.name).save()
    except Exception as err:  # no credentials, unknown project, server unreachable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: could not save the view to {entity}/{args.project} ({first}); check `wandb login` (and "
              "WANDB_BASE_URL for your own server), and that the project exists (log one run to it first)",
              file=sys.stderr)
        return 2
    print(f"saved view {args.name!r}: {saved.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
