"""SIGTERM handling outside the training loop (the loop itself: tests/trainer/test_resume.py)."""

from __future__ import annotations

import os
import signal

import pytest

from tac2sol.trainer.preemption import GracefulStop, Terminated


def test_sigterm_outside_the_loop_ends_the_run_with_143_and_a_message() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = GracefulStop(grace_seconds=5)
    stop.install()
    try:
        with pytest.raises(Terminated, match="outside the training loop") as caught:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
        assert caught.value.exit_code == 143
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back
    stop.raise_if_stopped()  # the loop never stopped: nothing to report
