"""Step time with the Prometheus metrics callback on vs off, on the same tiny run, side by side.

One process, one tiny Llama (random weights, nothing downloaded) trained on the CPU with the
transformers Trainer. Rounds alternate off/on (so drift and neighbours hit both alike); "on"
serves /metrics and a thread fetches it every second, as Prometheus would. Printed:

* the end-to-end ratio of step times on/off: the median over round pairs of
  median(on) / median(off), wall clock. On a shared 2-core machine this carries several % of
  noise either way: it shows no gross slowdown, it cannot resolve 1 %;
* the direct cost, which can: CPU time of the training thread spent inside the callback and its
  forward hook (``time.thread_time`` around every call, so other processes do not inflate it),
  over the thread's CPU time per step (torch runs on this thread: 1 intra-op thread).

    .venv/bin/python bench/metrics_overhead.py [--rounds 8] [--steps 30]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

GOAL = 0.01  # overhead under 1 %
HOOKED = (
    "on_train_begin",
    "on_step_begin",
    "on_step_end",
    "on_log",
    "on_evaluate",
    "on_save",
    "on_train_end",
    "_count_inputs",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="off/on round pairs")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per round")
    a = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    from tac2sol.trainer import metrics
    from tac2sol.trainer.config import TrainConfig

    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 512, (128,), generator=g) for _ in range(512)]
    data = [{"input_ids": r, "labels": r} for r in rows]

    class StepClock(TrainerCallback):  # in both arms: the step intervals compared
        def __init__(self) -> None:
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.thread_time())

    tmp = Path(tempfile.mkdtemp(prefix="tac2sol-bench-"))
    cfg = TrainConfig(
        run_name="bench",
        output_dir=tmp,
        model={"name_or_path": "tiny-random-llama"},
        data={"path": "random-token-ids"},
        metrics={"host": "127.0.0.1", "port": 0},
    )
    callback = metrics.metrics_callback(cfg)
    assert callback is not None
    inside = _account(callback)
    url = f"http://127.0.0.1:{metrics.metrics_port()}/metrics"

    def run(with_metrics: bool) -> tuple[list[float], list[float]]:
        clock = StepClock()
        args = TrainingArguments(
            output_dir=str(tmp / "out"),
            max_steps=a.steps,
            per_device_train_batch_size=4,
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            callbacks=[clock, callback] if with_metrics else [clock],
        )
        trainer.remove_callback(PrinterCallback)
        stop = threading.Event()
        scraper = threading.Thread(target=_scrape, args=(url, stop), daemon=True)
        if with_metrics:
            scraper.start()
        trainer.train()
        stop.set()
        if with_metrics:
            scraper.join()
        # The first interval follows Trainer set-up: steady-state steps only.
        return _intervals(clock.wall), _intervals(clock.cpu)

    run(False)  # warm-up: allocator, autograd caches
    inside.reset()
    off: list[float] = []
    on: list[float] = []
    on_cpu: list[float] = []
    ratios: list[float] = []
    for i in range(a.rounds):
        off_wall, _ = run(False)
        on_wall, on_round_cpu = run(True)
        off += off_wall
        on += on_wall
        on_cpu += on_round_cpu
        ratios.append(statistics.median(on_wall) / statistics.median(off_wall))
        print(f"round {i + 1}/{a.rounds}: on/off {ratios[-1]:.3f}", flush=True)
    metrics.stop_server()

    ratio = statistics.median(ratios)
    inside_us = inside.cpu_seconds / inside.steps * 1e6
    step_cpu_us = statistics.median(on_cpu) * 1e6
    direct = inside_us / step_cpu_us
    print()
    print("metrics overhead: tiny Llama (2 layers, hidden 128, seq 128, batch 4), CPU, 1 torch thread,")
    print(f"  {a.rounds} off/on round pairs x {a.steps} steps, /metrics scraped every 1 s while on")
    print(
        f"  step time (wall, median): off {statistics.median(off) * 1e3:.1f} ms, "
        f"on {statistics.median(on) * 1e3:.1f} ms"
    )
    print(
        f"  end-to-end ratio on/off: {ratio:.3f} (median of {len(ratios)} pairs, range "
        f"{min(ratios):.3f}-{max(ratios):.3f}; wall clock, machine noise included)"
    )
    print(
        f"  direct cost: {inside_us:.1f} us CPU in callback + hook per step / {step_cpu_us / 1e3:.1f} ms CPU "
        f"per step = {direct * 100:.3f} % (ratio {1 + direct:.5f})"
    )
    print(f"  goal: overhead < {GOAL:.0%}: {'met' if direct < GOAL else 'NOT met'} (direct cost)")


def _intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps[1:])]


def _scrape(url: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()


class _Account:
    def __init__(self) -> None:
        self.cpu_seconds = 0.0
        self.steps = 0

    def reset(self) -> None:
        self.cpu_seconds = 0.0
        self.steps = 0


def _account(callback: Any) -> _Account:
    """Wrap the callback's event methods and forward hook with thread-CPU-time accounting."""
    account = _Account()
    for name in HOOKED:
        original = getattr(callback, name)

        @functools.wraps(original)
        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                account.cpu_seconds += time.thread_time() - start
                if _name == "on_step_end":
                    account.steps += 1

        setattr(callback, name, timed)
    return account


if __name__ == "__main__":
    main()
