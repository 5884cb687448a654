"""``tac2sol decompile``: registered by ``tac2sol.cli`` like the other command modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tac2sol.errors import InvalidInput


def decompile_command(
    adapter: Annotated[Path, typer.Option(help="Adapter directory of a trained run (<output>/adapter).")],
    source: Annotated[
        str,
        typer.Argument(
            help="A .tac file (one function's TAC), a JSONL file of rows with input, or - for stdin."
        ),
    ] = "-",
    base: Annotated[
        str | None,
        typer.Option(help="Base model (hub id or directory); default: the one adapter_config.json names."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="The run's trainer config (default <adapter>/../config.yaml when there)."
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens to generate per function.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Functions generated together.")] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="text (Solidity) or json (with timings).")
    ] = "text",
) -> None:
    """Decompile TAC into Solidity with a trained adapter (the prompt and decoding of evaluation)."""
    from tac2sol.trainer.decompile import as_text, decompile, read_functions, read_source

    if output not in ("text", "json"):
        raise InvalidInput(f"--output {output!r}: use text or json")
    overrides: dict[str, Any] = {}
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    functions = read_functions("stdin" if source == "-" else source, read_source(source))
    result = decompile(adapter, functions, base=base, config=config, overrides=overrides)
    typer.echo(json.dumps(result, indent=2) if output == "json" else as_text(result))


def register(app: typer.Typer) -> None:
    app.command("decompile")(decompile_command)
