"""``tac2sol plan --explain`` as a user runs it: every term, its formula, inputs and bytes, by phase,
the peak and the fit rule, and which knob moves which term."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tac2sol.operator.planner import KNOBS, PHASES, TERM_KNOBS

GiB = 1024**3


def test_explain_prints_every_term_with_its_bytes_and_knobs(cli: Callable[..., Any]) -> None:
    plan = json.loads(cli("plan", "runs/qwen32b.yaml", "-o", "json").stdout)
    result = cli("plan", "runs/qwen32b.yaml", "--explain")
    assert result.rc == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 5}
    for term in plan["terms"]:
        row = rows[term["name"]]
        assert f"{term['bytes'] / GiB:.2f}" in row, row
        for knob in TERM_KNOBS[term["name"]][0][:1]:  # the first knob fits the column unwrapped
            assert knob in row or "every knob" in row, row
    for phase in {t["phase"] for t in plan["terms"]}:
        assert phase in rows and PHASES[phase].split()[0] in rows[phase]
    peak = next(line for line in result.stdout.splitlines() if line.startswith("peak allocated ="))
    assert peak.endswith(f"= {plan['peakAllocatedBytes'] / GiB:.1f} GiB (torch.cuda.max_memory_allocated)")
    assert (
        f"= {plan['perGpuMemoryBytes'] / GiB:.1f} GiB = " in result.stdout and "at most 90%" in result.stdout
    )
    knob_lines = [line for line in result.stdout.splitlines() if line.startswith("  - ") and ":" in line]
    assert [line[4:].split(":")[0] for line in knob_lines[-len(KNOBS) :]] == list(KNOBS)
    seq = next(line for line in knob_lines if line.startswith("  - maxSeqLength:"))
    assert "logits" in seq and "attentionMathBackward" in seq and "quantizedWeights" not in seq
    assert "component" not in result.stdout  # the term table replaces the short breakdown


def test_explain_shows_why_a_refused_run_does_not_fit(cli: Callable[..., Any]) -> None:
    result = cli(
        "plan", "runs/qwen2.5-coder-7b.yaml", "--explain", "--gpus-per-node", "1", "--gpu-type", "t4"
    )
    assert result.rc == 1 and "no layout" in result.stderr
    assert "attentionMathBackward" in result.stdout and "peak allocated =" in result.stdout


def test_explain_leaves_the_json_as_it_is(cli: Callable[..., Any]) -> None:
    plain = cli("plan", "runs/qwen32b.yaml", "-o", "json")
    explained = cli("plan", "runs/qwen32b.yaml", "-o", "json", "--explain")
    assert explained.rc == plain.rc == 0 and explained.stdout == plain.stdout
