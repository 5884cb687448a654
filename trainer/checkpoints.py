"""Checkpoint validity and the resume decision.

The Trainer writes ``checkpoint-N/`` (adapter, optimizer, scheduler, RNG states, trainer state
with the global step and epoch, i.e. the data position). After it has finished, and only then,
``ManifestCallback`` writes ``tac2sol-checkpoint.json`` into the directory: every file with its
size and SHA-256, plus step and epoch. A checkpoint is valid when that manifest exists and every
listed file is there with the same size and hash. A process killed mid-save leaves a directory
without a manifest (or with files that no longer match it): resume skips it, with a warning,
and takes the previous valid one.

Resume modes (``TrainConfig.resume``): ``auto`` (latest valid checkpoint, else start fresh),
``never``, ``required`` (latest valid checkpoint, else an error), or a checkpoint path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.data import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "tac2sol-checkpoint.json"
MANIFEST_VERSION = 1
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")
    )


def write_manifest(directory: Path, extra: dict[str, Any]) -> Path:
    """Describe every file of a finished checkpoint; written atomically and last."""
    files = {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(directory)
    }
    manifest = {"version": MANIFEST_VERSION, **extra, "files": files}
    tmp = directory / (MANIFEST + ".tmp")
    with tmp.open("w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(directory / MANIFEST)
    return directory / MANIFEST


def problem(directory: Path, *, check_hashes: bool = True) -> str | None:
    """Why ``directory`` is not a usable checkpoint, or None when it is."""
    path = directory / MANIFEST
    if not directory.is_dir():
        return "not a directory"
    if not path.is_file():
        return f"no {MANIFEST} (the save did not finish)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    if not files:
        return f"{MANIFEST} lists no files"
    for name, meta in files.items():
        f = directory / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["size"]:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {meta['size']} (truncated?)"
        if check_hashes and sha256_file(f) != meta["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupt)"
    return None


def checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` directories under ``output_dir``, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_valid(output_dir: Path) -> Path | None:
    """The newest valid checkpoint; each newer invalid one is skipped with a warning."""
    for step, path in reversed(checkpoints(output_dir)):
        why = problem(path)
        if why is None:
            return path
        log.warning(
            f"checkpoint {path} is not usable ({why}); falling back to the previous one",
            extra={"checkpoint": str(path), "step": step},
        )
    return None


@dataclass(frozen=True)
class ResumeDecision:
    checkpoint: Path | None
    mode: str

    @property
    def step(self) -> int | None:
        if self.checkpoint is None:
            return None
        m = _CHECKPOINT_RE.match(self.checkpoint.name)
        return int(m.group(1)) if m else None


def resolve_resume(mode: str, output_dir: Path) -> ResumeDecision:
    """Decide where training starts, before any training (errors name ``resume``)."""
    if mode == "never":
        return ResumeDecision(None, mode)
    if mode in ("auto", "required"):
        found = latest_valid(output_dir)
        if found is None and mode == "required":
            have = len(checkpoints(output_dir))
            raise InvalidInput(
                f"resume: 'required' but {output_dir} has no valid checkpoint "
                f"({have} checkpoint director{'y' if have == 1 else 'ies'}, none complete); "
                "use resume 'auto' to start fresh"
            )
        return ResumeDecision(found, mode)
    path = Path(mode)
    if not path.exists():
        raise InvalidInput(
            f"resume: checkpoint path {path} does not exist; give a checkpoint-N directory, 'auto', "
            "'required' or 'never'"
        )
    why = problem(path)
    if why is not None:
        raise InvalidInput(f"resume: {path} is not a usable checkpoint: {why}")
    return ResumeDecision(path, "path")


def manifest_callback() -> Any:
    """A ``TrainerCallback`` that seals each checkpoint with its manifest (global rank 0)."""
    from transformers import TrainerCallback

    class ManifestCallback(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if not state.is_world_process_zero:
                return
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not directory.is_dir():
                return
            write_manifest(
                directory,
                {
                    "global_step": state.global_step,
                    "epoch": state.epoch,
                    "max_steps": state.max_steps,
                    "train_batch_size": state.train_batch_size,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps,
                    "world_size": args.world_size,
                },
            )

    return ManifestCallback()


def log_at_save_callback() -> Any:
    """A ``TrainerCallback`` that logs the loss at every step that saves a checkpoint.

    The Trainer drains its running loss into ``log_history`` only at logging steps, and a resumed
    Trainer starts that sum afresh. Logging at each save makes the history a checkpoint carries
    cover every step up to it, which is what ``run_mean_loss`` needs. Put it after every callback
    that may ask for a save.
    """
    from transformers import TrainerCallback

    class LogAtSave(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if control.should_save:
                control.should_log = True

    return LogAtSave()


def run_mean_loss(
    log_history: list[dict[str, Any]], resume_step: int, session_loss: float, global_step: int
) -> float | None:
    """The training loss averaged over every step of the run, resumed sessions included.

    ``session_loss`` is the Trainer's mean over the steps after ``resume_step`` (its
    ``training_loss``); the steps up to ``resume_step`` come from the restored ``log_history``,
    where each ``loss`` is the mean over the steps since the previous logged one. Steps the
    history does not cover (a checkpoint written without ``log_at_save_callback``) are left out.
    """
    total, covered, previous = 0.0, 0, 0
    for entry in log_history:
        step = int(entry.get("step", 0))
        if "loss" in entry and previous < step <= resume_step:
            total += float(entry["loss"]) * (step - previous)
            covered += step - previous
            previous = step
    session_steps = global_step - resume_step
    total += session_loss * session_steps
    covered += session_steps
    return total / covered if covered else None
