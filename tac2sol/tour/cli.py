"""Tour commands: ``run`` (plan a TrainingRun and train it here), ``data sample`` and ``data tiny-model``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tac2sol.trainer.cli import DatasetOpt, MaxStepsOpt, OutputOpt, PortOpt


def sample_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSONL.")] = Path(
        ".cache/sample/tac2sol-sample.jsonl"
    ),
    contracts: Annotated[int, typer.Option(min=1, help="Synthetic contracts (3-6 functions each).")] = 90,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 1234,
) -> None:
    """Write the project's SYNTHETIC sample data (made by code, labelled synthetic in each row)."""
    from tac2sol.tour.sample import write_sample

    path = write_sample(output, contracts, seed)
    rows = sum(1 for _ in path.open())
    typer.echo(f"{path}: {rows} synthetic TAC -> Solidity rows (metadata.synthetic = true)")


def tiny_model_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="The model's directory.")] = Path(
        ".cache/tiny-model"
    ),
) -> None:
    """Build the tour's tiny model here: a tokenizer and a small Llama, randomly initialised and briefly
    pretrained on CPU, no download (what runs/tiny-*.yaml train)."""
    from tac2sol.tour.tiny import ensure_tiny_model

    path = ensure_tiny_model(output, use_cache=False)
    typer.echo(f"{path}: the tiny model (synthetic, for trying the system out)")


def run_command(
    run_yaml: Annotated[Path, typer.Argument(help="A TrainingRun, e.g. runs/tiny-local.yaml.")],
    dataset: DatasetOpt = None,
    output: OutputOpt = None,
    metrics_port: PortOpt = None,
    max_steps: MaxStepsOpt = None,
) -> None:
    """The local tour: plan a TrainingRun and train it here, then evaluate (tiny model on a CPU)."""
    from tac2sol.tour.run import run_tour

    run_tour(run_yaml, dataset=dataset, output=output, metrics_port=metrics_port, max_steps=max_steps)


def _group(app: typer.Typer, name: str) -> typer.Typer:
    """The sub-command group ``name`` another module registered (``data``: the trainer's)."""
    for group in app.registered_groups:
        if group.name == name and group.typer_instance is not None:
            return group.typer_instance
    raise RuntimeError(f"no '{name}' command group: register tac2sol.trainer.cli first")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    _group(app, "data").command("sample")(sample_command)
    _group(app, "data").command("tiny-model")(tiny_model_command)
