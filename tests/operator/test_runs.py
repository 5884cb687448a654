"""runs/: every file validates and plans; one run per catalog model; the CPU tour matches the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tac2sol.operator.catalog import MODELS, find_model
from tac2sol.operator.planner import make_plan
from tac2sol.operator.resolve import resolve
from tac2sol.operator.specfile import load_training_run

REPO = Path(__file__).resolve().parents[2]
RUN_FILES = sorted((REPO / "runs").glob("*.yaml"))
REFUSED = {"deepseek-v3.yaml"}  # DeepSeek-V3 on 4 x RTX 8000: refused on purpose, with the arithmetic


@pytest.mark.parametrize("path", RUN_FILES, ids=[p.name for p in RUN_FILES])
def test_run_validates_and_plans(path: Path) -> None:
    run = load_training_run(path)
    plan = make_plan(resolve(run))
    assert plan.fits is (path.name not in REFUSED), plan.reasons
    if not plan.fits:
        assert plan.ways_out


def test_every_catalog_model_has_a_run() -> None:
    covered = set()
    for path in RUN_FILES:
        found = find_model(load_training_run(path).spec.model.name)
        if found:
            covered.add(found[0])
    assert covered == set(MODELS)


def test_qwen32b_run_is_the_reference_setup() -> None:
    run = load_training_run(REPO / "runs" / "qwen32b.yaml")
    s = run.spec
    assert find_model(s.model.name) == ("qwen2.5-coder-32b", MODELS["qwen2.5-coder-32b"])
    assert (s.resources.gpu_type, s.resources.gpus_per_node, s.resources.nodes) == ("rtx8000", 4, 1)
    assert s.training.max_seq_length == 4096 and s.quantization == "nf4"


def test_tiny_local_matches_the_tiny_model_the_trainer_builds() -> None:
    from tac2sol.tour.tiny import DEFAULT_DIR, TinySpec

    run = load_training_run(REPO / "runs" / "tiny-local.yaml")
    s = run.spec
    tiny = TinySpec()
    facts = s.model.facts
    assert facts is not None and Path(s.model.name) == DEFAULT_DIR
    assert (facts.hidden, facts.layers, facts.heads, facts.kv_heads, facts.intermediate, facts.vocab) == (
        tiny.hidden_size,
        tiny.num_hidden_layers,
        tiny.num_attention_heads,
        tiny.num_key_value_heads,
        tiny.intermediate_size,
        tiny.vocab_size,
    )
    assert facts.context == tiny.max_position_embeddings and not facts.embeddings_tied
    assert s.resources.gpu_type == "cpu" and s.world_size == 1
    assert s.dataset.path == ".cache/sample/tac2sol-sample.jsonl"
    assert s.training.max_seq_length == 512 and s.quantization == "nf4" and s.metrics_port == 9400
    assert s.output.path == "out/tiny-local"
    plan = make_plan(resolve(run))
    assert (plan.strategy, plan.precision) == ("single", "fp32")


def test_cli_validates_every_run(cli: Callable[..., Any]) -> None:
    result = cli("validate", *[str(p.relative_to(REPO)) for p in RUN_FILES])
    assert result.rc == 0, result.stderr
    assert result.stdout.count("ok ") == len(RUN_FILES)
