"""Errors that the CLI turns into one clear message and an exit code (no traceback)."""

from __future__ import annotations


class Tac2solError(Exception):
    """A user-facing error: the message names the field, file or line and what to do."""

    exit_code = 2


class InvalidInput(Tac2solError):
    """Bad input: a malformed file, a wrong field, an unknown model. Exit code 2."""

    exit_code = 2


class PlanDoesNotFit(Tac2solError):
    """The memory planner found no plan that fits. Exit code 1."""

    exit_code = 1
