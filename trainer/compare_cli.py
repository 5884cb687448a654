"""``tac2sol compare``: registered by ``tac2sol.cli`` like the other command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tac2sol.errors import InvalidInput


def compare(
    dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Evaluation directories (eval.json, or a run output with eval/); the first is the baseline."
        ),
    ],
    intersect: Annotated[
        bool, typer.Option(help="Compare only the rows every run has (says how many).")
    ] = False,
    metric: Annotated[
        str, typer.Option(help="Metric the decision reads (an eval.json row metric).")
    ] = "similarity",
    min_rows: Annotated[int, typer.Option(min=1, help="Fewer paired rows: too few rows to tell.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    report: Annotated[
        Path | None, typer.Option(help="Write compare.md, compare.json and compare-<run>.png here.")
    ] = None,
    gate_slice_loss: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Fail (exit 1) if a slice with n >= --gate-min-rows loses more than this, significantly.",
        ),
    ] = None,
    gate_loss: Annotated[
        list[str] | None,
        typer.Option(
            help="METRIC=MARGIN: fail if METRIC loses more than MARGIN overall, significantly. Repeatable."
        ),
    ] = None,
    gate_keep: Annotated[bool, typer.Option(help="Fail unless every candidate's decision is keep.")] = False,
    gate_min_rows: Annotated[int, typer.Option(min=1, help="Slices the slice gate reads.")] = 30,
) -> None:
    """Compare runs evaluated on one test set: paired differences, 95 % intervals, a decision each."""
    from tac2sol.trainer.compare import (
        Gates,
        check_gates,
        compare_runs,
        load_runs,
        markdown,
        parse_gate_losses,
        plot,
        table,
    )

    if output not in ("table", "json"):
        raise InvalidInput(f"--output {output!r}: use table or json")
    gates = Gates(gate_slice_loss, parse_gate_losses(gate_loss or []), gate_keep, gate_min_rows)
    runs = load_runs(dirs)
    result = compare_runs(runs, intersect=intersect, primary=metric, min_rows=min_rows, seed=seed)
    checked = check_gates(result, gates)
    result["gates"] = checked
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        (report / "compare.md").write_text(markdown(result, checked))
        plot(result, runs, report)
    typer.echo(json.dumps(result, indent=2) if output == "json" else table(result, checked))
    if any(not g["passed"] for g in checked):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("compare", no_args_is_help=True)(compare)
