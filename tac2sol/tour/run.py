"""The local tour (``make run`` → ``tac2sol run runs/tiny-local.yaml``).

It loads the TrainingRun and plans it exactly as the operator would (specfile → resolve → planner
→ trainconfig, imported inside the function so ``tac2sol --help`` stays light), then trains here,
in this process.

It builds (or reuses) the tiny model at ``.cache/tiny-model`` and the SYNTHETIC sample at
``.cache/sample/tac2sol-sample.jsonl`` when the run points at them; ``--dataset`` gives real data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from tac2sol.errors import InvalidInput, PlanDoesNotFit
from tac2sol.tour import sample, tiny
from tac2sol.trainer.train import RUN_JSON

# Trainer config fields the tour's flags set: a bad value is reported under the flag's name.
_FLAGS = {
    "training.max_steps": "--max-steps",
    "metrics.port": "--metrics-port",
    "output_dir": "--output",
    "data.path": "--dataset",
}


def _same(a: str | Path, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def keep_aside(out: Path) -> Path:
    """Rename a finished run's output directory to the first free ``<name>.previous[-N]``.

    Every earlier run is kept (never deleted); returns where this one went.
    """
    n = 1
    while (previous := out.with_name(out.name + (".previous" if n == 1 else f".previous-{n}"))).exists():
        n += 1
    out.rename(previous)
    return previous


def _train_config(run_yaml: Path, resolved: Any, plan: Any, overrides: dict[str, Any]) -> Any:
    """The trainer config the operator would render, with the flags' overrides; a bad flag value is
    one clear error naming the flag (checked before the tiny model or the data are built)."""
    from pydantic import ValidationError

    from tac2sol.operator.trainconfig import to_train_config

    try:
        return to_train_config(resolved, plan, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        flag = _FLAGS.get(field)
        where = f"{flag} ({field})" if flag else f"{run_yaml}: {field}"
        raise InvalidInput(f"{where}: {first['msg']}") from None


def run_tour(
    run_yaml: Path,
    *,
    dataset: Path | None = None,
    output: Path | None = None,
    metrics_port: int | None = None,
    max_steps: int | None = None,
) -> None:
    from tac2sol.operator.planner import make_plan
    from tac2sol.operator.resolve import resolve
    from tac2sol.operator.specfile import load_training_run
    from tac2sol.trainer.train import train

    started = time.monotonic()
    echo = typer.echo
    run = load_training_run(run_yaml)
    resolved = resolve(run)
    plan = make_plan(resolved)
    if not plan.fits:
        raise PlanDoesNotFit(
            f"{run_yaml}: no layout fits {plan.world_size} x {plan.gpu_type}: "
            + ("; ".join(plan.ways_out) or "")
        )
    echo(
        f"plan: {plan.strategy}, {plan.precision}, {plan.world_size} x {plan.gpu_type}, batch "
        f"{plan.per_device_batch_size} x accumulation {plan.gradient_accumulation_steps}, "
        f"~{plan.per_gpu_memory_bytes / 2**30:.2f} GiB estimated per device"
    )

    data_path = Path(dataset) if dataset is not None else Path(run.spec.dataset.path or "")
    overrides: dict[str, Any] = {"data": {"path": str(data_path), "uri": None}}
    if dataset is None and run.spec.dataset.uri is not None:  # train downloads it
        overrides = {}
    if output is not None:
        overrides["output_dir"] = str(output)
    if metrics_port is not None:
        overrides["metrics"] = {"port": metrics_port}
    # The tiny model: one intra-op thread, measured several times faster on 2 cores than torch's
    # default of one per core (tiny kernels, threads spinning against each other). A real model
    # (runs/smollm2-cpu.yaml) has kernels big enough to use every core: torch's default.
    training: dict[str, int] = {"cpu_threads": 1} if _same(run.spec.model.name, tiny.DEFAULT_DIR) else {}
    if max_steps is not None:
        training["max_steps"] = max_steps
    overrides["training"] = training
    cfg = _train_config(run_yaml, resolved, plan, overrides)

    model_path = run.spec.model.name
    if _same(model_path, tiny.DEFAULT_DIR):
        spec = tiny.TinySpec()
        if tiny.spec_matches(tiny.DEFAULT_DIR, spec):
            echo(f"model: tiny Llama at {tiny.DEFAULT_DIR} (reused)")
        else:
            cached = tiny.cache_root() / tiny.spec_key(spec)
            if not tiny.spec_matches(cached, spec):
                echo(
                    "model: building the tiny Llama (no download): a BPE tokenizer trained on the "
                    f"synthetic sample, then {spec.pretrain_steps} steps of plain language-model "
                    f"pre-training on synthetic TAC and Solidity of another seed (cached in {cached})"
                )
            tiny.ensure_tiny_model(tiny.DEFAULT_DIR, spec)
            echo(f"model: tiny Llama at {tiny.DEFAULT_DIR}")

    if dataset is None and _same(data_path, sample.DEFAULT_PATH):
        sample.write_sample(sample.DEFAULT_PATH)
        echo(
            f"data: {sample.DEFAULT_PATH} is SYNTHETIC sample data made by tac2sol.tour.sample "
            "(not real contracts; metadata.synthetic = true). Use --dataset FILE for real data."
        )

    # A finished tour would "resume" at its last step and train nothing: keep it aside (every
    # earlier run is kept). An interrupted tour (checkpoints, no run.json) resumes where it stopped.
    out = Path(cfg.output_dir)
    if (out / RUN_JSON).is_file():
        previous = keep_aside(out)
        echo(f"output: kept the finished run in {out} as {previous}; training anew")

    result = train(cfg, say=echo)

    echo("")
    echo(f"adapter:     {result.adapter_dir}")
    if result.eval_dir is not None:
        echo(
            f"evaluation:  {result.eval_dir / 'eval.md'} "
            "(eval.json, predictions.jsonl, similarity_histogram.png beside it)"
        )
        if result.eval_summary:
            echo("")
            echo((result.eval_dir / "eval.md").read_text().strip())
            echo("")
    echo(
        f"data report: {result.output_dir / 'data' / 'preflight.json'} (rejects.jsonl, split.json beside it)"
    )
    echo(f"run:         {result.run_json} (config: {result.output_dir / 'config.yaml'})")
    echo(
        f"train loss {result.train_loss:.3f} (mean over the run), eval loss "
        f"{result.eval_loss if result.eval_loss is None else round(result.eval_loss, 3)}; "
        f"{result.global_step} steps; tour took {time.monotonic() - started:.0f} s"
    )
