"""The generated CRD: no drift, a structural schema, valid for the apiserver, CEL rules that hold.

Without an apiserver at hand these tests check what the apiserver checks: the CRD object against
the Kubernetes OpenAPI schema (kubernetes-validate, strict), the structural-schema rules of
apiextensions.k8s.io/v1 (every node typed, no $ref/anyOf with types, properties xor
additionalProperties, defaults valid), every run in runs/ against the schema (jsonschema
Draft 4: the dialect of ``exclusiveMinimum: true``), and every CEL rule compiled and evaluated
(cel-python) on defaulted objects. The control-plane tests install the same file into a real
kube-apiserver.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tac2sol.operator.crd import CRD_FILE, HEADER, render_crd, render_crd_yaml

REPO = Path(__file__).resolve().parents[2]
RUN_FILES = sorted((REPO / "runs").glob("*.yaml"))
GENERATED = [REPO / "manifests" / "crds" / CRD_FILE, REPO / "charts" / "tac2sol" / "crds" / CRD_FILE]
MakeRun = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return render_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --- generation and drift -----------------------------------------------------------------


@pytest.mark.parametrize("path", GENERATED, ids=["manifests", "chart"])
def test_generated_files_do_not_drift(path: Path) -> None:
    assert path.read_text() == render_crd_yaml(), f"{path} is stale: run `make generate`"
    assert path.read_text().startswith(HEADER)


def test_generate_script_reproduces_the_files(tmp_path: Path) -> None:
    """hack/generate.sh crd, run on a copy of the tree, writes exactly the committed files."""
    for rel in ("hack/generate.sh",):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((REPO / rel).read_text())
    tac2sol = Path(sys.executable).parent / "tac2sol"  # the venv's script, as the CLI tests use
    env = {**os.environ, "PYTHONSAFEPATH": "1", "TAC2SOL": str(tac2sol)}
    subprocess.run(
        ["bash", "hack/generate.sh", "crd"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    for path in GENERATED:
        regenerated = tmp_path / path.relative_to(REPO)
        assert regenerated.read_text() == path.read_text()


# --- what the apiserver checks --------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.30", "1.31", "1.33"])
def test_crd_object_is_valid_kubernetes(crd: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(crd, version, strict=True)


def test_crd_names_and_subresources(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "trainingruns.tac2sol.dev" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["tr"] and "tac2sol" in spec["names"]["categories"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:2] == ["Phase", "Model"] and {"GPUs", "Progress", "Age"} <= set(names)


def test_printer_columns_point_at_schema_fields(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata"):
            continue
        node = schema
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == column["type"], column


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        where = path or "<root>"
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"} & set(node), where
        if path == ".metadata":
            continue
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{where}: no type"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, where
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("additionalProperties", {}) is not False, where
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True and ("minimum" in node or "maximum" in node), where
        if node.get("type") == "object" and "properties" in node:
            assert set(node.get("required", [])) <= set(node["properties"]), where


def test_defaults_validate_against_their_own_schema(schema: dict[str, Any]) -> None:
    count = 0
    for _, node in _walk(schema["properties"]["spec"], ".spec"):
        if "default" in node:
            default = copy.deepcopy(node["default"])
            jsonschema.Draft4Validator(_for_jsonschema(node)).validate(
                _apply_defaults(node, copy.deepcopy(default))
            )
            # The apiserver checks a default against the node's CEL rules as written (no nested defaults).
            assert _cel_failures({k: v for k, v in node.items() if k != "properties"}, default) == []
            count += 1
    assert count > 30


def test_status_survives_kopf_patches(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert status["properties"]["phase"]["enum"] == [
        "Pending",
        "Planning",
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
    ]
    assert not any("default" in node for _, node in _walk(status))


def test_collections_and_strings_are_bounded_for_cel_cost(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema["properties"]["spec"], ".spec"):
        kind = node.get("type")
        if kind == "array":
            assert "maxItems" in node, path
        elif kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path
        elif kind == "string" and "enum" not in node:
            assert "maxLength" in node, path


# --- runs/ and bad objects against the schema ------------------------------------------------


def _for_jsonschema(node: Any) -> Any:
    """The OpenAPI schema as JSON Schema draft 4 (int-or-string spelled out)."""
    if isinstance(node, dict):
        out = {k: _for_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if node.get("x-kubernetes-int-or-string"):
            out["type"] = ["integer", "string"]
        return out
    if isinstance(node, list):
        return [_for_jsonschema(v) for v in node]
    return node


def _apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Default like the apiserver: missing properties with a default get it, recursively."""
    if isinstance(value, dict) and "properties" in node:
        for name, sub in node["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = _apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in node:
        return [_apply_defaults(node["items"], v) for v in value]
    return value


def _cel_failures(node: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule on the (defaulted) value; messages of failing ones."""
    failures: list[str] = []
    env = celpy.Environment()
    for rule in node.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as exc:  # e.g. "no such key": the apiserver rejects it too
            result = exc
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            failures.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name in value:
                failures += _cel_failures(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            failures += _cel_failures(node["items"], item, f"{path}[{i}]")
    return failures


def _check(schema: dict[str, Any], obj: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(schema errors, failing CEL rules) for an object as the apiserver would see it."""
    obj = _apply_defaults(schema, copy.deepcopy(obj))
    validator = jsonschema.Draft4Validator(_for_jsonschema(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    return errors, ([] if errors else _cel_failures(schema, obj))


@pytest.mark.parametrize("path", RUN_FILES, ids=[p.stem for p in RUN_FILES])
def test_runs_pass_schema_and_cel(schema: dict[str, Any], path: Path) -> None:
    errors, failures = _check(schema, yaml.safe_load(path.read_text()))
    assert errors == [] and failures == []


SCHEMA_REJECTS = [
    ("learning-rate", {"spec.training.learningRate": 5}),
    ("zero-gpus", {"spec.resources.gpusPerNode": 0}),
    ("unknown-gpu", {"spec.resources.gpuType": "rtx9000"}),
    ("quantization", {"spec.quantization": "int8"}),
    ("stage-1", {"spec.deepspeed": {"stage": 1}}),
    ("empty-path", {"spec.dataset.path": ""}),
    ("seq-too-short", {"spec.training.maxSeqLength": 8}),
    ("missing-model", {"spec.model": ...}),
]

CEL_REJECTS = [
    (
        "ddp-with-stage",
        {"spec.strategy": "ddp", "spec.deepspeed": {"stage": 2}},
        "deepspeed.stage needs strategy",
    ),
    (
        "ddp-with-offload",
        {"spec.strategy": "ddp", "spec.deepspeed": {"offloadParams": True}},
        "offload needs strategy",
    ),
    ("offload-params-stage-2", {"spec.deepspeed": {"stage": 2, "offloadParams": True}}, "needs ZeRO stage 3"),
    (
        "offload-optimizer-stage-0",
        {"spec.deepspeed": {"stage": 0, "offloadOptimizer": True}},
        "offloadOptimizer needs ZeRO stage 2 or 3",
    ),
    ("epochs-and-max-steps", {"spec.training.maxSteps": 10}, "not both"),
    ("global-batch", {"spec.training.globalBatchSize": 10}, "multiple of"),
    (
        "gpus-per-node",
        {"spec.resources.gpusPerNode": 9, "spec.training.globalBatchSize": ...},
        "exceeds what one",
    ),
    ("mpijob-ddp", {"spec.strategy": "ddp", "spec.launcher": "mpijob"}, "mpijob runs DeepSpeed"),
    ("cpu-deepspeed", {"spec.resources.gpuType": "cpu", "spec.strategy": "deepspeed"}, "needs GPUs"),
    ("path-and-uri", {"spec.dataset.uri": "s3://bucket/x.jsonl"}, "exactly one of dataset.path"),
    (
        "pvc-without-path",
        {"spec.dataset.path": ..., "spec.dataset.uri": "s3://b/x"},
        "pvc needs dataset.path",
    ),
    (
        "credentials-without-uri",
        {"spec.dataset.credentialsSecret": "s3-creds"},
        "credentialsSecret needs dataset.uri",
    ),
    ("long-name", {"metadata.name": "a" * 51}, "at most 50 characters"),
    # What a TrainJob cannot carry per run (Trainer v2.3).
    (
        "trainjob-mpijob",
        {"spec.backend": "trainjob", "spec.launcher": "mpijob", "spec.strategy": "deepspeed"},
        "launcher mpijob is a Kubeflow v1 MPIJob",
    ),
    (
        "trainjob-pull-policy",
        {"spec.backend": "trainjob", "spec.imagePullPolicy": "Always"},
        "imagePullPolicy of a TrainJob",
    ),
    (
        "trainjob-backoff-limit",
        {"spec.backend": "trainjob", "spec.runPolicy": {"backoffLimit": 5}},
        "training-operator v1 settings",
    ),
]


@pytest.mark.parametrize(("case", "changes"), SCHEMA_REJECTS, ids=[c[0] for c in SCHEMA_REJECTS])
def test_schema_rejects_bad_values(
    schema: dict[str, Any], make_run: MakeRun, case: str, changes: dict[str, Any]
) -> None:
    errors, _ = _check(schema, make_run(**changes))
    assert errors, case


@pytest.mark.parametrize(("case", "changes", "message"), CEL_REJECTS, ids=[c[0] for c in CEL_REJECTS])
def test_cel_rules_reject_cross_field_mistakes(
    schema: dict[str, Any], make_run: MakeRun, case: str, changes: dict[str, Any], message: str
) -> None:
    errors, failures = _check(schema, make_run(**changes))
    assert errors == [], errors
    assert len(failures) == 1 and message in failures[0], failures


@pytest.mark.parametrize(("case", "changes", "message"), CEL_REJECTS, ids=[c[0] for c in CEL_REJECTS])
def test_cel_rules_and_python_checks_agree(
    make_run: MakeRun, case: str, changes: dict[str, Any], message: str
) -> None:
    """Every object the CEL rules reject, the Python parser rejects too (one source of truth)."""
    from tac2sol.errors import InvalidInput
    from tac2sol.operator.specfile import parse_training_run

    with pytest.raises(InvalidInput):
        parse_training_run(make_run(**changes))


def test_a_trainjob_may_have_a_priority_class(schema: dict[str, Any], make_run: MakeRun) -> None:
    """It runs on a TrainingRuntime of its own (operator/trainjob.py), so nothing refuses it."""
    errors, failures = _check(
        schema, make_run(**{"spec.backend": "trainjob", "spec.resources.priorityClassName": "high"})
    )
    assert (errors, failures) == ([], [])
