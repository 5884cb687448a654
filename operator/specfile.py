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

from tac2sol.errors import InvalidInput
from tac2sol.operator.apimodel import ApiModel
from tac2sol.operator.names import GROUP_VERSION, KIND
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.validation import SpecProblem, check_training_run, format_path


def load_training_run(path: str | Path) -> TrainingRun:
    """Read one TrainingRun from a YAML file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot read the file ({exc.strerror}); check the path") from None
    return parse_training_run_text(_decode(raw, str(p)), source=str(p))


def _decode(raw: bytes, source: str) -> str:
    """The file's text, or one error saying what the bytes are instead of UTF-8 YAML and what to do."""
    head = raw[:256]
    if raw[:2] == b"\x1f\x8b":
        problem = "is gzip-compressed; decompress it first (gunzip)"
    elif raw[:2] in (b"\xff\xfe", b"\xfe\xff") or any(
        half and half.count(0) * 10 >= len(half) * 9 for half in (head[0::2], head[1::2])
    ):
        problem = "is UTF-16, not UTF-8; convert it (iconv -f UTF-16 -t UTF-8)"
    elif b"\x00" in raw:
        problem = "holds NUL bytes, so it is binary, not a YAML file; give a TrainingRun YAML file"
    else:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            source = f"{source}:{line}"
            problem = f"is not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
    raise InvalidInput(f"{source}: the file {problem}")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, path: tuple[str | int, ...], first: int, second: int) -> None:
        super().__init__(f"{format_path(path)} given twice")
        self.path, self.first, self.second = path, first, second


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicate_keys(node)
        return super().construct_document(node)


def _check_duplicate_keys(root: yaml.Node) -> None:
    """Walk the composed nodes before construction (before ``<<`` merges, which may override)."""
    todo: list[tuple[yaml.Node, tuple[str | int, ...]]] = [(root, ())]
    seen_nodes: set[int] = set()
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:  # an alias of an anchored node already checked
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, key.value) in lines:
                        raise _DuplicateKey((*path, key.value), lines[key.tag, key.value], line)
                    lines[key.tag, key.value] = line
                todo.append((value, (*path, str(key.value))))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((item, (*path, i)) for i, item in enumerate(node.value))


def parse_training_run_text(text: str, source: str = "<input>") -> TrainingRun:
    """Parse YAML text; errors name the source, line and field path."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except _DuplicateKey as exc:
        raise InvalidInput(
            f"{source}:{exc.second}: {format_path(exc.path)} is given twice in one mapping "
            f"(lines {exc.first} and {exc.second}); keep one"
        ) from None
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
    if data.get("kind") == "List" or (str(data.get("kind", "")).endswith("List") and "items" in data):
        items = data.get("items")
        count = (
            f"{len(items)} object{'s' if len(items) != 1 else ''}" if isinstance(items, list) else "objects"
        )
        raise SpecProblem(
            ("kind",),
            f"this is a {data.get('kind')} of {count} (what `kubectl get -o yaml` prints), not one "
            "TrainingRun; save each run to its own file (`kubectl get trainingrun NAME -o yaml`)",
        )
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
