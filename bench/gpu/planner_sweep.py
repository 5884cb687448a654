"""Measure the memory planner on the GPU at hand: peak allocated memory of real QLoRA/LoRA steps
against the planner's estimate, for a grid of the planner's own runs.

Each point is one process layout the planner knows (``single``, one GPU): a model from the catalog
(or the tour's tiny Llama), NF4 QLoRA or a 16-bit base, gradient checkpointing on or off, a
per-device batch and a sequence length. The model has the catalog's shape and random weights
(nothing is downloaded: the memory of a step does not depend on the values). It is loaded by the
trainer's own code (``tac2sol.trainer.model.load_model``: bitsandbytes NF4, SDPA,
``prepare_model_for_kbit_training``, peft LoRA on all seven projections, r16, dropout 0.1), and
two optimizer steps run under the trainer's precision (autocast; fp16 with a GradScaler) on
``batch x seq`` tokens, every row full length. Measured: ``torch.cuda.max_memory_allocated`` over
those steps, against the planner's ``peakAllocatedBytes`` for the same run on this GPU (the
catalog entry of this architecture with the device's own memory). A point the planner refuses is
not run (``--run-refused`` runs it, to see whether it really goes out of memory).

    bash bench/gpu/run.sh                                   # the default grid, < 10 minutes on an H200
    .venv/bin/python bench/gpu/planner_sweep.py --dry-run   # the grid and the estimates, on CPU
    .venv/bin/python bench/gpu/planner_sweep.py --emulate-turing  # SDPA math kernel + fp16, as on sm_75

``--emulate-turing`` forces what an RTX 8000 runs (the math attention kernel, fp16 autocast) and
gives the planner the rtx8000 entry with this device's memory: the terms the A1.5 sweep measured,
checked on a bigger card. The CPU side (grid, planner calls, report) imports no torch; the CUDA
side is ``measure`` and what it calls, below the line that says so. Exit 2 without a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.operator.catalog import GPUS, MODELS, GpuType, ModelFacts, lora_trainable_params
from tac2sol.operator.planner import HEADROOM, Estimate, Layout, estimate

REPO = Path(__file__).resolve().parents[2]
GIB = 1024**3
LORA_R = 16
LORA_DROPOUT = 0.1
TARGETS = "all-linear"  # the seven projections of these architectures, as in the A1.5 sweep
TINY = "tiny"
DEFAULT_MODELS = (TINY, "qwen2.5-coder-1.5b", "qwen2.5-coder-7b")
DEFAULT_SEQS = (512, 2048, 8192)
DEFAULT_BATCHES = (1, 4)
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Point:
    """One run of the grid."""

    model: str
    quantization: str  # "nf4" or "none"
    checkpointing: bool
    batch: int
    seq: int

    def label(self) -> str:
        ckpt = "ckpt" if self.checkpointing else "no-ckpt"
        return f"{self.model} {self.quantization} {ckpt} b{self.batch} s{self.seq}"


@dataclass(frozen=True)
class Measurement:
    """What one point did on the GPU: ``outcome`` ok, oom, error or skipped (then no bytes)."""

    outcome: str
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    seconds: float | None = None
    note: str = ""


def tiny_facts() -> ModelFacts:
    """The tour's tiny Llama (tac2sol.tour.tiny.TinySpec) as catalog facts."""
    from tac2sol.tour.tiny import TinySpec

    s = TinySpec()
    return ModelFacts(
        family="llama",
        layers=s.num_hidden_layers,
        hidden=s.hidden_size,
        intermediate=s.intermediate_size,
        vocab=s.vocab_size,
        heads=s.num_attention_heads,
        kv_heads=s.num_key_value_heads,
        context=s.max_position_embeddings,
    )


def facts_for(model: str) -> ModelFacts:
    if model == TINY:
        return tiny_facts()
    if model not in MODELS:
        raise SystemExit(
            f"--models: {model!r} is not in the catalog; use {TINY} or one of {', '.join(MODELS)}"
        )
    return MODELS[model]


def grid(
    models: Iterable[str] = DEFAULT_MODELS,
    seqs: Iterable[int] = DEFAULT_SEQS,
    batches: Iterable[int] = DEFAULT_BATCHES,
    quantizations: Iterable[str] = ("nf4", "none"),
    checkpointing: Iterable[bool] = (True, False),
) -> list[Point]:
    """Every combination, grouped so that one loaded model serves consecutive points."""
    return [
        Point(m, q, c, b, s)
        for m in models
        for q in quantizations
        for c in checkpointing
        for s in seqs
        for b in batches
    ]


def planner_gpu(base: str, memory_bytes: int | None = None, name: str | None = None) -> GpuType:
    """The catalog entry the planner gets, with the device's own memory and name when known."""
    update: dict[str, Any] = {}
    if memory_bytes is not None:
        update["memory_bytes"] = memory_bytes
    if name is not None:
        update["name"] = name
    return GPUS[base].model_copy(update=update)


def catalog_key(name: str, major: int, minor: int, memory_bytes: int) -> str:
    """The catalog entry of a CUDA device's architecture (precision and attention kernel follow it)."""
    n = name.lower()
    needles = (("h100", "h100-80"), ("h200", "h100-80"), ("a100", "a100-80"), ("rtx 8000", "rtx8000"),
               ("l40s", "l40s"), ("a10g", "a10g"), ("l4", "l4"), ("t4", "t4"),
               ("v100", "v100-32"))  # fmt: skip
    for needle, key in needles:
        if needle in n:
            return "a100-40" if key == "a100-80" and memory_bytes < 50 * GIB else key
    return (
        "h100-80"
        if major >= 9
        else "a100-80"
        if major >= 8
        else "rtx8000"
        if (major, minor) >= (7, 5)
        else "v100-32"
    )


def plan_point(point: Point, gpu: GpuType) -> Estimate:
    """The planner's estimate for this point, one process on ``gpu``."""
    facts = facts_for(point.model)
    targets = list(facts.default_lora_targets)
    return estimate(
        facts,
        layout=Layout("single"),
        gpu=gpu,
        world=1,
        gpus_per_node=1,
        batch=point.batch,
        seq=point.seq,
        trainable=lora_trainable_params(facts, targets, LORA_R),
        quantized=point.quantization == "nf4",
        checkpointing=point.checkpointing,
        targets=targets,
        lora_dropout=LORA_DROPOUT > 0,
    )


def planner_accepts(est: Estimate, gpu: GpuType) -> bool:
    return est.per_gpu <= HEADROOM * gpu.memory_bytes


def error(est: Estimate, m: Measurement) -> float | None:
    """(estimate - measured) / measured of the peak allocated bytes; None when not measured."""
    if m.peak_allocated is None or m.peak_allocated <= 0:
        return None
    return (est.peak_allocated - m.peak_allocated) / m.peak_allocated


def _gib(n: int | None) -> str:
    return NOT_MEASURED if n is None else f"{n / GIB:.2f}"


def report(rows: Sequence[tuple[Point, Estimate, Measurement]], gpu: GpuType, header: str = "") -> str:
    """The table of estimate vs measured per point, and a summary of the errors."""
    lines = [header] if header else []
    lines.append(
        f"planner given: {gpu.name}, {gpu.memory_bytes / GIB:.0f} GiB, sm_{gpu.compute_capability}; "
        f"LoRA r{LORA_R} all-linear, dropout {LORA_DROPOUT}, one process; "
        "error = (estimate - measured) / measured"
    )
    head = (
        f"{'point':<40} {'kernel':<9} {'plan':<6} {'est. alloc GiB':>15} {'measured GiB':>13} {'error':>12} "
        f"{'est. total GiB':>15} {'reserved GiB':>13}  outcome"
    )
    lines += [head, "-" * len(head)]
    errors: list[float] = []
    for point, est, m in rows:
        e = error(est, m)
        if e is not None:
            errors.append(e)
        verdict = "fits" if planner_accepts(est, gpu) else "no"
        outcome = m.outcome + (f" ({m.note})" if m.note else "")
        lines.append(
            f"{point.label():<40} {est.attention_kernel:<9} {verdict:<6} {_gib(est.peak_allocated):>15} "
            f"{_gib(m.peak_allocated):>13} {(NOT_MEASURED if e is None else f'{100 * e:+.1f}%'):>12} "
            f"{_gib(est.per_gpu):>15} {_gib(m.peak_reserved):>13}  {outcome}"
        )
    if errors:
        within = sum(abs(e) <= 0.15 for e in errors)
        lines.append(
            f"{len(errors)} points measured: median error {100 * statistics.median(errors):+.1f}%, "
            f"worst {100 * max(errors, key=abs):+.1f}%, {within} within +-15%"
        )
    else:
        lines.append(f"no point measured: errors {NOT_MEASURED}")
    wrong = [p.label() for p, est, m in rows if m.outcome == "oom" and planner_accepts(est, gpu)]
    wrong += [p.label() for p, est, m in rows if m.outcome == "ok" and not planner_accepts(est, gpu)]
    if wrong:
        lines.append(f"planner's fit verdict contradicted by the GPU: {', '.join(wrong)}")
    return "\n".join(lines)


def dry_run(points: Sequence[Point], gpu: GpuType) -> str:
    rows = [(p, plan_point(p, gpu), Measurement("skipped", note="dry run")) for p in points]
    return report(rows, gpu, header=f"dry run: {len(points)} points, nothing measured")


# ---- CUDA side: everything below needs torch, transformers, peft and bitsandbytes on a GPU ----------


def hf_config(facts: ModelFacts, max_positions: int) -> Any:
    """A transformers config of the catalog's shape (llama or qwen2 families)."""
    from transformers import LlamaConfig, Qwen2Config

    kind = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(facts.family)
    if kind is None:
        raise SystemExit(f"planner_sweep builds llama and qwen2 shapes only, not {facts.family}")
    return kind(
        vocab_size=facts.vocab,
        hidden_size=facts.hidden,
        intermediate_size=facts.intermediate,
        num_hidden_layers=facts.layers,
        num_attention_heads=facts.heads,
        num_key_value_heads=facts.kv_heads,
        max_position_embeddings=max(max_positions, facts.context),
        tie_word_embeddings=facts.embeddings_tied,
        use_cache=False,
    )


def build_random_model(model: str, directory: Path, max_positions: int, dtype: Any) -> Path:
    """Random weights of the catalog shape, saved once as 16-bit safetensors (the trainer loads it)."""
    if (directory / "config.json").exists():
        return directory
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        net = AutoModelForCausalLM.from_config(hf_config(facts_for(model), max_positions), dtype=dtype)
    tmp = directory.with_name(directory.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    del net
    torch.cuda.empty_cache()
    tmp.replace(directory)
    return directory


def load(point: Point, path: Path, precision: str) -> Any:
    """The model as ``tac2sol train`` loads it for this point (single process on cuda:0)."""
    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.distributed import DistEnv, bnb_config_kwargs, model_load_kwargs
    from tac2sol.trainer.model import load_model

    cfg = TrainConfig.model_validate(
        {
            "model": {"name_or_path": str(path), "target_modules": TARGETS},
            "data": {"path": str(path / "unused.jsonl"), "max_seq_length": point.seq},
            "quantization": point.quantization,
            "lora": {"r": LORA_R, "alpha": 2 * LORA_R, "dropout": LORA_DROPOUT},
            "training": {"gradient_checkpointing": point.checkpointing, "per_device_batch_size": point.batch},
            "distributed": {"precision": precision, "strategy": "single"},
        }
    )
    env = DistEnv(0, 0, 1, 1, 0, True, None, "cuda:0")
    return load_model(cfg, model_load_kwargs(cfg, env), bnb_config_kwargs(cfg, env))


def step_peak(model: Any, point: Point, vocab: int, precision: str, force_math: bool) -> Measurement:
    """Two optimizer steps on ``batch x seq`` random tokens; the allocator's peak over them."""
    import contextlib

    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    ids = torch.randint(0, vocab, (point.batch, point.seq), device="cuda")
    kernel: Any = contextlib.nullcontext()
    if force_math:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(SDPBackend.MATH)
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    try:
        for _ in range(2):  # the second step holds the optimizer state the first one created
            with kernel, torch.autocast("cuda", dtype=dtype):
                loss = model(input_ids=ids, labels=ids).loss
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            del loss
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        return Measurement("oom", note=f"peak before it {torch.cuda.max_memory_allocated() / GIB:.1f} GiB")
    finally:
        del optimizer, ids
    return Measurement(
        "ok",
        peak_allocated=torch.cuda.max_memory_allocated(),
        peak_reserved=torch.cuda.max_memory_reserved(),
        seconds=time.monotonic() - started,
    )


def measure(points: Sequence[Point], gpu: GpuType, precision: str, args: argparse.Namespace) -> list[Any]:
    """Run the grid; one model load per (model, quantization, checkpointing)."""
    import gc

    import torch

    rows: list[tuple[Point, Estimate, Measurement]] = []
    loaded: tuple[str, str, bool] | None = None
    model: Any = None
    deadline = time.monotonic() + args.budget_s
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    for point in points:
        est = plan_point(point, gpu)
        if not planner_accepts(est, gpu) and not args.run_refused:
            rows.append((point, est, Measurement("skipped", note="planner refuses")))
            continue
        if time.monotonic() > deadline:
            rows.append((point, est, Measurement("skipped", note=f"over --budget-s {args.budget_s}")))
            continue
        key = (point.model, point.quantization, point.checkpointing)
        try:
            if key != loaded:
                model = None
                gc.collect()
                torch.cuda.empty_cache()
                path = build_random_model(point.model, args.work / point.model, max(args.seqs), dtype)
                mark = time.monotonic()
                model = load(point, path, precision)
                loaded = key
                took = time.monotonic() - mark
                say(f"planner_sweep: loaded {point.model} {point.quantization} in {took:.0f} s")
            m = step_peak(model, point, facts_for(point.model).vocab, precision, args.emulate_turing)
        except Exception as exc:  # one point's failure is reported; the grid goes on
            m = Measurement("error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            model, loaded = None, None
        gc.collect()
        torch.cuda.empty_cache()
        say(f"  {point.label()}: {m.outcome} {_gib(m.peak_allocated)} GiB, plan {_gib(est.peak_allocated)}")
        rows.append((point, est, m))
    return rows


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = {"type": int, "nargs": "+"}
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help=f"{TINY} or catalog keys")
    parser.add_argument("--seqs", default=list(DEFAULT_SEQS), **ints)  # type: ignore[arg-type]
    parser.add_argument("--batches", default=list(DEFAULT_BATCHES), **ints)  # type: ignore[arg-type]
    parser.add_argument("--quantizations", nargs="+", default=["nf4", "none"], choices=["nf4", "none"])
    parser.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--dry-run", action="store_true", help="print the grid and the estimates; no GPU")
    parser.add_argument("--gpu-type", default="h100-80", help="catalog entry for --dry-run (default h100-80)")
    parser.add_argument(
        "--gpu-memory-gib", type=float, help="device memory for --dry-run (default the entry's)"
    )
    parser.add_argument("--emulate-turing", action="store_true", help="math SDPA kernel + fp16, as on sm_75")
    parser.add_argument("--run-refused", action="store_true", help="also run points the planner refuses")
    parser.add_argument("--budget-s", type=float, default=480, help="skip the points left after this long")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "planner-sweep")
    return parser.parse_args(argv)


def points_of(args: argparse.Namespace) -> list[Point]:
    for m in args.models:
        facts_for(m)
    return grid(
        args.models, args.seqs, args.batches, args.quantizations, [c == "on" for c in args.checkpointing]
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    points = points_of(args)
    if args.dry_run:
        base = "rtx8000" if args.emulate_turing else args.gpu_type
        if base not in GPUS:
            raise SystemExit(f"--gpu-type: {base!r} is not in the catalog; use one of {', '.join(GPUS)}")
        memory = None if args.gpu_memory_gib is None else int(args.gpu_memory_gib * GIB)
        print(dry_run(points, planner_gpu(base, memory)))
        return
    import torch

    if not torch.cuda.is_available():
        say("planner_sweep: no CUDA device here; run it on a GPU machine, or use --dry-run")
        raise SystemExit(2)
    from tac2sol.operator.resolve import precision_for

    props = torch.cuda.get_device_properties(0)
    base = (
        "rtx8000"
        if args.emulate_turing
        else catalog_key(props.name, props.major, props.minor, props.total_memory)
    )
    gpu = planner_gpu(base, props.total_memory, f"{props.name} as {base}")
    precision = precision_for(gpu)
    say(f"planner_sweep: {props.name} (sm_{props.major}{props.minor}) -> planner gets {base}, {precision}")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = measure(points, gpu, precision, args)
    print(report(rows, gpu, header=f"{props.name}: {len(points)} points"))


if __name__ == "__main__":
    main()
