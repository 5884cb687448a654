"""`tac2sol torchrun`: real torchrun (torch.distributed.run, on CPU) starting tiny Python ranks; the
launcher's exit code is what stopped the ranks (143, 137: the pod is re-created and resumes) where
torchrun itself says 1 (the job fails for good under the ExitCode restart policy)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.dist

TAC2SOL = Path(sys.executable).with_name("tac2sol")

# Each rank: rank 1 (or the only rank) does what the test asks; the others wait to be stopped.
RANK = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the trainer: checkpoint, then exit 143
open(os.path.join(sys.argv[1], f"rank{rank}.started"), "w").close()
if rank == int(os.environ["WORLD_SIZE"]) - 1:
    exec(sys.argv[2])
time.sleep(120)
"""


def _torchrun(tmp: Path, ranks: int, action: str) -> subprocess.Popen[str]:
    command = [str(TAC2SOL), "torchrun", f"--nproc-per-node={ranks}", "--monitor-interval=0.1"]
    command += ["--no-python", sys.executable, "-c", RANK, str(tmp), action]
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _exit(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        pytest.param("sys.exit(143)", 143, id="a rank checkpointed and stopped on SIGTERM: 143"),
        pytest.param("os.kill(os.getpid(), signal.SIGKILL)", 137, id="a rank killed (OOM): 137"),
        pytest.param("sys.exit(2)", 2, id="a rank's own verdict stays permanent: 2"),
        pytest.param("sys.exit(0)", 0, id="success: 0"),
    ],
)
def test_the_launcher_exits_with_what_stopped_the_first_rank(
    tmp_path: Path, action: str, expected: int
) -> None:
    ranks = 1 if expected == 0 else 2  # two: the first failure decides, the rank torchrun stops does not
    code, out = _exit(_torchrun(tmp_path, ranks, action))
    assert code == expected, out[-3000:]
    if expected:
        assert f"exit code {expected}" in out, out[-3000:]


def test_sigterm_to_the_launcher_exits_143(tmp_path: Path) -> None:
    """`kubectl delete pod`: the kubelet's SIGTERM reaches torchrun, which forwards it to the ranks
    and waits for them; the launcher then says 143, where torchrun says 1."""
    proc = _torchrun(tmp_path, 2, "pass")
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("rank*.started"))) < 2 and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, _exit(proc)[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    code, out = _exit(proc)
    assert code == 143, out[-3000:]
    assert "SignalException: exit code 143" in out, out[-3000:]


def test_usage_errors_are_torchruns_own() -> None:
    proc = subprocess.run([str(TAC2SOL), "torchrun"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "required: training_script" in proc.stderr, proc.stderr
