"""GPU check of the trainer's memory metrics (run on a machine with a CUDA GPU).

1. Allocates 1, 2 and 4 GiB with torch and, after each, compares what the trainer exports
   (``tac2sol_gpu_memory_*`` from ``tac2sol.trainer.gpu_probe.GpuProbe``, i.e. torch + NVML) with
   ``nvidia-smi``: device used and total within 5 %, torch's reserved growth against the growth
   nvidia-smi reports for this process within 5 %, the step peak at least the largest tensor.
2. With ``--train-config FILE`` (a trainer config whose ``distributed.per_gpu_memory_bytes`` holds
   the planner's estimate), runs ``tac2sol train`` on it, scrapes its /metrics every 0.5 s and
   reports the highest ``tac2sol_gpu_memory_peak_bytes`` (and nvidia-smi's highest used) against
   the planner's estimate.

    .venv/bin/python bench/gpu/memory_check.py [--train-config run.yaml] [--port 9400]

Exit status 1 if a comparison is outside its tolerance, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TOLERANCE = 0.05
GIB = 1024**3


def smi(query: str, *, apps: bool = False) -> list[list[str]]:
    flag = "--query-compute-apps" if apps else "--query-gpu"
    out = subprocess.run(
        ["nvidia-smi", f"{flag}={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [[field.strip() for field in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def smi_device(uuid: str) -> tuple[float, float]:
    """(used, total) bytes of the device with this UUID, as nvidia-smi reports them (MiB)."""
    for row_uuid, used, total in smi("uuid,memory.used,memory.total"):
        if row_uuid == uuid:
            return float(used) * 2**20, float(total) * 2**20
    raise SystemExit(f"nvidia-smi does not list {uuid}")


def smi_process(pid: int) -> float:
    for row_pid, used in smi("pid,used_memory", apps=True):
        if int(row_pid) == pid:
            return float(used) * 2**20
    return 0.0


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(abs(a), abs(b), 1.0)


def exported(probe: object) -> dict[str, float]:
    return {m.name: m.samples[0].value for m in probe.collect()}  # type: ignore[attr-defined]


def check_allocations() -> bool:
    import torch

    from tac2sol.observability import names as n
    from tac2sol.trainer.gpu_probe import GpuProbe, cuda_uuid

    index = torch.cuda.current_device()
    torch.cuda.init()
    torch.empty(1, device=f"cuda:{index}")  # the CUDA context exists before the baseline
    uuid = cuda_uuid(index)
    if uuid is None:
        raise SystemExit(f"cannot read the UUID of cuda:{index}")
    probe = GpuProbe(("memory-check", "0", f"cuda:{index}"), index, None)
    ok = True
    base_reserved = torch.cuda.memory_reserved(index)
    base_process = smi_process(os.getpid())
    held = []
    print(f"{'alloc':>6} {'metric':<34} {'exported':>12} {'nvidia-smi':>12}  ok")
    for gib in (1, 2, 4):
        held.append(torch.empty(gib * GIB, dtype=torch.uint8, device=f"cuda:{index}"))
        torch.cuda.synchronize(index)
        probe.step_end()
        values = exported(probe)
        used, total = smi_device(uuid)
        rows = [
            (n.GPU_MEMORY_USED, values.get(n.GPU_MEMORY_USED), used),
            (n.GPU_MEMORY_TOTAL, values.get(n.GPU_MEMORY_TOTAL), total),
            (
                "torch reserved growth vs process",
                values[n.GPU_MEMORY_RESERVED] - base_reserved,
                smi_process(os.getpid()) - base_process,
            ),
        ]
        for name, mine, theirs in rows:
            good = mine is not None and close(mine, theirs)
            ok &= good
            shown = "absent" if mine is None else f"{mine / GIB:10.3f} G"
            print(f"{sum((1, 2, 4)[: len(held)]):>4} G {name:<34} {shown:>12} {theirs / GIB:10.3f} G  {good}")
        peak_ok = values[n.GPU_MEMORY_PEAK] >= gib * GIB
        ok &= peak_ok
        peak = values[n.GPU_MEMORY_PEAK] / GIB
        print(f"{'':>6} {n.GPU_MEMORY_PEAK:<34} {peak:10.3f} G {'>= ' + str(gib):>12} G  {peak_ok}")
    for name in (n.GPU_UTILIZATION, n.GPU_TEMPERATURE, n.GPU_POWER):
        print(f"{'':>6} {name:<34} {values.get(name, 'absent (NVML does not report it)')}")
    return ok


def check_training(config: Path, port: int) -> bool:
    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    from tac2sol.observability import names as n

    estimate = (yaml.safe_load(config.read_text()).get("distributed") or {}).get("per_gpu_memory_bytes")
    tac2sol = Path(sys.executable).with_name("tac2sol")
    proc = subprocess.Popen(
        [str(tac2sol), "train", "--config", str(config), "--metrics-port", str(port)],
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    peak = 0.0
    smi_peak = 0.0
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == n.GPU_MEMORY_PEAK:
                    peak = max(peak, s.value)
        smi_peak = max(smi_peak, max(float(u) * 2**20 for (u,) in smi("memory.used")))
    print(f"training exited with {proc.returncode}")
    print(f"highest step peak (torch, exported): {peak / GIB:.2f} GiB")
    print(f"highest device memory used (nvidia-smi): {smi_peak / GIB:.2f} GiB")
    if not estimate:
        print("no distributed.per_gpu_memory_bytes in the config: no planner estimate to compare with")
        return proc.returncode == 0
    print(f"planner estimate: {estimate / GIB:.2f} GiB per GPU; peak / estimate = {peak / estimate:.3f}")
    return proc.returncode == 0 and peak > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-config", type=Path, help="also train with this config and compare the peak")
    parser.add_argument("--port", type=int, default=9400, help="metrics port of that training run")
    a = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("memory_check: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        raise SystemExit(2)
    ok = check_allocations()
    if a.train_config:
        ok &= check_training(a.train_config, a.port)
    print("memory check:", "PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
