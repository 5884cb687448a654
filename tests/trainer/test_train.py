"""``train``: the stages end to end on the tiny model, and bad input refused before training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.checkpoints import checkpoints, problem
from tac2sol.trainer.evaluate import evaluate_adapter
from tac2sol.trainer.train import TrainingDiverged, nan_guard, train


def test_qlora_training_run_end_to_end(make_config: Any) -> None:
    cfg = make_config(
        training={"max_steps": 30, "logging_steps": 5, "save_steps": 10, "save_total_limit": 2},
        evaluation={"enabled": True, "max_samples": 4, "max_new_tokens": 8},
    )
    said: list[str] = []
    result = train(cfg, say=said.append)
    out = Path(cfg.output_dir)

    # the loss falls over 30 steps
    state = json.loads((out / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) >= 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.3, losses
    assert result.global_step == 30 and result.train_loss is not None

    # keep-last-K checkpoints, each sealed and intact
    assert [step for step, _ in checkpoints(out)] == [20, 30]
    assert all(problem(path) is None for _, path in checkpoints(out))

    # the adapter holds LoRA weights only, with the tokenizer beside it
    from safetensors import safe_open

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys)
    assert (out / "adapter" / "tokenizer.json").is_file()

    # data reports, the split manifest and run.json
    report = json.loads((out / "data" / "preflight.json").read_text())
    split = json.loads((out / "data" / "split.json").read_text())
    assert report["kept"] == split["counts"]["rows"] and split["leakageFree"] is True
    assert (out / "data" / "rejects.jsonl").read_text() == ""  # the sample has no rejects at 512 tokens
    run = json.loads(result.run_json.read_text())
    assert run["config"]["training"]["max_steps"] == 30
    assert run["data"]["sha256"] == report["sha256"]
    assert run["results"]["globalStep"] == 30 and run["results"]["trainTokensThisProcess"] > 0
    assert run["results"]["trainSamplesThisProcess"] == 30 * 2  # training batches only, not eval
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(run["versions"])
    assert run["plan"]["strategy"] == "single" and run["timings"]["train_s"] > 0
    assert run["parameters"]["trainable"] < run["parameters"]["total"]

    # evaluation ran on held-out rows
    summary = json.loads((out / "eval" / "eval.json").read_text())
    assert summary["overall"]["samples"] == 4 and "SYNTHETIC" in summary["note"]
    assert any(line.startswith("model:") and "trainable params" in line for line in said)
    assert any(line.startswith("evaluation: 4 held-out functions") for line in said)

    # `tac2sol evaluate` later: same held-out rows (checked against split.json), same report
    (out / "eval" / "eval.json").unlink()
    assert list(evaluate_adapter(cfg, say=said.append)) == ["eval"]
    again = json.loads((out / "eval" / "eval.json").read_text())
    assert again["overall"] == summary["overall"]  # greedy decoding of the same adapter


def test_merged_model_without_quantization(make_config: Any) -> None:
    from transformers import AutoModelForCausalLM

    cfg = make_config(quantization="none", training={"max_steps": 2, "save_merged_model": True})
    result = train(cfg)
    merged = AutoModelForCausalLM.from_pretrained(result.output_dir / "merged")
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert json.loads(result.run_json.read_text())["outputs"]["merged"] == str(result.output_dir / "merged")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-data", r"nope\.jsonl: the dataset file does not exist"),
        ("bad-tokenizer", r"model\.tokenizer: cannot load a tokenizer from local path"),
        ("resume-path", r"resume: checkpoint path .*checkpoint-7 does not exist"),
        ("resume-required", r"resume: 'required' but .* has no valid checkpoint"),
        ("not-writable", r"output_dir: .* is not writable"),
        (
            "nothing-fits",
            r"no row is left to train on \(too_long: \d+\); no row fits data\.max_seq_length 16",
        ),
        ("merged-with-nf4", r"training\.save_merged_model: a merged model needs quantization 'none'"),
    ],
)
def test_bad_input_fails_before_training(make_config: Any, tmp_path: Path, case: str, message: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    changes: dict[str, Any] = {
        "missing-data": {"data": {"path": str(tmp_path / "nope.jsonl")}},
        "bad-tokenizer": {"model": {"tokenizer": str(tmp_path)}},
        "resume-path": {"resume": str(tmp_path / "checkpoint-7")},
        "resume-required": {"resume": "required"},
        "not-writable": {"output_dir": str(blocker / "out")},
        "nothing-fits": {"data": {"max_seq_length": 16}},
        "merged-with-nf4": {"training": {"save_merged_model": True}},
    }[case]
    cfg = make_config(**changes)
    with pytest.raises(InvalidInput, match=message):
        train(cfg)
    out = Path(cfg.output_dir)
    assert not checkpoints(out) and not (out / "adapter").exists() and not (out / "run.json").exists()


def test_a_taken_metrics_port_fails_before_data_and_model(make_config: Any) -> None:
    import socket

    from tac2sol.trainer.metrics import stop_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config(metrics={"enabled": True, "host": "127.0.0.1", "port": port})
        try:
            with pytest.raises(
                InvalidInput, match=rf"metrics\.port: cannot serve metrics on 127\.0\.0\.1:{port}"
            ):
                train(cfg)
        finally:
            stop_server()
    out = Path(cfg.output_dir)
    assert not (out / "data").exists() and not (out / "config.yaml").exists()  # nothing prepared yet


def test_nan_guard_stops_without_saving() -> None:
    from transformers import TrainerControl, TrainerState

    guard, state, control = nan_guard(), TrainerState(), TrainerControl()
    state.global_step = 7
    control.should_save = True
    guard.on_log(None, state, control, logs={"loss": 1.5})
    assert not control.should_training_stop and guard.problem is None
    guard.on_log(None, state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and not control.should_save and guard.problem[:2] == (7, "loss")


def test_a_nan_loss_ends_training_with_a_clear_error(
    make_config: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.norm.weight"][:] = float("nan")  # every logit becomes NaN
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    cfg = make_config(model={"name_or_path": str(broken), "tokenizer": str(tiny_model_dir)})
    with pytest.raises(TrainingDiverged, match=r"training diverged: loss is nan at step 1; .*learning_rate"):
        train(cfg)
    assert not checkpoints(Path(cfg.output_dir))
