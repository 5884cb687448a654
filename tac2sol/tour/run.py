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

import typer

from tac2sol.errors import PlanDoesNotFit
from tac2sol.tour import sample, tiny
from tac2sol.trainer.train import RUN_JSON


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
    from tac2sol.operator.trainconfig import to_train_config
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

    data_path = Path(dataset) if dataset is not None else Path(run.spec.dataset.path or "")
    if dataset is None and _same(data_path, sample.DEFAULT_PATH):
        sample.write_sample(sample.DEFAULT_PATH)
        echo(
            f"data: {sample.DEFAULT_PATH} is SYNTHETIC sample data made by tac2sol.tour.sample "
            "(not real contracts; metadata.synthetic = true). Use --dataset FILE for real data."
        )

    overrides: dict[str, object] = {"data": {"path": str(data_path), "uri": None}}
    if dataset is None and run.spec.dataset.uri is not None:  # train downloads it
        overrides = {}
    if output is not None:
        overrides["output_dir"] = str(output)
    if metrics_port is not None:
        overrides["metrics"] = {"port": metrics_port}
    # One intra-op thread: measured several times faster for this tiny model on 2 cores than
    # torch's default of one per core (tiny kernels, threads spinning against each other).
    training: dict[str, int] = {"cpu_threads": 1}
    if max_steps is not None:
        training["max_steps"] = max_steps
    overrides["training"] = training
    cfg = to_train_config(resolved, plan, **overrides)

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
