"""A real pretrained model learns to decompile, on a laptop: ``runs/smollm2-cpu.yaml`` on real rows.

Runs exactly what a user runs, ``tac2sol run runs/smollm2-cpu.yaml --dataset FILE``, in its own
process (wall time from start to exit, the GGUF conversion included unless it is cached), then
reads the run's own records: ``run.json`` (train time, tokens/s, timings) and
``eval-vs-base/compare.json`` (the adapter against the same model without it on the same held-out
rows: means, paired difference, 95 % bootstrap interval, decision). The machine's load average
is printed before and after: on a shared machine the times say as much about it as about tac2sol.

Not part of `make test` (about 15-30 min on 2 cores). Real data only: the 500 shared rows by default
(../shared/datasets/tac2sol-500.jsonl, CI has them beside the checkout), or --dataset FILE.

    .venv/bin/python bench/smollm2_cpu.py [--dataset FILE] [--output DIR] [--max-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runs" / "smollm2-cpu.yaml"
SHARED_ROWS = REPO.parent / "shared" / "datasets" / "tac2sol-500.jsonl"
SAID = ("similarity", "editDistance", "signatureMatch", "syntaxValid", "exactMatch")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def _num(value: Any, digits: int = 3) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def report(out: Path, wall_s: float) -> list[str]:
    run = json.loads((out / "run.json").read_text())
    results, timings = run["results"], run["timings"]
    split = run["data"]["split"]["counts"]
    pf = run["data"]["preflight"]
    lines = [
        f"rows: {pf['rows']} read, {pf['kept']} fit {pf['maxSeqLength']} tokens "
        f"(fit ratio {pf['fitRatio']}); {split['train']} train / {split['eval']} held out",
        f"wall time: {wall_s:.0f} s (process start to exit); train {timings.get('train_s', 0):.0f} s, "
        f"evaluation {timings.get('eval_s', 0):.0f} s, model load {timings.get('model_load_s', 0):.0f} s",
        f"training: {results['globalStep']} steps, {results['trainTokensThisProcess']} real tokens, "
        f"{_num(results['tokensPerSecondThisProcess'], 1)} tokens/s, "
        f"train loss {_num(results['trainLoss'])}, eval loss {_num(results['evalLoss'])}",
    ]
    compare = json.loads((out / "eval-vs-base" / "compare.json").read_text())
    cand = compare["candidates"][0]
    lines.append(
        f"held-out, {compare['rows']} paired rows: adapter vs base model (difference adapter - base, "
        f"{compare['confidence']:.0%} bootstrap interval)"
    )
    width = max(len(cand["metrics"][m]["label"]) for m in SAID)
    for m in SAID:
        p = cand["metrics"][m]
        if not p["n"]:
            lines.append(f"  {p['label']:<{width}}  not measured")
            continue
        lines.append(
            f"  {p['label']:<{width}}  adapter {p['mean_b']:.3f}  base {p['mean_a']:.3f}  "
            f"diff {p['diff']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]  "
            f"W/T/L {p['wins']}/{p['ties']}/{p['losses']}  {p['decision']}"
        )
    lines.append(f"decision ({compare['primaryMetric']}): {cand['decision']}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=SHARED_ROWS)
    parser.add_argument("--output", type=Path, default=REPO / "out" / "bench-smollm2-cpu")
    parser.add_argument("--max-steps", type=int, default=None, help="Override the run's maxSteps.")
    args = parser.parse_args()
    if not args.dataset.is_file():
        print(f"--dataset: {args.dataset} does not exist; give a TAC -> Solidity JSONL file", file=sys.stderr)
        return 2
    tac2sol = Path(sys.executable).with_name("tac2sol")
    cmd = [str(tac2sol), "run", str(RUN), "--dataset", str(args.dataset), "--output", str(args.output)]
    if args.max_steps is not None:
        cmd += ["--max-steps", str(args.max_steps)]
    print(f"before: {_load()}", flush=True)
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - started
    print(f"after: {_load()}", flush=True)
    if done.returncode != 0:
        print(f"the run failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    print("\n== smollm2-cpu")
    print("\n".join(report(args.output, wall)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
