"""Checkpoint manifests: a checkpoint counts only when sealed and intact; resume decisions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tac2sol.errors import InvalidInput
from tac2sol.trainer.checkpoints import (
    MANIFEST,
    latest_valid,
    problem,
    resolve_resume,
    run_mean_loss,
    write_manifest,
)


def _checkpoint(root: Path, step: int, sealed: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    (d / "optimizer.pt").write_bytes(b"o" * 100)
    (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if sealed:
        write_manifest(d, {"global_step": step})
    return d


def test_sealed_checkpoint_is_valid_and_damage_is_detected(tmp_path: Path) -> None:
    d = _checkpoint(tmp_path, 5)
    assert problem(d) is None
    with (d / "optimizer.pt").open("r+b") as fh:  # same size, one byte flipped
        fh.write(b"X")
    assert "does not match its SHA-256" in (problem(d) or "")
    (d / "optimizer.pt").write_bytes(b"o" * 10)
    assert "truncated" in (problem(d) or "")
    (d / "optimizer.pt").unlink()
    assert "optimizer.pt is missing" in (problem(d) or "")
    assert "did not finish" in (problem(_checkpoint(tmp_path, 6, sealed=False)) or "")
    (d / MANIFEST).write_text("{")
    assert "unreadable" in (problem(d) or "")


def test_latest_valid_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _checkpoint(tmp_path, 2)
    good = _checkpoint(tmp_path, 10)
    bad = _checkpoint(tmp_path, 12)
    (bad / "adapter_model.safetensors").write_bytes(b"short")
    _checkpoint(tmp_path, 14, sealed=False)
    with caplog.at_level(logging.WARNING):
        assert latest_valid(tmp_path) == good
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "checkpoint-14" in warned[0] and "checkpoint-12" in warned[1]
    assert all("falling back to the previous one" in w for w in warned)


def test_resume_modes(tmp_path: Path) -> None:
    assert resolve_resume("auto", tmp_path).checkpoint is None
    assert resolve_resume("never", tmp_path).checkpoint is None
    with pytest.raises(InvalidInput, match=r"resume: 'required' but .* has no valid checkpoint"):
        resolve_resume("required", tmp_path)
    with pytest.raises(InvalidInput, match=r"resume: checkpoint path .*nope does not exist"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    unsealed = _checkpoint(tmp_path, 3, sealed=False)
    with pytest.raises(InvalidInput, match="is not a usable checkpoint"):
        resolve_resume(str(unsealed), tmp_path)
    sealed = _checkpoint(tmp_path, 4)
    for mode in ("auto", "required", str(sealed)):
        decision = resolve_resume(mode, tmp_path)
        assert decision.checkpoint == sealed and decision.step == 4
    assert resolve_resume("never", tmp_path).checkpoint is None


@pytest.mark.parametrize(
    ("history", "resume_step", "session_loss", "global_step", "expected"),
    [
        pytest.param([], 0, 2.0, 10, 2.0, id="fresh-run"),
        # logged at 1 (first step), 4 and 6 (a save); resumed at 6, then 4 more steps at 1.0
        pytest.param(
            [{"step": 1, "loss": 4.0}, {"step": 4, "loss": 3.0}, {"step": 6, "loss": 2.0}],
            6,
            1.0,
            10,
            (4.0 + 3 * 3.0 + 2 * 2.0 + 4 * 1.0) / 10,
            id="resumed",
        ),
        # eval entries and the history after the resume point do not count twice
        pytest.param(
            [{"step": 2, "loss": 3.0}, {"step": 2, "eval_loss": 9.0}, {"step": 4, "loss": 2.0}],
            2,
            1.0,
            4,
            (2 * 3.0 + 2 * 1.0) / 4,
            id="history-past-resume",
        ),
        # an old checkpoint whose last log precedes it: the unlogged steps 3-4 are left out
        pytest.param([{"step": 2, "loss": 3.0}], 4, 1.0, 6, (2 * 3.0 + 2 * 1.0) / 4, id="gap"),
        pytest.param([{"step": 4, "loss": 3.0}], 4, 0.0, 4, 3.0, id="resumed-at-the-end"),
    ],
)
def test_run_mean_loss_covers_the_steps_before_a_resume(
    history: list[dict[str, float]], resume_step: int, session_loss: float, global_step: int, expected: float
) -> None:
    assert run_mean_loss(history, resume_step, session_loss, global_step) == pytest.approx(expected)
