"""Reading a TrainingRun file as strictly as the apiserver would: encoding, types, duplicate keys, Lists."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.errors import InvalidInput
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.specfile import load_training_run
from tac2sol.operator.status import Phase

GOOD = "apiVersion: tac2sol.dev/v1alpha1\nkind: TrainingRun\nmetadata:\n  name: x\nspec:\n"
SPEC = "  model:\n    name: qwen2.5-coder-32b\n  dataset:\n    path: a.jsonl\n"
RUN_TEXT = GOOD + SPEC

# (id, the file's bytes, words of the one message besides the file name)
NOT_UTF8: list[tuple[str, bytes, list[str]]] = [
    ("gzip", gzip.compress(RUN_TEXT.encode()), ["gzip-compressed", "gunzip"]),
    ("utf-16-with-bom", RUN_TEXT.encode("utf-16"), ["UTF-16", "iconv"]),
    ("utf-16le-no-bom", RUN_TEXT.encode("utf-16-le"), ["UTF-16", "iconv"]),
    ("utf-16be-no-bom", RUN_TEXT.encode("utf-16-be"), ["UTF-16", "iconv"]),
    ("binary", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, ["binary"]),
    ("latin-1-on-line-4", RUN_TEXT.replace("name: x", "name: caf\xe9").encode("latin-1"), [":4:", "0xe9"]),
]

# (id, dotted path -> value (a CRD type mismatch), the field the message names, a word of the message)
WRONG_TYPES: list[tuple[str, dict[str, Any], str, str]] = [
    ("string-for-integer", {"spec.training.maxSeqLength": "4096"}, "spec.training.maxSeqLength", "integer"),
    ("boolean-for-integer", {"spec.resources.gpusPerNode": True}, "spec.resources.gpusPerNode", "integer"),
    ("float-for-integer", {"spec.resources.nodes": 2.0}, "spec.resources.nodes", "integer"),
    ("string-for-number", {"spec.training.learningRate": "2e-4"}, "spec.training.learningRate", "number"),
    ("boolean-for-number", {"spec.lora": {"dropout": False}}, "spec.lora.dropout", "number"),
    ("string-for-boolean", {"spec.suspend": "true"}, "spec.suspend", "boolean"),
    ("integer-for-string", {"spec.resources.gpuType": 4090}, "spec.resources.gpuType", "string"),
    ("number-for-label-value", {"metadata.labels": {"team": 1}}, "metadata.labels.team", "string"),
]


def _read(path: Path) -> str:
    """The one InvalidInput message of reading ``path``."""
    with pytest.raises(InvalidInput) as caught:
        load_training_run(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    return message


@pytest.mark.parametrize(("content", "words"), [pytest.param(c, w, id=i) for i, c, w in NOT_UTF8])
def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    message = _read(path)
    for word in words:
        assert word in message, message


def test_a_utf8_byte_order_mark_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + RUN_TEXT.encode())
    assert load_training_run(path).metadata.name == "x"


@pytest.mark.parametrize(
    ("changes", "field", "word"), [pytest.param(c, f, w, id=i) for i, c, f, w in WRONG_TYPES]
)
def test_types_are_as_strict_as_the_crd(
    make_run: Callable[..., dict[str, Any]],
    write_run: Callable[[Any], Path],
    changes: dict[str, Any],
    field: str,
    word: str,
) -> None:
    message = _read(write_run(make_run(**changes)))
    assert f": {field}: " in message, message
    assert word in message, message


def test_an_integer_for_a_number_is_fine_as_in_the_crd(
    make_run: Callable[..., dict[str, Any]], write_run: Callable[[Any], Path]
) -> None:
    run = load_training_run(
        write_run(make_run(**{"spec.training.warmupRatio": 0, "spec.lora": {"dropout": 0}}))
    )
    assert run.spec.training.warmup_ratio == 0.0
    assert isinstance(run.spec.lora.dropout, float)


def test_objects_from_the_apiserver_still_read(make_run: Callable[..., dict[str, Any]]) -> None:
    """The apiserver hands back JSON: the phase as a string, whole numbers for number fields."""
    status = {
        "phase": "Running",
        "conditions": [{"type": "Planned", "status": "True", "reason": "Fits", "message": "ok"}],
        "progress": {"step": 10, "totalSteps": 100, "percent": 10, "epoch": 1, "loss": 2},
        "observedGeneration": 1,
        "kopf": {"progress": {}},
    }
    body = json.loads(json.dumps({**make_run(), "status": status}))
    body["metadata"].update(uid="0e1d", resourceVersion="42", generation=1, managedFields=[{"manager": "x"}])
    run = TrainingRun.model_validate(body)
    assert run.status is not None and run.status.phase is Phase.RUNNING
    assert run.status.progress is not None and run.status.progress.epoch == 1.0
    assert TrainingRun.model_validate(json.loads(json.dumps(run.to_api()))) == run


# (id, YAML text with a key given twice, the field path the message names, its two lines)
DUPLICATES: list[tuple[str, str, str, tuple[int, int]]] = [
    ("top-level", RUN_TEXT + "metadata:\n  name: y\n", "metadata", (3, 10)),
    (
        "nested",
        RUN_TEXT + "  training:\n    maxSeqLength: 4096\n    epochs: 1\n    maxSeqLength: 512\n",
        "spec.training.maxSeqLength",
        (11, 13),
    ),
    (
        "in-a-list-item",
        RUN_TEXT + "  resources:\n    tolerations:\n    - key: a\n      operator: Exists\n      key: b\n",
        "spec.resources.tolerations[0].key",
        (12, 14),
    ),
    ("flow-mapping", RUN_TEXT + "  lora: {r: 8, alpha: 16, r: 16}\n", "spec.lora.r", (10, 10)),
]


@pytest.mark.parametrize(
    ("text", "field", "lines"), [pytest.param(t, f, n, id=i) for i, t, f, n in DUPLICATES]
)
def test_a_key_given_twice_names_the_key_and_both_lines(
    write_run: Callable[[Any], Path], text: str, field: str, lines: tuple[int, int]
) -> None:
    message = _read(write_run(text))
    first, second = lines
    assert f":{second}: {field} is given twice" in message, message
    assert f"(lines {first} and {second})" in message, message


def test_merge_keys_and_the_same_key_in_other_mappings_are_fine(write_run: Callable[[Any], Path]) -> None:
    text = (
        GOOD + "  model:\n    name: qwen2.5-coder-32b\n  dataset: &data\n    path: a.jsonl\n"
        "  output:\n    <<: {path: /out}\n    path: /elsewhere\n"
    )
    run = load_training_run(write_run(text))
    assert run.spec.output.path == "/elsewhere"


def test_a_kubectl_list_says_what_it_is_and_what_to_do(
    make_run: Callable[..., dict[str, Any]], write_run: Callable[[Any], Path]
) -> None:
    listing = {"apiVersion": "v1", "kind": "List", "items": [make_run(), make_run()], "metadata": {}}
    message = _read(write_run(listing))
    assert "List of 2 objects" in message
    assert "kubectl get" in message and "its own file" in message


def test_validate_checks_every_file_and_reports_each(
    cli: Callable[..., Any], tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    gz, good, dup = tmp_path / "gz.yaml", tmp_path / "good.yaml", tmp_path / "dup.yaml"
    gz.write_bytes(gzip.compress(RUN_TEXT.encode()))
    good.write_text(yaml.safe_dump(make_run()))
    dup.write_text(RUN_TEXT + "  dataset:\n    path: b.jsonl\n")
    result = cli("validate", str(gz), str(good), str(dup))
    assert result.rc == 2
    assert result.stdout.startswith(f"ok {good}")
    errors = result.stderr.splitlines()
    assert [e.split(":")[1].strip() for e in errors] == [str(gz), str(dup)], errors
    assert "Traceback" not in result.stderr
