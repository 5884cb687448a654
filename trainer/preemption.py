"""SIGTERM (preemption, eviction, a node drain, ``kubectl delete pod``): checkpoint, then exit.

Kubernetes sends SIGTERM and, ``terminationGracePeriodSeconds`` later, SIGKILL. Python's default
for SIGTERM ends the process at once (exit 143) and loses every step since the last periodic
checkpoint. ``GracefulStop`` instead:

* during the training loop, lets the current optimizer step finish, then makes the Trainer save
  a checkpoint and stop (every rank agrees on the step, so no rank waits on a collective the
  others never join); ``train`` then raises ``Terminated`` naming the checkpoint;
* outside the loop (data, model loading, evaluation), raises ``Terminated`` at once: there is
  no training state to save there (after the loop the last checkpoint is already written);
* when the checkpoint is not sealed within ``training.termination_grace_seconds`` of the
  signal, says so and exits 143 itself, before the kubelet's SIGKILL cuts the message off.

The operator renders the pod's ``terminationGracePeriodSeconds`` above the config's grace.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tac2sol.errors import Tac2solError

log = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Terminated(Tac2solError):
    """The process got SIGTERM. Exit 143, as if the signal had ended it (restartable)."""

    exit_code = EXIT_CODE


class GracefulStop:
    """Owns the SIGTERM handler while ``train`` runs; ``callback()`` feeds the Trainer."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.world_size = 1
        self.received_at: float | None = None
        self.stopped_step: int | None = None
        self.checkpoint: Path | None = None
        self._in_loop = False
        self._previous: Any = None
        self._watchdog: threading.Timer | None = None
        self._group: Any = None

    # -- the signal ---------------------------------------------------------------------------
    def install(self) -> None:
        """Take over SIGTERM (main thread only; elsewhere the default stays)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def restore(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.received_at is not None:
            return  # a second SIGTERM (torchrun forwards, the kubelet repeats): already stopping
        self.received_at = time.monotonic()
        if not self._in_loop:
            raise Terminated(
                "stopped by SIGTERM outside the training loop (before it, or after its last checkpoint): "
                "nothing new to checkpoint; run `tac2sol train` again to continue"
            )
        log.warning(
            "SIGTERM: finishing this optimizer step, then saving a checkpoint "
            "(training.termination_grace_seconds=%g)",
            self.grace_seconds,
        )
        self._watchdog = threading.Timer(self.grace_seconds, self._grace_expired)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _grace_expired(self) -> None:
        print(
            f"error: stopped by SIGTERM: no checkpoint was saved within training.termination_grace_seconds="
            f"{self.grace_seconds:g}; the last periodic checkpoint is where a resume starts; raise the "
            "grace (and the pod's terminationGracePeriodSeconds) above one step plus one save",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_CODE)

    # -- agreement across ranks ---------------------------------------------------------------
    def _agreed(self) -> bool:
        """Whether any rank got SIGTERM (one scalar all-reduce over gloo per optimizer step)."""
        requested = self.received_at is not None
        if self.world_size <= 1:
            return requested
        import torch
        import torch.distributed as dist

        if self._group is None:  # CPU side channel: no device sync under NCCL
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
        flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    # -- the Trainer side ---------------------------------------------------------------------
    def callback(self, world_size: int) -> Any:
        """A ``TrainerCallback``: stop and save at the first step end after SIGTERM (all
        ``world_size`` ranks at the same step). Put it after the checkpoint manifest callback, so
        ``on_save`` sees the sealed checkpoint."""
        from transformers import TrainerCallback

        self.world_size = world_size
        stop = self

        class StopOnSigterm(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                stop._in_loop = True
                if stop.world_size > 1:
                    stop._agreed()  # create the side channel on every rank at the same point

            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                if stop.stopped_step is None and stop._agreed():
                    stop.stopped_step = int(state.global_step)
                    control.should_save = True
                    control.should_training_stop = True

            def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                if stop.stopped_step is not None and state.global_step == stop.stopped_step:
                    stop.checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    if stop._watchdog is not None:
                        stop._watchdog.cancel()

            def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
                stop._in_loop = False

        return StopOnSigterm()

    def raise_if_stopped(self) -> None:
        """After ``trainer.train()``: the message and exit 143 when SIGTERM ended the loop."""
        if self.stopped_step is None:
            return
        signal_to = "SIGTERM" if self.received_at is not None else "SIGTERM to another rank"
        if self.checkpoint is None:
            raise Terminated(
                f"stopped by {signal_to} at step {self.stopped_step}; no checkpoint was saved there, so a "
                "resume starts from the last periodic checkpoint"
            )
        after = ""
        if self.received_at is not None:
            after = f" {time.monotonic() - self.received_at:.1f} s after the signal"
        raise Terminated(
            f"stopped by {signal_to} at step {self.stopped_step}: checkpoint {self.checkpoint} saved{after}; "
            "`tac2sol train` with resume 'auto' (the default) continues from it"
        )
