"""Operator-side commands: ``plan``, ``crd``, ``validate``, ``catalog``, ``operator``.

Exit codes: 0 ok, 1 the plan does not fit, 2 invalid input (one message, no traceback).
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from tac2sol.errors import InvalidInput, PlanDoesNotFit


class PlanFormat(StrEnum):
    table = "table"
    json = "json"


class CrdFormat(StrEnum):
    yaml = "yaml"
    json = "json"


class CatalogKind(StrEnum):
    models = "models"
    gpus = "gpus"
    all = "all"


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("crd")(crd)
    app.command("validate")(validate)
    app.command("catalog")(catalog)
    app.command("operator")(operator)


def plan(
    file: Annotated[Path, typer.Argument(help="A TrainingRun YAML file.")],
    output: Annotated[PlanFormat, typer.Option("-o", "--output", help="table or json.")] = PlanFormat.table,
    gpu_type: Annotated[str | None, typer.Option(help="Plan for this GPU type instead.")] = None,
    gpus_per_node: Annotated[int | None, typer.Option(help="Plan for this many GPUs per node.")] = None,
    nodes: Annotated[int | None, typer.Option(help="Plan for this many nodes.")] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Also print every term of the estimate (formula, inputs, bytes) and its knobs."
        ),
    ] = False,
) -> None:
    """Estimate per-GPU memory and pick strategy, ZeRO stage, precision and accumulation (exit 1: no fit)."""
    from tac2sol.operator.planner import format_bytes, make_plan
    from tac2sol.operator.resolve import resolve
    from tac2sol.operator.specfile import load_training_run, parse_training_run

    run = load_training_run(file)
    changes = {"gpuType": gpu_type, "gpusPerNode": gpus_per_node, "nodes": nodes}
    if any(v is not None for v in changes.values()):
        data = run.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
        data["spec"]["resources"].update({k: v for k, v in changes.items() if v is not None})
        run = parse_training_run(data, source=f"{file} (with command-line overrides)")
    result = make_plan(resolve(run))
    if output == PlanFormat.json:
        typer.echo(json.dumps(result.model_dump(mode="json", by_alias=True), indent=2))
    else:
        _print_plan(result, str(file), explain)
        if explain:
            _print_explain(result)
    if not result.fits:
        ways = "; ".join(result.ways_out) or "none found"
        arithmetic = "".join(f"{r}. " for r in result.reasons if "weights alone" in r)
        raise PlanDoesNotFit(
            f"{file}: no layout of {result.model} fits {result.world_size} x {result.gpu_type} "
            f"(best: {format_bytes(result.per_gpu_memory_bytes)} per GPU > usable "
            f"{format_bytes(result.usable_memory_bytes)}). {arithmetic}Ways out: {ways}"
        )


def _print_plan(p: Any, source: str, explain: bool = False) -> None:
    from rich.table import Table

    from tac2sol.operator.planner import format_bytes, format_count

    console = _console()
    layout = p.strategy + (f" (ZeRO-{p.zero_stage})" if p.zero_stage is not None else "")
    if p.offload_optimizer or p.offload_params:
        layout += " + offload " + "/".join(
            n for n, on in (("optimizer", p.offload_optimizer), ("params", p.offload_params)) if on
        )
    nodes = f"{p.nodes} node{'s' if p.nodes > 1 else ''}"
    console.print(f"[bold]{source}[/]: {p.model} on {p.world_size} x {p.gpu_type} ({nodes})")
    summary = Table(show_header=False, box=None, pad_edge=False)
    for k, v in (
        ("fits", "yes" if p.fits else "NO"),
        ("strategy", layout),
        ("precision", p.precision),
        ("world size", str(p.world_size)),
        ("per-device batch", str(p.per_device_batch_size)),
        ("gradient accumulation", str(p.gradient_accumulation_steps)),
        ("global batch", str(p.global_batch_size)),
        ("max sequence length", str(p.max_seq_length)),
        ("trainable params", f"{format_count(p.trainable_params)} of {format_count(p.total_params)}"),
        ("memory per GPU", f"{format_bytes(p.per_gpu_memory_bytes)} of {format_bytes(p.gpu_memory_bytes)} "
                           f"(usable {format_bytes(p.usable_memory_bytes)})"),
    ):  # fmt: skip
        summary.add_row(k, v)
    if p.host_memory_bytes:
        summary.add_row("host memory per node", format_bytes(p.host_memory_bytes))
    console.print(summary)
    breakdown = Table(title="memory per GPU", title_justify="left")
    breakdown.add_column("component")
    breakdown.add_column("GiB", justify="right")
    for name, value in p.breakdown.items():
        breakdown.add_row(name, f"{value / 1024**3:.2f}")
    breakdown.add_row("[bold]total[/]", f"[bold]{p.per_gpu_memory_bytes / 1024**3:.2f}[/]")
    if not explain:  # --explain prints every term instead
        console.print(breakdown)
    console.print("[bold]why[/]")
    for reason in p.reasons:
        console.print(f"  - {reason}")
    if p.ways_out:
        console.print("[bold]ways out[/]")
        for way in p.ways_out:
            console.print(f"  - {way}")


def _print_explain(p: Any) -> None:
    """Every term by phase with its formula, inputs, bytes and the knobs that move it; then the fit rule."""
    from rich.table import Table

    from tac2sol.operator.planner import (
        FIT_RULE,
        KNOB_NOTES,
        KNOBS,
        PHASES,
        TERM_KNOBS,
        format_bytes,
        format_count,
    )

    def number(v: float) -> str:
        return format_count(v) if v >= 10_000 else f"{v:.4g}"

    def gib(n: float) -> str:
        return f"{n / 1024**3:.2f}"

    by_phase = {ph: [t for t in p.terms if t.phase == ph] for ph in PHASES}
    totals = {ph: sum(t.bytes for t in ts) for ph, ts in by_phase.items()}
    peak_phase = "layer" if totals["layer"] >= totals["loss"] else "loss"
    table = Table(
        title=f"the estimate, term by term (attention kernel: {p.attention_kernel})", title_justify="left"
    )
    table.add_column("term", no_wrap=True)
    table.add_column("formula")
    table.add_column("inputs")
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column("moved by")
    for ph, terms in by_phase.items():
        if not terms:
            continue
        at_peak = ph in ("persistent", "outside", peak_phase)
        table.add_row(
            f"[bold]{ph}[/]", f"[bold]{PHASES[ph]}{'' if at_peak else ' (not at the peak)'}[/]", "",
            f"[bold]{gib(totals[ph])}[/]", "",
        )  # fmt: skip
        for t in terms:
            knobs = TERM_KNOBS.get(t.name, ((), ""))[0]
            table.add_row(
                f"  {t.name}",
                t.formula,
                ", ".join(f"{k}={number(v)}" for k, v in t.inputs.items()),
                gib(t.bytes),
                "every knob" if knobs == KNOBS else ", ".join(knobs) or "-",
                end_section=t is terms[-1],
            )
    console = _console()
    console.print(table)
    off = "loss" if peak_phase == "layer" else "layer"
    console.print(
        f"peak allocated = persistent {format_bytes(totals['persistent'])} + {peak_phase} "
        f"{format_bytes(totals[peak_phase])} (larger than {off} {format_bytes(totals[off])}) "
        f"= {format_bytes(p.peak_allocated_bytes)} (torch.cuda.max_memory_allocated)"
    )
    share = p.per_gpu_memory_bytes / p.gpu_memory_bytes
    console.print(
        f"estimate = peak + outside {format_bytes(totals['outside'])} = "
        f"{format_bytes(p.per_gpu_memory_bytes)} = {share:.0%} of {format_bytes(p.gpu_memory_bytes)}: "
        f"{FIT_RULE}"
    )
    console.print("[bold]knobs[/]: the terms each one moves (GiB), largest first")
    largest_first = sorted((t for t in p.terms if t.name != "allocatorFragmentation"), key=lambda t: -t.bytes)
    for knob in KNOBS:
        moved = [f"{t.name} {t.bytes / 1024**3:.1f}" for t in largest_first if knob in TERM_KNOBS[t.name][0]]
        console.print(f"  - {knob}: {', '.join(moved) or 'none of these terms'} ({KNOB_NOTES[knob]})")


def _console() -> Any:
    """A console that does not cut tables at 80 columns when the output is a pipe or a file."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def crd(
    output: Annotated[CrdFormat, typer.Option("-o", "--output", help="yaml or json.")] = CrdFormat.yaml,
) -> None:
    """Print the TrainingRun CustomResourceDefinition (generated from the API models)."""
    from tac2sol.operator.crd import render_crd, render_crd_yaml

    if output == CrdFormat.json:
        typer.echo(json.dumps(render_crd(), indent=2))
    else:
        typer.echo(render_crd_yaml(), nl=False)


def validate(
    files: Annotated[list[Path], typer.Argument(help="TrainingRun YAML files.")],
) -> None:
    """Check TrainingRun files against the API (exit 2 with one message per bad file)."""
    from tac2sol.operator.specfile import load_training_run

    bad: list[str] = []
    for file in files:
        try:
            run = load_training_run(file)
        except InvalidInput as exc:
            bad.append(str(exc))
            continue
        r = run.spec.resources
        typer.echo(
            f"ok {file}: {run.metadata.name} "
            f"({run.spec.model.name}, {r.nodes} x {r.gpus_per_node} {r.gpu_type})"
        )
    if bad:
        for message in bad[:-1]:
            typer.echo(f"error: {message}", err=True)
        raise InvalidInput(bad[-1])


def catalog(
    kind: Annotated[CatalogKind, typer.Argument(help="models, gpus or all.")] = CatalogKind.all,
    output: Annotated[PlanFormat, typer.Option("-o", "--output", help="table or json.")] = PlanFormat.table,
) -> None:
    """List the models and GPU types the planner knows."""
    from tac2sol.operator.catalog import GPUS, MODELS

    if output == PlanFormat.json:
        data: dict[str, Any] = {}
        if kind in (CatalogKind.models, CatalogKind.all):
            data["models"] = {
                k: m.model_dump(mode="json", by_alias=True, exclude_none=True) for k, m in MODELS.items()
            }
        if kind in (CatalogKind.gpus, CatalogKind.all):
            data["gpus"] = {
                k: g.model_dump(mode="json", by_alias=True, exclude_none=True) for k, g in GPUS.items()
            }
        typer.echo(json.dumps(data if kind == CatalogKind.all else data[kind.value], indent=2))
        return
    from rich.table import Table

    console = _console()
    if kind in (CatalogKind.models, CatalogKind.all):
        t = Table(title="models", title_justify="left")
        for col in ("key", "hub id", "params", "layers", "hidden", "heads/kv", "context", "licence"):
            t.add_column(col)
        for key, m in MODELS.items():
            params = f"{m.total_params / 1e9:.1f}B" + (
                f" ({m.active_params / 1e9:.1f}B active)" if m.active_params else ""
            )
            lic = m.licence + (" *" if m.licence_note else "")
            t.add_row(
                key,
                m.id,
                params,
                str(m.layers),
                str(m.hidden),
                f"{m.heads}/{m.kv_heads}",
                str(m.context),
                lic,
            )
        console.print(t)
        console.print("* restricted licence: see `tac2sol catalog models -o json` (licenceNote)")
    if kind in (CatalogKind.gpus, CatalogKind.all):
        t = Table(title="gpus", title_justify="left")
        for col in ("key", "name", "memory", "sm", "precision", "per node", "nvlink"):
            t.add_column(col)
        from tac2sol.operator.planner import format_bytes
        from tac2sol.operator.resolve import precision_for

        for key, g in GPUS.items():
            t.add_row(
                key,
                g.name,
                format_bytes(g.memory_bytes),
                g.compute_capability or "-",
                precision_for(g),
                str(g.max_per_node),
                str(g.nvlink_group) if g.nvlink_group > 1 else "-",
            )
        console.print(t)


def operator(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Watch this namespace only (default all; TAC2SOL_NAMESPACE)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Port of /metrics and /healthz (TAC2SOL_METRICS_PORT, default 8080).")
    ] = None,
    trainer_image: Annotated[
        str | None, typer.Option(help="Trainer image for runs without spec.image (TAC2SOL_TRAINER_IMAGE).")
    ] = None,
    progress_interval: Annotated[
        float | None,
        typer.Option(
            help=(
                "Seconds between looks at a run's pods: progress and why they do not run "
                "(TAC2SOL_PROGRESS_INTERVAL_SECONDS, default 30)."
            )
        ),
    ] = None,
) -> None:
    """Run the operator: TrainingRuns -> PyTorchJobs/MPIJobs or TrainJobs, against the current kubeconfig
    (outside a cluster) or the pod's service account (the image's default command)."""
    import logging

    from tac2sol.operator.settings import load_settings

    settings = load_settings(
        namespace=namespace,
        metrics_port=metrics_port,
        trainer_image=trainer_image,
        progress_interval_seconds=progress_interval,
    )
    logging.getLogger("tac2sol").setLevel(settings.log_level)
    from tac2sol.operator.handlers import run

    run(settings)
