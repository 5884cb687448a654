"""``tac2sol train``: data → tokenizer/model → Trainer → save → evaluate, as stages.

Everything that can be wrong with the input is checked before the first training step: the
plan (``distributed.check_plan``), the output directory, the resume target, the tokenizer, the
data (preflight: every rejected row goes to ``data/rejects.jsonl`` with its reason) and the model.

Outputs under ``output_dir``: ``checkpoint-N/`` (sealed by a manifest, see ``checkpoints``),
``data/`` (preflight report, rejects, split manifest), ``adapter/`` (LoRA adapter + tokenizer),
``merged/`` (optional, quantization off), ``eval/`` (see ``evaluate``), ``config.yaml`` (the
effective config) and ``run.json`` (config, versions, data hashes, plan, timings, results).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput, Tac2solError
from tac2sol.trainer import checkpoints
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.data import write_json, write_jsonl
from tac2sol.trainer.distributed import DistEnv
from tac2sol.trainer.metrics import linger, metrics_callback, metrics_port, record_eval
from tac2sol.trainer.preemption import GracefulStop
from tac2sol.trainer.rank_report import rank_report_callback

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
DATA_DIR = "data"
EVAL_DIR = "eval"
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"


class TrainingDiverged(Tac2solError):
    """The loss (or gradient norm) stopped being a finite number. Exit code 3."""

    exit_code = 3


Say = Callable[[str], None]


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    run_json: Path
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    resumed_from: str | None
    eval_summary: dict[str, Any] | None = None
    eval_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    is_main: bool = True  # rank 0: the rank that wrote the adapter and speaks for the run


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "tac2sol",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "accelerate",
        "datasets",
        "deepspeed",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def ensure_writable(directory: Path, field_name: str = "output_dir") -> None:
    """Create ``directory`` and prove that a file can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InvalidInput(
            f"{field_name}: {directory} is not writable ({exc.strerror or exc}); "
            "choose another directory (--output)"
        ) from None


def _check_config(cfg: TrainConfig) -> None:
    if cfg.training.save_merged_model and cfg.quantization != "none":
        raise InvalidInput(
            "training.save_merged_model: a merged model needs quantization 'none' "
            "(merging LoRA into 4-bit weights loses precision); turn one of them off"
        )


def _quarantine_newer(output_dir: Path, resume_step: int | None) -> None:
    """Move invalid checkpoints newer than the resume point aside, so none is mistaken later."""
    for step, path in checkpoints.checkpoints(output_dir):
        newer = resume_step is None or step > resume_step
        if newer and checkpoints.problem(path, check_hashes=False) is not None:
            target = path.with_name(f"invalid-{path.name}-{int(time.time())}")
            path.rename(target)
            log.warning(f"moved the unusable checkpoint {path.name} aside to {target.name}")


def nan_guard() -> Any:
    """A callback that stops training when a logged loss or gradient norm is not finite."""
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        def __init__(self) -> None:
            self.problem: tuple[int, str, float] | None = None

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any
        ) -> None:
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, int | float) and not math.isfinite(value) and self.problem is None:
                    self.problem = (state.global_step, key, float(value))
                    control.should_training_stop = True
                    control.should_save = False  # never checkpoint a diverged state

    return NanGuard()


def counting_trainer_class() -> Any:
    """``Trainer`` that batches as the batching plan says and counts what it trains on.

    The counts come from the collator (``batching.COUNTS_KEY``, counted on the CPU): rows, their
    own tokens and the tokens the device computes, padding included. They are popped before the
    model sees the batch and handed to the metrics callbacks, so counting never syncs the device.
    """
    from transformers import Trainer

    from tac2sol.trainer.batching import COUNTS_KEY, LengthGroupedBatches, TokenTally
    from tac2sol.trainer.metrics import MetricsCallbackBase

    class CountingTrainer(Trainer):
        def __init__(self, *args: Any, batching: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.batching = batching
            self.tally = TokenTally()
            callbacks = self.callback_handler.callbacks
            self._counters = [c for c in callbacks if isinstance(c, MetricsCallbackBase)]
            for callback in self._counters:
                callback.counted_by_trainer = True

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.batching is None or self.batching.mode != "grouped" or dataset is None:
                return super()._get_train_sampler(train_dataset)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthGroupedBatches(
                [len(ids) for ids in dataset["input_ids"]],
                self.args.per_device_train_batch_size,
                self.args.world_size,
                seed,
            )

        def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
            inputs.pop(COUNTS_KEY, None)  # evaluation batches carry the counts too
            return super()._prepare_inputs(inputs)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            rows, real, computed = inputs.pop(COUNTS_KEY)
            self.tally.add(real, computed, rows)
            for callback in self._counters:
                callback.count_batch(rows, real, computed)
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingTrainer


def training_arguments(cfg: TrainConfig, env: DistEnv, has_eval: bool) -> Any:
    """``TrainingArguments`` from the config, merged with what the distributed layer decides."""
    from transformers import TrainingArguments

    from tac2sol.trainer.distributed import training_arguments_kwargs

    t = cfg.training
    eval_strategy = "no"
    if has_eval:
        eval_strategy = "steps" if t.eval_steps else "epoch"
    kwargs: dict[str, Any] = {
        "output_dir": str(cfg.output_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers v5)
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "logging_nan_inf_filter": False,  # a NaN loss must reach the NaN guard, not be hidden
        "eval_strategy": eval_strategy,
        "eval_steps": t.eval_steps,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "dataloader_num_workers": t.dataloader_workers,
        "report_to": "none",
        "remove_unused_columns": False,
        "disable_tqdm": not env.is_main,
        # Gradient checkpointing is switched on on the model (model.add_lora), not by the Trainer.
    }
    kwargs.update(training_arguments_kwargs(cfg, env, cfg.output_dir))
    return TrainingArguments(**kwargs)


def _percent(ratio: float | None) -> str:
    return "not measured" if ratio is None else f"{100 * ratio:.1f} %"


def _select(encoded: Any, lines: list[int]) -> Any:
    index = {line: i for i, line in enumerate(encoded["line"])}
    return encoded.select([index[line] for line in lines]).select_columns(["input_ids", "labels"])


def _say_on(env: DistEnv, say: Say | None) -> Say:
    def out(message: str) -> None:
        if env.is_main:
            (say or print)(message)

    return out


def train(cfg: TrainConfig, say: Say | None = None) -> TrainResult:
    """Run the whole training job described by ``cfg`` (one rank of it under a launcher)."""
    from tac2sol.trainer.distributed import finalize_distributed, init_distributed

    started = time.monotonic()
    # transformers v5 renames that its own callers (peft) still use: nothing a user can act on.
    warnings.filterwarnings(
        "ignore", message=r".*deprecated and will be removed in v6", category=FutureWarning
    )
    stop = GracefulStop(cfg.training.termination_grace_seconds)
    stop.install()
    try:
        env = init_distributed(cfg)
        if not env.on_gpu and cfg.training.cpu_threads:
            import torch

            torch.set_num_threads(cfg.training.cpu_threads)
        echo = _say_on(env, say)
        try:
            fitted = _fit(cfg, env, echo, stop)
        finally:
            finalize_distributed()
        return _finish(cfg, env, echo, fitted, started)
    finally:
        stop.restore()


@dataclass
class _Fitted:
    trainer: Any
    tokenizer: Any
    eval_rows: list[Any]
    encoded: Any
    adapter_dir: Path
    resumed_from: str | None
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    preflight: dict[str, Any]
    source: dict[str, Any] | None  # data.uri: where the file came from (the fetch sidecar)
    split: dict[str, Any]
    params: dict[str, Any]
    throughput: dict[str, Any]
    timings: dict[str, float]
    ds_config: str | None
    test_set: Any = None  # testset.LoadedTestSet on rank 0 when evaluation.test_set is given


def _fit(cfg: TrainConfig, env: DistEnv, echo: Say, stop: GracefulStop) -> _Fitted:
    import transformers

    from tac2sol.trainer.distributed import bnb_config_kwargs, check_plan, model_load_kwargs
    from tac2sol.trainer.model import count_parameters, load_model, load_tokenizer, weights_source
    from tac2sol.trainer.preflight import preflight_data
    from tac2sol.trainer.split import split_rows

    timings: dict[str, float] = {}
    mark = time.monotonic()
    check_plan(cfg, env)
    _check_config(cfg)
    metrics_cb = metrics_callback(cfg, env)  # binds the port now: a taken port fails in a second
    out = Path(cfg.output_dir)
    ensure_writable(out)
    resume = checkpoints.resolve_resume(cfg.resume, out)
    if env.is_main:  # saved beside the run: `tac2sol evaluate --config <output>/config.yaml`
        (out / CONFIG_YAML).write_text(cfg.dump_yaml())
    tokenizer = load_tokenizer(cfg.model.tokenizer or weights_source(cfg), cfg)
    args = training_arguments(cfg, env, has_eval=cfg.data.validation_ratio > 0)

    # -- data: download (data.uri; each node's local rank 0 first, the others reuse its copy) --
    fetched = None
    if cfg.data.uri is not None:
        from tac2sol.trainer.fetch import fetch

        with args.main_process_first(local=True, desc="download"):
            fetched = fetch(cfg.data.uri, cfg.data.file, progress=env.is_main, say=echo)

    # -- data: preflight (rank 0 first: it fills the tokenization cache the others read) -------
    with args.main_process_first(local=False, desc="preflight"):
        pf = preflight_data(cfg.data, tokenizer, out / "cache")
    split = split_rows(pf.kept, cfg.data.validation_ratio, cfg.data.split_seed)
    if not split.train:
        raise InvalidInput(
            f"data.validation_ratio {cfg.data.validation_ratio}: no row is left for training "
            f"({len(pf.kept)} rows, {split.manifest['counts']['groups']} groups); lower the ratio"
        )
    data_dir = out / DATA_DIR
    if env.is_main:
        write_json(data_dir / "preflight.json", pf.report)
        write_jsonl(data_dir / "rejects.jsonl", [r.to_json() for r in pf.rejects])
        write_json(data_dir / "split.json", split.manifest)
    r = pf.report
    echo(
        f"data: {r['rows']} rows, {r['kept']} kept, {r['rejectedRows']} rejected {r['rejected'] or ''} -> "
        f"{data_dir / 'rejects.jsonl'}; lifter artefacts in {r['artifactRows']} rows; "
        f"fit ratio {r['fitRatio']} at {r['maxSeqLength']} tokens "
        f"(p95 {(r['tokenLengths'] or {}).get('p95')})"
    )
    c = split.manifest["counts"]
    echo(
        f"split: {c['train']} train / {c['eval']} eval rows in {c['groups']} groups "
        f"(seed {cfg.data.split_seed}, leakage {split.manifest['leakage']})"
    )
    train_ds = _select(pf.encoded, [row.line for row in split.train])
    eval_ds = _select(pf.encoded, [row.line for row in split.eval]) if split.eval else None
    test_set = None
    if env.is_main and cfg.evaluation.enabled:  # read before training: a bad test set fails now
        from tac2sol.trainer.testset import load_test_set

        test_set = load_test_set(cfg, tokenizer, split.train, say=echo)
    timings["data_s"] = time.monotonic() - mark

    # -- model ------------------------------------------------------------------------------
    mark = time.monotonic()
    transformers.set_seed(cfg.training.seed)  # LoRA initialisation is random
    model = load_model(cfg, model_load_kwargs(cfg, env), bnb_config_kwargs(cfg, env))
    counts = count_parameters(model)
    source = cfg.model.name_or_path + (f" from {cfg.model.gguf_file}" if cfg.model.gguf_file else "")
    echo(f"model: {source} ({cfg.quantization}), {counts.describe()}")
    timings["model_load_s"] = time.monotonic() - mark

    # -- Trainer ----------------------------------------------------------------------------
    guard = nan_guard()
    callbacks = [checkpoints.manifest_callback(), guard]
    if metrics_cb is not None:
        callbacks.append(metrics_cb)
        echo(f"metrics: http://{cfg.metrics.host}:{metrics_port()}/metrics")

    if (report_cb := rank_report_callback(env, out)) is not None:
        callbacks.append(report_cb)
    callbacks.append(stop.callback(env.world_size))  # after the manifest callback: sees sealed checkpoints
    callbacks.append(checkpoints.log_at_save_callback())  # last: after every callback that saves
    from tac2sol.trainer.batching import expected_padding, make_collator, prepare_model, resolve_batching
    from tac2sol.trainer.fused_loss import resolve_fused_loss

    batching = resolve_batching(
        cfg.training.batching, cfg.training.per_device_batch_size, model.config._attn_implementation
    )
    lengths = [len(ids) for ids in train_ds["input_ids"]]
    t = cfg.training
    expected = {
        mode: expected_padding(lengths, t.per_device_batch_size, env.world_size, mode, t.seed)
        for mode in (batching.mode, "random")
    }
    echo(
        f"{batching.describe()}; expected padding {_percent(expected[batching.mode])} of the tokens "
        f"computed (random batches: {_percent(expected['random'])})"
    )
    prepare_model(batching, model)
    fused = resolve_fused_loss(
        cfg.training.fused_cross_entropy, env.on_gpu, getattr(model.config, "model_type", None)
    )
    echo(fused.describe())
    for key, value in fused.training_arguments().items():  # read by the Trainer when it is built
        setattr(args, key, value)
    trainer = counting_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=make_collator(batching, tokenizer, pad_to_multiple_of=8 if env.on_gpu else None),
        processing_class=tokenizer,
        callbacks=callbacks,
        batching=batching,
    )
    if env.is_main:
        _quarantine_newer(out, resume.step)
    if resume.checkpoint is not None:
        echo(f"resume: from {resume.checkpoint} (step {resume.step}, mode {resume.mode})")
    mark = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume.checkpoint else None)
    timings["train_s"] = time.monotonic() - mark
    if guard.problem is not None:
        step, key, value = guard.problem
        last = checkpoints.latest_valid(out)
        raise TrainingDiverged(
            f"training diverged: {key} is {value} at step {step}; the last good checkpoint is "
            f"{last or 'none'}; lower training.learning_rate or raise training.warmup_ratio, then resume"
        )
    stop.raise_if_stopped()  # SIGTERM: the checkpoint is saved; exit 143 before evaluation
    eval_loss = None
    if eval_ds is not None:
        evals = [e for e in trainer.state.log_history if "eval_loss" in e]
        if evals and evals[-1].get("step") == trainer.state.global_step:
            eval_loss = evals[-1]["eval_loss"]  # already evaluated at this step
        else:
            eval_loss = trainer.evaluate().get("eval_loss")
    adapter_dir = out / ADAPTER_DIR
    trainer.save_model(str(adapter_dir))
    if env.is_main:
        tokenizer.save_pretrained(adapter_dir)
    tally = trainer.tally
    train_runtime = result.metrics.get("train_runtime")
    throughput = {
        "trainRuntimeSeconds": train_runtime,
        "trainSamplesThisProcess": tally.samples,
        "trainTokensThisProcess": tally.real,
        "paddingTokensThisProcess": tally.padding,
        "paddingRatio": tally.padding_ratio(),
        "tokensPerSecondThisProcess": round(tally.real / train_runtime, 1) if train_runtime else None,
        "tokensCountedAs": "real (non-padding) tokens this rank trained on, since start or resume; "
        "paddingRatio: padding / all tokens computed",
        "batching": {**batching.to_json(), "expectedPaddingRatio": expected},
        "fusedCrossEntropy": fused.to_json(),
    }
    echo(
        f"throughput: {throughput['tokensPerSecondThisProcess']} real tokens/s on this rank, padding "
        f"{_percent(tally.padding_ratio())} of the tokens computed ({batching.mode} batches)"
    )
    return _Fitted(
        trainer=trainer,
        tokenizer=tokenizer,
        eval_rows=split.eval,
        encoded=pf.encoded,
        adapter_dir=adapter_dir,
        resumed_from=str(resume.checkpoint) if resume.checkpoint else None,
        global_step=trainer.state.global_step,
        train_loss=checkpoints.run_mean_loss(
            trainer.state.log_history, resume.step or 0, result.training_loss, trainer.state.global_step
        ),
        eval_loss=eval_loss,
        preflight=pf.report,
        source=fetched.source if fetched is not None else None,
        split={k: v for k, v in split.manifest.items() if k != "evalLines"},
        params={"trainable": counts.trainable, "total": counts.total},
        throughput=throughput,
        timings=timings,
        ds_config=args.deepspeed if isinstance(args.deepspeed, str) else None,
        test_set=test_set,
    )


def _finish(cfg: TrainConfig, env: DistEnv, echo: Say, fitted: _Fitted, started: float) -> TrainResult:
    """After the process group is gone: merged model, evaluation and run.json on rank 0."""
    out = Path(cfg.output_dir)
    timings = dict(fitted.timings)
    summary = None
    eval_dir = None
    exported = None
    if env.is_main:
        from tac2sol.trainer.distributed import zero3

        model = fitted.trainer.model
        if cfg.training.save_merged_model:
            merged = model.merge_and_unload()
            merged.save_pretrained(out / MERGED_DIR)
            fitted.tokenizer.save_pretrained(out / MERGED_DIR)
            echo(f"merged model: {out / MERGED_DIR}")
            model = None
        if cfg.evaluation.enabled and (fitted.eval_rows or fitted.test_set is not None):
            from tac2sol.trainer.evaluate import HELD_OUT_DIR, evaluate_run, export_summary

            mark = time.monotonic()
            if model is None or zero3(cfg):
                # ZeRO-3 partitions parameters over ranks that are gone: reload on this one.
                model = None
                fitted.trainer = None
                gc.collect()
                model = _reload_for_eval(cfg, env, fitted.adapter_dir)
            evaluations = evaluate_run(
                model, fitted.tokenizer, cfg, fitted.eval_rows, fitted.encoded, fitted.test_set, say=echo
            )
            summary = evaluations.get(HELD_OUT_DIR)
            eval_dir = out / EVAL_DIR if summary else None
            exported = export_summary(evaluations)
            timings["eval_s"] = time.monotonic() - mark
            record_eval(exported)
    timings["total_s"] = time.monotonic() - started
    run_json = out / RUN_JSON
    if env.is_main:
        manifest = {
            "kind": "tac2sol-run",
            "runName": cfg.run_name,
            "config": cfg.model_dump(mode="json"),
            "versions": _versions(),
            "environment": {
                "worldSize": env.world_size,
                "device": env.device,
                "launcher": env.launcher,
                "cpuCount": os.cpu_count(),
            },
            "plan": cfg.distributed.model_dump(mode="json"),
            "deepspeedConfig": fitted.ds_config,
            "data": {
                "file": str(cfg.data.path),
                "sha256": fitted.preflight["sha256"],
                "uri": cfg.data.uri,
                "source": fitted.source,
                "preflight": fitted.preflight,
                "split": fitted.split,
            },
            "parameters": fitted.params,
            "resumedFrom": fitted.resumed_from,
            "results": {
                "globalStep": fitted.global_step,
                "trainLoss": fitted.train_loss,
                "evalLoss": fitted.eval_loss,
                **fitted.throughput,
                "evaluation": exported,
            },
            "outputs": {
                "adapter": str(fitted.adapter_dir),
                "merged": str(out / MERGED_DIR) if cfg.training.save_merged_model else None,
                "eval": str(eval_dir) if eval_dir else None,
                "data": str(out / DATA_DIR),
            },
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        write_json(run_json, manifest)
    # Every rank keeps serving its final values for a last scrape, not only rank 0.
    linger(cfg)
    return TrainResult(
        output_dir=out,
        adapter_dir=fitted.adapter_dir,
        run_json=run_json,
        global_step=fitted.global_step,
        train_loss=fitted.train_loss,
        eval_loss=fitted.eval_loss,
        resumed_from=fitted.resumed_from,
        eval_summary=summary,
        eval_dir=eval_dir,
        timings=timings,
        is_main=env.is_main,
    )


def _reload_for_eval(cfg: TrainConfig, env: DistEnv, adapter: Path) -> Any:
    from tac2sol.trainer.distributed import bnb_config_kwargs, precision_dtype
    from tac2sol.trainer.model import load_for_inference

    if env.on_gpu:
        import torch

        torch.cuda.empty_cache()
    dtype = precision_dtype(cfg.distributed.precision)
    return load_for_inference(
        cfg, adapter, {"dtype": dtype, "device_map": {"": env.device}}, bnb_config_kwargs(cfg, env)
    )


def load_run_json(output_dir: Path) -> dict[str, Any]:
    path = Path(output_dir) / RUN_JSON
    try:
        return dict(json.loads(path.read_text()))
    except OSError:
        raise InvalidInput(f"{path}: no run.json; train first (tac2sol train) or give --output") from None
