"""The trainer's metrics in one process: a real tiny Trainer run with the callback, and the
rules that keep numbers honest (nothing exported before it is measured, no GPU series on a CPU)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tac2sol.errors import InvalidInput
from tac2sol.observability import names as n
from tac2sol.trainer import gpu_probe, metrics
from tac2sol.trainer.config import TrainConfig


def _config(tmp_path: Path, **metrics_section: object) -> TrainConfig:
    return TrainConfig(
        run_name="unit",
        output_dir=tmp_path,
        model={"name_or_path": "tiny-random-llama"},
        data={"path": "random-token-ids"},
        metrics={"host": "127.0.0.1", **metrics_section},
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float | None:
    for (sample, lbls), value in _samples(text).items():
        if sample == name and all((k, v) in lbls for k, v in labels.items()):
            return value
    return None


@pytest.fixture
def no_server() -> Iterator[None]:
    metrics.stop_server()
    yield
    metrics.stop_server()


def test_nothing_is_exported_before_it_is_measured() -> None:
    m = metrics.TrainerMetrics("r", 0, "cpu")
    text = generate_latest(m.registry).decode()
    assert _value(text, n.TRAIN_STEPS, run="r", rank="0", device="cpu") == 0  # 0 steps is a fact
    for gauge in (n.TRAIN_LOSS, n.TRAIN_LEARNING_RATE, n.TRAIN_ETA, n.TRAIN_TOKENS_PER_SECOND, n.EVAL_LOSS):
        assert _value(text, gauge) is None, f"{gauge} exported before any value was measured"
    m.loss.set(1.25)
    assert _value(generate_latest(m.registry).decode(), n.TRAIN_LOSS, rank="0") == 1.25


def test_record_eval_exports_numbers_and_leaves_out_text() -> None:
    m = metrics.TrainerMetrics("r", 1, "cpu")
    keys = m.record_eval({"exact_match": 0.25, "ok": True, "codebleu": {"syntax": 0.5}, "model": "tiny"})
    assert keys == ["exact_match", "ok", "codebleu.syntax"]
    text = generate_latest(m.registry).decode()
    assert _value(text, n.EVAL_RESULT, metric="codebleu.syntax", rank="1") == 0.5
    assert _value(text, n.EVAL_RESULT, metric="ok") == 1.0
    assert _value(text, n.EVAL_RESULT, metric="model") is None


def test_disabled_metrics_give_no_callback(tmp_path: Path, no_server: None) -> None:
    assert metrics.metrics_callback(_config(tmp_path, enabled=False)) is None
    assert metrics.record_eval({"loss": 1.0}) == []


def test_metrics_listen_on_loopback_unless_told_otherwise(tmp_path: Path, no_server: None) -> None:
    cfg = TrainConfig(
        output_dir=tmp_path,
        model={"name_or_path": "tiny-random-llama"},
        data={"path": "random-token-ids"},
        metrics={"port": 0},
    )
    assert metrics.metrics_callback(cfg) is not None
    assert metrics._ACTIVE is not None and metrics._ACTIVE.server.server_address[0] == "127.0.0.1"
    metrics.stop_server()
    wide = cfg.model_copy(update={"metrics": cfg.metrics.model_copy(update={"host": "0.0.0.0"})})
    assert metrics.metrics_callback(wide) is not None  # what a pod's rendered config says
    assert metrics._ACTIVE is not None and metrics._ACTIVE.server.server_address[0] == "0.0.0.0"


def test_busy_port_is_one_clear_error(tmp_path: Path, no_server: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidInput, match=r"metrics\.port: cannot serve metrics on 127\.0\.0\.1:\d+"):
            metrics.metrics_callback(_config(tmp_path, port=port))


def test_callback_feeds_metrics_from_a_real_trainer(tmp_path: Path, no_server: None) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    callback = metrics.metrics_callback(_config(tmp_path, port=0))
    assert callback is not None and metrics.metrics_port()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
        )
    )
    rows = [torch.randint(0, 64, (16,)) for _ in range(24)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": r, "labels": r} for r in rows],
        callbacks=[callback],
    ).train()

    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.metrics_port()}/metrics") as resp:
        text = resp.read().decode()
    labels = {"run": "unit", "rank": "0", "device": "cpu"}
    assert _value(text, n.TRAIN_STEPS, **labels) == 6
    assert _value(text, n.TRAIN_SAMPLES, **labels) == 6 * 2 * 2
    assert _value(text, n.TRAIN_TOKENS, **labels) == 6 * 2 * 2 * 16
    assert _value(text, f"{n.TRAIN_STEP_DURATION}_count", **labels) == 6
    assert _value(text, n.TRAIN_PROGRESS, **labels) == 1.0
    assert _value(text, n.TRAIN_IN_PROGRESS, **labels) == 0.0
    assert _value(text, n.TRAIN_EPOCH, **labels) is not None
    assert 0 < (_value(text, n.TRAIN_LEARNING_RATE, **labels) or 0) <= 5e-5
    assert (_value(text, n.TRAIN_TOKENS_PER_SECOND, **labels) or 0) > 0
    assert _value(text, n.TRAIN_LOSS, **labels) is not None
    assert _value(text, n.BUILD_INFO, component="trainer") == 1
    assert not [name for name, _ in _samples(text) if name.startswith("tac2sol_gpu_") or name == n.TRAIN_MFU]
    # The forward pre-hook is gone after training: later forwards are not counted.
    model.train()
    model(input_ids=rows[0].unsqueeze(0))
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.metrics_port()}/metrics") as resp:
        assert _value(resp.read().decode(), n.TRAIN_TOKENS, **labels) == 6 * 2 * 2 * 16


def test_count_parameters_matches_the_model() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    )
    assert gpu_probe.count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_no_gpu_probe_on_cpu() -> None:
    assert gpu_probe.gpu_probe(("r", "0", "cpu"), "cpu", 1e12) is None
