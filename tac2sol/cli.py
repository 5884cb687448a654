"""The ``tac2sol`` command line.

The root app only wires sub-commands together; each side registers its own commands:
``tac2sol.operator.cli`` (plan, crd, validate, catalog, operator) and ``tac2sol.trainer.cli``
(train, data, evaluate, run). Heavy libraries (torch, kopf) are imported inside commands, so
``tac2sol --help`` and the operator image stay light.

Exit codes: 0 ok, 1 plan does not fit, 2 invalid input.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from tac2sol import __version__
from tac2sol.errors import Tac2solError
from tac2sol.logs import setup_logging

app = typer.Typer(
    name="tac2sol",
    help="Fine-tune code LLMs that decompile EVM TAC into Solidity, on Kubernetes or locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes ``register(app: typer.Typer) -> None``; a side whose module is not
# there yet (or whose optional extra is not installed) simply contributes no commands.
_COMMAND_MODULES = ("tac2sol.operator.cli", "tac2sol.trainer.cli")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tac2sol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Log level (default WARNING: quiet).")] = "",
) -> None:
    setup_logging(log_level or None)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(name):
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    """Entry point: run the app, turning ``Tac2solError`` into one message and its exit code."""
    try:
        app(standalone_mode=False)
    except Tac2solError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
