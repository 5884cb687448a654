"""The local tour (``tac2sol run runs/tiny-local.yaml``), shortened with --max-steps, in a scratch
directory: it builds or reuses the tiny model, writes the synthetic sample, trains, serves
/metrics while it runs, evaluates, and says where everything is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tac2sol.devtools import free_port

pytestmark = pytest.mark.slow

TAC2SOL = Path(sys.executable).parent / "tac2sol"


def test_tour_runs_end_to_end_and_serves_metrics(repo_root: Path, tmp_path: Path) -> None:
    shutil.copy(repo_root / "runs" / "tiny-local.yaml", tmp_path / "tiny-local.yaml")
    port = free_port()
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [str(TAC2SOL), "run", "tiny-local.yaml", "--output", "tour-out", "--max-steps", "8",
         "--metrics-port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    scraped = ""
    deadline = time.monotonic() + 1500
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
            if "tac2sol_train_steps_total{" in text:
                scraped = text
        except OSError:
            pass
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-4000:]
    assert 'run="tiny-local"' in scraped and "tac2sol_train_loss" in scraped

    out = tmp_path / "tour-out"
    assert "SYNTHETIC sample data" in stdout
    assert f"adapter:     {Path('tour-out') / 'adapter'}" in stdout
    assert "| all | " in stdout  # the evaluation table is printed
    assert "tour took" in stdout
    assert (tmp_path / ".cache" / "tiny-model" / "tiny-spec.json").is_file()
    rows = (tmp_path / ".cache" / "sample" / "tac2sol-sample.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["metadata"]["synthetic"] is True for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["results"]["globalStep"] == 8 and run["config"]["run_name"] == "tiny-local"
    assert json.loads((out / "eval" / "eval.json").read_text())["overall"]["samples"] == 20


def test_every_earlier_tour_is_kept(tmp_path: Path) -> None:
    from tac2sol.tour.run import keep_aside

    out = tmp_path / "tour-out"
    kept = []
    for run in range(3):  # three finished tours into the same output: none is deleted
        out.mkdir()
        (out / "run.json").write_text(json.dumps({"run": run}))
        kept.append(keep_aside(out))
        assert not out.exists()
    assert [p.name for p in kept] == ["tour-out.previous", "tour-out.previous-2", "tour-out.previous-3"]
    assert [json.loads((p / "run.json").read_text())["run"] for p in kept] == [0, 1, 2]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-steps", "0"], "--max-steps (training.max_steps): Value error, must be at least 1"),
        (
            ["--max-steps", "-5"],
            "--max-steps (training.max_steps): Input should be greater than or equal to -1",
        ),
        (
            ["--metrics-port", "70000"],
            "--metrics-port (metrics.port): Input should be less than or equal to 65535",
        ),
    ],
    ids=["max-steps-0", "max-steps-negative", "metrics-port-too-big"],
)
def test_a_bad_flag_value_exits_2_before_anything_is_built(
    repo_root: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [str(TAC2SOL), "run", str(repo_root / "runs" / "tiny-local.yaml"), *flags],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {message}") and len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no tiny model, no sample, no output
