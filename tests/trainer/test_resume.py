"""Kill a training process (SIGKILL) mid-run, damage its newest checkpoint, resume ``auto``:
training continues from the last intact checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.trainer.checkpoints import MANIFEST, checkpoints, problem

pytestmark = pytest.mark.slow

TAC2SOL = Path(sys.executable).parent / "tac2sol"
STEPS = 16


def _config_file(tmp_path: Path, make_config: Any, name: str) -> Path:
    cfg = make_config(
        output_dir=str(tmp_path / name),
        training={"max_steps": STEPS, "save_steps": 4, "logging_steps": 2, "save_total_limit": 5},
        lora={"dropout": 0.1},  # dropout draws random numbers: the RNG state must be restored too
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _adapter(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def test_sigkill_then_resume_auto_matches_an_uninterrupted_run(tmp_path: Path, make_config: Any) -> None:
    import torch

    interrupted = _config_file(tmp_path, make_config, "interrupted")
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [str(TAC2SOL), "train", "--config", str(interrupted)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    try:
        while not (out / "checkpoint-8" / MANIFEST).exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no second checkpoint within 10 minutes"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    sealed = [step for step, path in checkpoints(out) if problem(path) is None]
    assert 8 in sealed and STEPS not in sealed, sealed  # killed mid-run
    newest = max(sealed)
    (out / f"checkpoint-{newest}" / "optimizer.pt").write_bytes(b"truncated")  # damage the newest
    fallback = max(s for s in sealed if s < newest)

    resumed = subprocess.run(
        [str(TAC2SOL), "train", "--config", str(interrupted), "--resume", "auto"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{newest} is not usable" in resumed.stderr and "falling back" in resumed.stderr
    assert f"resume: from {out / f'checkpoint-{fallback}'} (step {fallback}" in resumed.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["resumedFrom"] == str(out / f"checkpoint-{fallback}")
    assert run["results"]["globalStep"] == STEPS
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    logged = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged[-1] == STEPS
    assert any(p.name.startswith(f"invalid-checkpoint-{newest}") for p in out.iterdir())  # moved aside

    reference = subprocess.run(
        [str(TAC2SOL), "train", "--config", str(_config_file(tmp_path, make_config, "reference"))],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    a, b = _adapter(out), _adapter(tmp_path / "reference")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert any(not torch.equal(t, torch.zeros_like(t)) for t in a.values())  # it did learn something
    # The loss summary covers the whole run, the steps before the resume included.
    whole = json.loads((tmp_path / "reference" / "run.json").read_text())["results"]["trainLoss"]
    assert run["results"]["trainLoss"] == pytest.approx(whole, rel=1e-4)


def test_sigterm_saves_a_checkpoint_and_the_resume_loses_no_step(tmp_path: Path, make_config: Any) -> None:
    """SIGTERM (preemption, eviction, drain, pod deletion) mid-run: the step in flight ends, a
    checkpoint is saved there, the process says so and exits 143; resuming ends exactly where an
    uninterrupted run ends, loss summary included. Evaluation runs between training steps, and a
    normal run prints no bitsandbytes warning."""
    import torch

    steps = 40
    training = {"max_steps": steps, "save_steps": 25, "logging_steps": 3, "eval_steps": 5}
    cfgs = {}
    for name in ("stopped", "reference"):
        cfg = make_config(output_dir=str(tmp_path / name), training=training)
        cfgs[name] = tmp_path / f"{name}.yaml"
        cfgs[name].write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [str(TAC2SOL), "train", "--config", str(cfgs["stopped"])],
        env={**_env(), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the Trainer prints each log; the first is step 1's
            if "'loss'" in line:
                proc.send_signal(signal.SIGTERM)
                break
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    sealed = [step for step, path in checkpoints(out) if problem(path) is None]
    assert len(sealed) == 1 and 0 < sealed[0] < steps, sealed
    stopped_at = sealed[0]
    assert "error: stopped by SIGTERM" in stderr and f"at step {stopped_at}: checkpoint" in stderr
    assert not (out / "adapter").exists() and not (out / "run.json").exists()

    runs = {}
    for name, extra in (("stopped", ["--resume", "required"]), ("reference", [])):
        done = subprocess.run(
            [str(TAC2SOL), "train", "--config", str(cfgs[name]), *extra],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        for noise in ("gemv_4bit", "silently incorrect", "pip install kernels"):
            assert noise not in done.stderr, done.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())
    assert runs["stopped"]["resumedFrom"] == str(out / f"checkpoint-{stopped_at}")
    assert runs["stopped"]["results"]["globalStep"] == steps
    a, b = _adapter(out), _adapter(tmp_path / "reference")
    for key in b:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert runs["stopped"]["results"]["trainLoss"] == pytest.approx(
        runs["reference"]["results"]["trainLoss"], rel=1e-4
    )
