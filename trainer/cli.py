"""Trainer commands: ``train``, ``torchrun``, ``data preflight``, ``data sample``, ``evaluate``,
``run`` (the tour).

Heavy libraries are imported inside the commands; ``tac2sol --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tac2sol.errors import InvalidInput

data_app = typer.Typer(help="Look at a dataset before training on it.", no_args_is_help=True)


def _overrides(
    output: Path | None = None,
    resume: str | None = None,
    max_steps: int | None = None,
    dataset: Path | None = None,
    metrics_port: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if output is not None:
        out["output_dir"] = str(output)
    if resume is not None:
        out["resume"] = resume
    if max_steps is not None:
        out.setdefault("training", {})["max_steps"] = max_steps
    if dataset is not None:
        out.setdefault("data", {}).update(path=str(dataset), uri=None)  # a local file instead of data.uri
    if metrics_port is not None:
        out.setdefault("metrics", {})["port"] = metrics_port
    return out


def load_config(config: Path, overrides: dict[str, Any]) -> Any:
    """File < TAC2SOL_* environment < flags, with one clear error naming the bad field."""
    from pydantic import ValidationError

    from tac2sol.trainer.config import TrainConfig

    try:
        return TrainConfig.from_file(config, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{config}: {where}: {first['msg']}") from None


OutputOpt = Annotated[Path | None, typer.Option("--output", help="Output directory (output_dir).")]
MaxStepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (training.max_steps).")]
DatasetOpt = Annotated[
    Path | None, typer.Option("--dataset", help="Local JSONL dataset (data.path; replaces data.uri).")
]
PortOpt = Annotated[int | None, typer.Option("--metrics-port", help="Base port of /metrics (metrics.port).")]


def train_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Trainer config (YAML/JSON), e.g. the ConfigMap.")
    ],
    output: OutputOpt = None,
    resume: Annotated[
        str | None, typer.Option(help="'auto', 'never', 'required' or a checkpoint path (resume).")
    ] = None,
    max_steps: MaxStepsOpt = None,
    dataset: DatasetOpt = None,
    metrics_port: PortOpt = None,
) -> None:
    """Train a LoRA adapter (QLoRA) as the config says; the trainer image's entry point."""
    from tac2sol.trainer.train import train

    cfg = load_config(config, _overrides(output, resume, max_steps, dataset, metrics_port))
    result = train(cfg, say=typer.echo)
    if result.is_main:
        typer.echo(f"adapter: {result.adapter_dir}\nrun manifest: {result.run_json}")


def preflight_command(
    file: Annotated[
        str,
        typer.Argument(
            help="JSONL dataset: input (TAC), output (Solidity), metadata. A path, or an https://, s3://, "
            "gs:// or hf:// URI to download first."
        ),
    ],
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer path or hub id for token lengths and the fit ratio.")
    ] = None,
    max_seq_length: Annotated[int, typer.Option(min=1, help="Tokens per example (maxSeqLength).")] = 2048,
    output_format: Annotated[str, typer.Option("--output-format", "-o", help="text or json.")] = "text",
    on_bad_line: Annotated[
        str, typer.Option(help="stop (exit 2 naming the line) or skip (to rejects).")
    ] = "stop",
    drop_artifact_rows: Annotated[bool, typer.Option(help="Reject rows with lifter artefacts.")] = False,
    truncation: Annotated[str, typer.Option(help="drop or truncate_input for too long rows.")] = "drop",
    rejects: Annotated[
        Path | None, typer.Option(help="Write rejected rows with reasons to this JSONL.")
    ] = None,
    download_dir: Annotated[
        Path, typer.Option(help="Where a URI is downloaded to (and reused from while unchanged).")
    ] = Path(".cache/data"),
) -> None:
    """Check a dataset: schema (with line numbers), duplicates, lifter artefacts, token lengths, fit."""
    from tac2sol.trainer.data import write_jsonl
    from tac2sol.trainer.preflight import run_preflight

    if output_format not in ("text", "json"):
        raise InvalidInput(f"--output-format: {output_format!r} is not allowed; use text or json")
    if on_bad_line not in ("stop", "skip"):
        raise InvalidInput(f"--on-bad-line: {on_bad_line!r} is not allowed; use stop or skip")
    if truncation not in ("drop", "truncate_input"):
        raise InvalidInput(f"--truncation: {truncation!r} is not allowed; use drop or truncate_input")
    tok = None
    if tokenizer is not None:
        from tac2sol.trainer.model import load_tokenizer

        tok = load_tokenizer(tokenizer, field="--tokenizer")
    path = _local_copy(file, download_dir)
    result = run_preflight(
        path,
        tokenizer=tok,
        max_seq_length=max_seq_length,
        drop_artifact_rows=drop_artifact_rows,
        on_bad_line=on_bad_line,  # type: ignore[arg-type]
        truncation=truncation,
        require_rows=False,
    )
    report = dict(result.report)
    report["tokenizer"] = tokenizer
    if rejects is not None:
        write_jsonl(rejects, [r.to_json() for r in result.rejects])
        report["rejectsFile"] = str(rejects)
    if output_format == "json":
        typer.echo(json.dumps(report, indent=2))
        return
    r = report
    typer.echo(
        f"{file}: {r['rows']} rows ({r['blankLines']} blank lines), {r['valid']} valid, {r['kept']} usable"
    )
    typer.echo(f"rejected: {r['rejectedRows']} {json.dumps(r['rejected'])}")
    typer.echo(f"lifter artefacts: {r['artifactRows']} rows {json.dumps(r['artifacts'])}")
    if r["fitRatio"] is None:
        typer.echo("token lengths: pass --tokenizer PATH to measure them and the fit ratio")
    else:
        typer.echo(f"token lengths: {json.dumps(r['tokenLengths'])}")
        typer.echo(f"fit ratio at {r['maxSeqLength']} tokens: {r['fitRatio']:.4f} ({r['fitRows']} rows)")
    if result.rejects and rejects is None:
        typer.echo("(pass --rejects FILE to write the rejected rows with their reasons)")


def _local_copy(file: str, download_dir: Path) -> Path:
    """``file`` itself, or for a URI its download under ``download_dir`` (progress on stderr)."""
    import re

    from tac2sol.trainer.config import uri_basename
    from tac2sol.trainer.hparams import DATA_URI_PATTERN

    if not re.match(DATA_URI_PATTERN, file):
        return Path(file)
    from tac2sol.trainer.fetch import fetch

    if not uri_basename(file):
        raise InvalidInput(
            f"data.uri: {file} names no file (it ends with '/'); give the URI of one JSONL file"
        )
    return fetch(file, download_dir / uri_basename(file), say=lambda m: typer.echo(m, err=True)).path


def evaluate_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The trainer config the adapter was trained with.")
    ],
    adapter: Annotated[
        Path | None, typer.Option(help="Adapter directory (default <output>/adapter).")
    ] = None,
    output: OutputOpt = None,
    max_samples: Annotated[int | None, typer.Option(help="Evaluate at most N held-out rows.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens to generate per function.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
    base_model: Annotated[
        bool | None,
        typer.Option(
            "--base-model/--no-base-model",
            help="Also evaluate the base model without the adapter on the same rows, into eval-base/ "
            "(evaluation.base_model).",
        ),
    ] = None,
    test_set: Annotated[
        Path | None,
        typer.Option(
            help="A fixed test set (JSONL) to evaluate besides the held-out split, into eval-test-set/; "
            "rows overlapping the training rows are excluded (evaluation.test_set; replaces test_set_uri)."
        ),
    ] = None,
) -> None:
    """Generate Solidity for the held-out split (and a test set) and score it; eval.md says what."""
    from tac2sol.trainer.evaluate import evaluate_adapter

    evaluation: dict[str, Any] = {}
    if max_samples is not None:
        evaluation["max_samples"] = max_samples
    if max_new_tokens is not None:
        evaluation["max_new_tokens"] = max_new_tokens
    if batch_size is not None:
        evaluation["batch_size"] = batch_size
    if base_model is not None:
        evaluation["base_model"] = base_model
    if test_set is not None:
        evaluation.update(test_set=str(test_set), test_set_uri=None)
    overrides = _overrides(output)
    if evaluation:
        overrides["evaluation"] = evaluation
    cfg = load_config(config, overrides)
    results = evaluate_adapter(cfg, adapter, say=typer.echo)
    for name in results:
        if (report := Path(cfg.output_dir) / name / "eval.md").is_file():
            typer.echo(f"report: {report}")


def torchrun_command(ctx: typer.Context) -> None:
    """torchrun (same arguments), exiting 128+N when the ranks stopped on signal N (the pod is
    re-created and resumes) instead of torchrun's 1 (the job fails): the trainer pods' command."""
    from tac2sol.trainer.torchrun import run

    raise typer.Exit(run(ctx.args))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command(
        "torchrun",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(torchrun_command)
    data_app.command("preflight")(preflight_command)
    app.add_typer(data_app, name="data")
    app.command("evaluate")(evaluate_command)
