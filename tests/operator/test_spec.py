"""The TrainingRun models: defaults, camelCase, reading from files and from the apiserver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.operator.resolve import resolve
from tac2sol.operator.spec import TrainingRun, parse_quantity
from tac2sol.operator.specfile import load_training_run, parse_training_run, parse_training_run_text
from tac2sol.operator.status import Phase, TrainingRunStatus


def test_defaults_and_camel_case(make_run: Callable[..., dict[str, Any]]) -> None:
    run = parse_training_run(make_run())
    s = run.spec
    assert s.quantization == "nf4" and s.strategy == "auto" and s.launcher == "pytorchjob"
    assert s.deepspeed.stage == "auto" and s.deepspeed.offload_optimizer is None
    assert s.lora.r == 16 and s.lora.target_modules == ["auto"]
    assert s.world_size == 4
    api = run.to_api()
    assert api["spec"]["training"]["maxSeqLength"] == 4096
    assert "max_seq_length" not in api["spec"]["training"]
    assert parse_training_run(api).spec == s  # round trip through the API form


def test_snake_case_names_are_accepted_too(make_run: Callable[..., dict[str, Any]]) -> None:
    run = parse_training_run(make_run(**{"spec.training": {"max_seq_length": 1024}}))
    assert run.spec.training.max_seq_length == 1024


def test_object_from_the_apiserver_keeps_its_metadata_and_status(
    make_run: Callable[..., dict[str, Any]],
) -> None:
    data = make_run(
        **{
            "metadata.uid": "0b4c",
            "metadata.generation": 3,
            "metadata.managedFields": [{"manager": "kubectl"}],
            "metadata.creationTimestamp": "2025-01-01T00:00:00Z",
            "status": {
                "phase": "Running",
                "observedGeneration": 3,
                "progress": {"step": 10, "totalSteps": 100, "percent": 10},
                "kopf": {"progress": {"create": {"started": "x"}}},
            },
        }
    )
    run = parse_training_run(data, source="apiserver")
    assert run.metadata.generation == 3 and run.metadata.uid == "0b4c"
    assert run.status is not None and run.status.phase == Phase.RUNNING
    assert run.status.progress is not None and run.status.progress.percent == 10
    assert run.status.model_extra == {"kopf": {"progress": {"create": {"started": "x"}}}}


def test_status_serialises_by_alias() -> None:
    status = TrainingRunStatus(phase=Phase.FAILED, observed_generation=2, message="does not fit")
    assert status.to_api() == {
        "phase": "Failed",
        "conditions": [],
        "observedGeneration": 2,
        "message": "does not fit",
    }


def test_lora_targets_auto_all_linear_and_explicit(make_run: Callable[..., dict[str, Any]]) -> None:
    auto = parse_training_run(make_run())
    assert list(resolve(auto).lora_targets) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    v3 = parse_training_run(make_run(**{"spec.model.name": "deepseek-v3"}))
    assert "gate_proj" not in list(resolve(v3).lora_targets)  # experts are not adapted by default
    all_linear = parse_training_run(
        make_run(**{"spec.model.name": "deepseek-v3", "spec.lora": {"targetModules": ["all-linear"]}})
    )
    assert "gate_proj" in list(resolve(all_linear).lora_targets)
    explicit = parse_training_run(make_run(**{"spec.lora": {"targetModules": ["q_proj", "v_proj"]}}))
    assert list(resolve(explicit).lora_targets) == ["q_proj", "v_proj"]


def test_model_by_hub_id(make_run: Callable[..., dict[str, Any]]) -> None:
    run = parse_training_run(make_run(**{"spec.model.name": "Qwen/Qwen2.5-Coder-32B"}))
    assert resolve(run).lora_targets[0] == "q_proj"


def test_yaml_error_names_line_and_column() -> None:
    with pytest.raises(InvalidInput, match=r"^f\.yaml:3:\d+: not valid YAML"):
        parse_training_run_text("a: 1\nb: x\n  c: 3\n", source="f.yaml")


def test_one_message_even_with_several_problems(make_run: Callable[..., dict[str, Any]]) -> None:
    data = make_run(**{"spec.training.maxSeqLength": -1, "spec.lora": {"r": 0}})
    with pytest.raises(InvalidInput) as info:
        parse_training_run(data, source="x.yaml")
    message = str(info.value)
    assert "\n" not in message and "1 more problem" in message


def test_load_training_run_reads_a_file(
    write_run: Callable[[Any], Path], make_run: Callable[..., dict[str, Any]]
) -> None:
    run = load_training_run(write_run(make_run()))
    assert isinstance(run, TrainingRun) and run.metadata.name == "base"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256Gi", 256 * 2**30), ("1.5G", 1_500_000_000), ("512Mi", 512 * 2**20), ("1000", 1000), ("2k", 2000)],
)
def test_parse_quantity(text: str, expected: int) -> None:
    assert parse_quantity(text) == expected


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity("12 parsecs")
