"""spec.evaluation.testSet and baseModel: the API, the trainer config, the pod's mounts, the status."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tac2sol.errors import InvalidInput
from tac2sol.operator.planner import make_plan
from tac2sol.operator.progress import evaluation_from_metrics
from tac2sol.operator.render import RenderOptions, render_children
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import load_training_run, parse_training_run
from tac2sol.operator.status import EvaluationSummary
from tac2sol.operator.trainconfig import to_train_config
from tac2sol.trainer.evaluate import export_summary
from tac2sol.trainer.metrics import TrainerMetrics
from tac2sol.trainer.testset import locate_test_set

REPO = Path(__file__).resolve().parents[2]
MakeRun = Callable[..., dict[str, Any]]
OPTIONS = RenderOptions(trainer_image="ghcr.io/tac2sol/tac2sol-trainer:0.1.0")


def _rendered(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train.yaml, the Master pod) of a run."""
    data = copy.deepcopy(data)
    data["metadata"].update(namespace="ml", uid="0000-1111", generation=1)
    rr = resolve(parse_training_run(data))
    config_map, job = render_children(rr, make_plan(rr), OPTIONS)
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return yaml.safe_load(config_map["data"]["train.yaml"]), pod


def test_phase2b_pair_shares_one_test_set_on_the_data_claim() -> None:
    runs = [load_training_run(REPO / "runs" / f"phase2b-{n}.yaml") for n in ("qwen32b", "deepseek-coder-33b")]
    a, b = (r.spec for r in runs)
    assert a.evaluation == b.evaluation and a.evaluation.base_model and a.evaluation.test_set is not None
    assert (a.dataset, a.training.max_seq_length, a.lora) == (b.dataset, b.training.max_seq_length, b.lora)
    assert a.model.name != b.model.name and a.output.path != b.output.path
    train, pod = _rendered(yaml.safe_load((REPO / "runs" / "phase2b-qwen32b.yaml").read_text()))
    # the dataset's claim holds the test set too: read under /data, no second volume
    assert train["evaluation"]["test_set"] == "/data/defi-hard-test.jsonl"
    assert train["evaluation"]["base_model"] is True and train["evaluation"]["test_set_uri"] is None
    assert [v["name"] for v in pod["spec"]["volumes"]].count("data") == 1
    assert "test-set" not in {v["name"] for v in pod["spec"]["volumes"]}


def test_a_test_set_on_another_claim_is_mounted_read_only(make_run: MakeRun) -> None:
    train, pod = _rendered(
        make_run(**{"spec.evaluation.testSet": {"pvc": "benchmarks", "path": "/sets/t.jsonl"}})
    )
    assert train["evaluation"]["test_set"] == "/test-set/sets/t.jsonl"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["test-set"]["persistentVolumeClaim"] == {"claimName": "benchmarks", "readOnly": True}
    mounts = {m["name"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["test-set"] == {"name": "test-set", "mountPath": "/test-set", "readOnly": True}


def test_a_test_set_uri_is_downloaded_under_the_output(make_run: MakeRun) -> None:
    uri = "hf://datasets/org/bench/test.jsonl"
    run = parse_training_run(make_run(**{"spec.evaluation.testSet": {"uri": uri}}))
    cfg = to_train_config(resolve(run), make_plan(resolve(run)), output_dir="/output/base")
    assert cfg.evaluation.test_set_uri == uri and cfg.evaluation.test_set is None
    assert locate_test_set(cfg) == Path("/output/base/data/test-set/test.jsonl")
    path_only = parse_training_run(make_run(**{"spec.evaluation.testSet": {"path": "/bench/t.jsonl"}}))
    local = to_train_config(resolve(path_only), make_plan(resolve(path_only)))
    assert local.evaluation.test_set == Path("/bench/t.jsonl")  # in the image: used as it is


@pytest.mark.parametrize(
    ("test_set", "where"),
    [
        ({"path": "t.jsonl", "uri": "https://example.org/t.jsonl"}, "spec.evaluation.testSet.path"),
        ({}, "spec.evaluation.testSet.path"),
        ({"pvc": "bench", "uri": "https://example.org/t.jsonl"}, "spec.evaluation.testSet.pvc"),
    ],
    ids=["path-and-uri", "neither", "pvc-without-path"],
)
def test_bad_test_sets_name_the_field(make_run: MakeRun, test_set: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^<input>: {re.escape(where)}: (give exactly one|a pvc needs)"):
        parse_training_run(make_run(**{"spec.evaluation.testSet": test_set}))


def test_crd_carries_the_test_set_rules() -> None:
    crd = yaml.safe_load((REPO / "manifests" / "crds" / "trainingruns.tac2sol.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    evaluation = spec["evaluation"]["properties"]
    rules = [r["rule"] for r in evaluation["testSet"]["x-kubernetes-validations"]]
    assert "has(self.path) != has(self.uri)" in rules
    assert evaluation["baseModel"]["default"] is False


def test_status_carries_every_evaluation_the_trainer_exports() -> None:
    """The trainer's export of a run with a test set and the ablation reaches status.evaluation."""

    def summary(sim: float, syntax: float | None) -> dict[str, Any]:
        facts = {"guards": {"f1": 0.5}, "events": {"f1": None}}
        overall = {"samples": 40, "semanticSimilarityMean": sim, "syntaxValidRate": syntax}
        return {"overall": overall, "facts": facts}

    exported = export_summary(
        {
            "eval": summary(0.81, 0.9),
            "eval-base": summary(0.42, 0.5),
            "eval-test-set": {**summary(0.77, None), "testSet": {"excludedRows": 3}},
            "eval-test-set-base": summary(0.40, 0.45),
        }
    )
    metrics = TrainerMetrics(run="r", rank=0, device="cpu")
    metrics.record_eval(exported)
    found = evaluation_from_metrics(generate_latest(metrics.registry).decode())
    assert found == {
        "samples": 40,
        "semanticSimilarityMean": 0.81,
        "syntaxValid": 0.9,
        "factF1": {"guards": 0.5},
        "base": {
            "samples": 40,
            "semanticSimilarityMean": 0.42,
            "syntaxValid": 0.5,
            "factF1": {"guards": 0.5},
        },
        "testSet": {
            "samples": 40,
            "semanticSimilarityMean": 0.77,  # syntax not measured: absent, not 0
            "factF1": {"guards": 0.5},
            "excludedRows": 3,
            "base": {
                "samples": 40,
                "semanticSimilarityMean": 0.4,
                "syntaxValid": 0.45,
                "factF1": {"guards": 0.5},
            },
        },
    }
    status = EvaluationSummary.model_validate(found)  # the status schema holds every field
    assert status.test_set is not None and status.test_set.base is not None
    assert status.test_set.excluded_rows == 3 and status.test_set.syntax_valid is None
    assert status.to_api()["testSet"]["base"]["semanticSimilarityMean"] == 0.4
