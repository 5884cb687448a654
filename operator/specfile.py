"""Reading a TrainingRun: YAML text or a dict in, a validated run out, or ONE clear error.

:func:`load_training_run` / :func:`parse_training_run` raise :class:`tac2sol.errors.InvalidInput`
with one message that names the file, line and field path (``spec.training.maxSeqLength``) and
what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError
from tac2sol.operator.apimodel import ApiModel
from tac2sol.operator.names import GROUP_VERSION, KIND
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.validation import SpecProblem, check_training_run

from tac2sol.errors import InvalidInput


def format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_training_run(path: str | Path) -> TrainingRun:
    """Read one TrainingRun from a YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot read the file ({exc.strerror}); check the path") from None
    return parse_training_run_text(text, source=str(p))


def parse_training_run_text(text: str, source: str = "<input>") -> TrainingRun:
    """Parse YAML text; errors name the source, line and field path."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{where}: not valid YAML ({problem}); fix the syntax at that line") from None
    if len(docs) != 1:
        raise InvalidInput(
            f"{source}: expected exactly one YAML document with a TrainingRun, found {len(docs)}"
        )
    node = yaml.compose(text) if "\n---" not in text else None
    return parse_training_run(docs[0], source=source, _node=node)


def parse_training_run(data: Any, source: str = "<input>", _node: yaml.Node | None = None) -> TrainingRun:
    """Validate a dict (from YAML or the apiserver) into a TrainingRun, or raise one clear InvalidInput."""
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{source}: expected a mapping (apiVersion, kind, metadata, spec), got {type(data).__name__}"
        )
    try:
        _check_header(data)
        run = TrainingRun.model_validate(data)
        check_training_run(run)
    except ValidationError as exc:
        path, message = _describe(exc)
        raise InvalidInput(_where(source, _node, path) + f"{format_path(path)}: {message}") from None
    except SpecProblem as exc:
        raise InvalidInput(
            _where(source, _node, exc.path) + f"{format_path(exc.path)}: {exc.message}"
        ) from None
    return run


def _where(source: str, node: yaml.Node | None, path: tuple[str | int, ...]) -> str:
    line = _line_of(node, path) if node is not None else None
    return f"{source}:{line}: " if line else f"{source}: "


def _line_of(node: yaml.Node, path: tuple[str | int, ...]) -> int | None:
    """Line of the deepest node of ``path`` that exists in the YAML (1-based)."""
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    child = k if part == path[-1] else v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
        line = node.start_mark.line + 1
    return line


def _check_header(data: dict[str, Any]) -> None:
    if data.get("apiVersion") != GROUP_VERSION:
        raise SpecProblem(("apiVersion",), f"must be {GROUP_VERSION} (got {data.get('apiVersion')!r})")
    if data.get("kind") != KIND:
        raise SpecProblem(("kind",), f"must be {KIND} (got {data.get('kind')!r})")


def _describe(exc: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """The first error as (field path, message naming what is allowed)."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        msg = f"unknown field; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
    elif kind == "missing":
        msg = "is required"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        msg = msg[0].lower() + msg[1:] if msg else msg
        if given is not None and not isinstance(given, dict | list):
            msg += f" (got {given!r})"
    more = len(errors) - 1
    if more:
        msg += f" [{more} more problem{'s' if more > 1 else ''} after fixing this one]"
    return loc, msg


def _allowed_fields(loc: tuple[str | int, ...]) -> list[str]:
    """Aliases of the model found at ``loc`` inside TrainingRun."""
    model: Any = TrainingRun
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return []
        ann = field.annotation
        model = _model_in(ann)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, ApiModel):
        return ann
    for arg in get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
