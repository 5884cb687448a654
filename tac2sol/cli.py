"""The ``tac2sol`` command line.

The root app only wires sub-commands together; each side registers its own commands:
``tac2sol.operator.cli`` (plan, crd, validate, catalog, operator), ``tac2sol.trainer.cli``
(train, data, evaluate), ``tac2sol.trainer.compare_cli`` (compare), ``tac2sol.trainer.decompile_cli``
(decompile) and ``tac2sol.tour.cli``
(run, data sample). Heavy libraries (torch, kopf) are imported inside commands, so
``tac2sol --help`` and the operator image stay light.

Exit codes: 0 ok, 1 plan does not fit, 2 invalid input.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from enum import StrEnum
from typing import Annotated, Any

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
_COMMAND_MODULES = (
    "tac2sol.operator.cli",
    "tac2sol.trainer.cli",
    "tac2sol.trainer.compare_cli",
    "tac2sol.trainer.decompile_cli",
    "tac2sol.tour.cli",  # after the trainer's: it adds ``sample`` to the trainer's ``data`` group
)


class LogLevel(StrEnum):
    """The levels the operator's settings accept too (TAC2SOL_LOG_LEVEL)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tac2sol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")
    ] = False,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            envvar="TAC2SOL_LOG_LEVEL", case_sensitive=False, help="Log level (default WARNING: quiet)."
        ),
    ] = None,
) -> None:
    setup_logging(log_level.value if log_level else None)


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
    """Entry point: every error the user can fix is one line on stderr and an exit code, no traceback."""
    try:
        rv = app(standalone_mode=False)
    except Tac2solError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: typer raises its own (vendored) click exceptions
        sys.exit(_usage_error(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    # Without standalone mode typer returns an explicit ``typer.Exit(code)`` instead of raising it.
    sys.exit(rv if isinstance(rv, int) else 0)


def _usage_error(exc: typer.TyperException) -> int:
    """Print a usage error as one line naming the command and the option or argument; return 2."""
    from typer._click.exceptions import NoArgsIsHelpError

    ctx = _context_of(exc)
    command = ctx.command_path if ctx is not None else app.info.name or "tac2sol"
    commands = (
        ", ".join(ctx.command.list_commands(ctx))
        if hasattr(ctx, "command") and hasattr(ctx.command, "list_commands")
        else ""
    )
    if isinstance(exc, NoArgsIsHelpError):  # a bare group (``tac2sol``, ``tac2sol data``): help on stdout
        if exc.format_message():  # without rich the help comes back as text; rich has printed it
            typer.echo(exc.format_message())
        typer.echo(f"error: {command}: a command is required; commands: {commands}", err=True)
        return 2
    message = " ".join(exc.format_message().replace("Value error, ", "").split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    given = _given_value(exc)
    if given is not None:
        message += f" (got {given!r})"
    if message.startswith("no such command") and commands:
        message += f"; commands: {commands}"
    typer.echo(f"error: {command}: {message} (see '{command} --help')", err=True)
    return 2


def _context_of(exc: typer.TyperException) -> Any:
    """The context of the (sub)command that failed; parser errors carry none, so take the innermost one."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            found = frame.f_locals.get("ctx")
            if hasattr(found, "command_path"):
                ctx = found
    return ctx


def _given_value(exc: BaseException) -> object:
    """The value the user gave, when typer's check of it was a pydantic validation (``--nodes abc``)."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        first = (errors() or [{}])[0]
        value = first.get("input")
        if isinstance(value, str) and "is not one of" not in str(exc):
            return value
    return None


if __name__ == "__main__":
    main()
