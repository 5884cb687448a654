"""``tac2sol decompile``: Solidity for TAC with a trained adapter, as evaluation generates it.

Input is a ``.tac`` text of one function, or JSONL rows with ``input`` (the dataset's format; other
keys are ignored, ``id`` is echoed), from a file or ``-`` (stdin). The prompt is training's
(``prompt.fit_prompts``: a TAC too long for ``data.max_seq_length`` minus the new tokens loses its
end, marked) and decoding is evaluation's (``evaluate.generate``: batched, greedy or beam search
as ``evaluation`` says).

Settings come from the run that trained the adapter: ``<adapter>/../config.yaml`` (what ``tac2sol
train`` saves beside it) or ``--config``; without one, the trainer's defaults. The base model is
the one ``adapter_config.json`` names, or ``--base``; a ``--base`` whose architecture differs from
the adapter's base (or whose shapes the adapter does not fit) is one clear error, exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput

# config.json entries that decide whether a LoRA adapter's weights fit a base model.
ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


@dataclass(frozen=True)
class Function:
    line: int  # 1-based line of a JSONL row; 1 for a .tac text
    id: str | None  # the row's "id", when it has one
    tac: str


def read_functions(source: str, text: str) -> list[Function]:
    """``text`` as JSONL rows with ``input`` (when its first non-blank line is a JSON object), else
    as the TAC of one function. ``source`` names the input in errors."""
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if not first:
        raise InvalidInput(f"{source}: empty; give the TAC of one function, or JSONL rows with input")
    if not first.startswith("{"):
        return [Function(1, None, text.strip("\n"))]
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{source}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not row["input"].strip():
            raise InvalidInput(f'{source}:{number}: a row needs "input": the TAC text of one function')
        out.append(Function(number, str(row["id"]) if "id" in row else None, row["input"]))
    return out


def recorded_base(adapter: Path) -> str | None:
    """The base model ``adapter_config.json`` names (peft writes it when it saves the adapter)."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{adapter / 'adapter_config.json'}: not readable ({exc}); train again") from None
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return str(name) if name else None


def _architecture(name: str) -> dict[str, Any] | None:
    """The architecture facts of ``name`` from its config.json; None when it cannot be read here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name).to_dict()
    except Exception:  # unreadable here (no file, offline): loading the model decides later
        return None
    return {key: config.get(key) for key in ARCHITECTURE_KEYS}


def choose_base(adapter: Path, base: str | None) -> str:
    """``base`` when its architecture is the adapter's base's (or cannot be compared), else an error."""
    recorded = recorded_base(adapter)
    if base is None:
        if recorded is None:
            raise InvalidInput(
                f"--base: {adapter / 'adapter_config.json'} names no base model; give --base MODEL"
            )
        return recorded
    if recorded is None or base == recorded:
        return base
    mine, theirs = _architecture(base), _architecture(recorded)
    if mine is not None and theirs is not None and mine != theirs:
        differ = ", ".join(f"{k} {mine[k]} vs {theirs[k]}" for k in ARCHITECTURE_KEYS if mine[k] != theirs[k])
        raise InvalidInput(
            f"--base {base}: the adapter {adapter} was trained on {recorded}, another architecture "
            f"({differ}); give --base {recorded} or leave --base out"
        )
    return base


def inference_config(adapter: Path, base: str, config: Path | None) -> Any:
    """The trainer config of the run that made ``adapter`` (``config``, else ``<adapter>/../config.yaml``),
    or the trainer's defaults, with ``model.name_or_path`` set to ``base``."""
    from tac2sol.trainer.cli import load_config
    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.train import CONFIG_YAML

    found = config if config is not None else adapter.parent / CONFIG_YAML
    if config is not None and not config.is_file():
        raise InvalidInput(f"--config: {config} does not exist; give the config.yaml of the run")
    if found.is_file():
        cfg = load_config(found, {})
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name_or_path": base})})
    # No run config: the defaults; data is not read, the section only has to be valid.
    return TrainConfig(model={"name_or_path": base}, data={"path": str(adapter)}, output_dir=str(adapter))


def decompile(
    adapter: Path,
    functions: list[Function],
    *,
    base: str | None = None,
    config: Path | None = None,
    overrides: dict[str, Any] | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Solidity for each function: ``{"adapter", "base", "settings", "functions": [...], "seconds"}``.

    Each function carries ``solidity``, ``promptTokens``, ``truncated`` and ``seconds``: its share
    of its batch's generation time (``batchSeconds``, ``batchSize``).
    """
    from tac2sol.trainer.distributed import bnb_config_kwargs, model_load_kwargs
    from tac2sol.trainer.evaluate import check_adapter_dir, generate, inference_setup
    from tac2sol.trainer.model import load_for_inference, load_tokenizer
    from tac2sol.trainer.prompt import fit_prompts

    started = time.perf_counter()
    check_adapter_dir(adapter)
    base = choose_base(adapter, base)
    cfg = inference_config(adapter, base, config)
    if overrides:
        cfg = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update=overrides)})
    settings = cfg.evaluation
    cfg, env = inference_setup(cfg)
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(adapter) if has_tokenizer else base, cfg if not has_tokenizer else None)
    room = max(cfg.data.max_seq_length - settings.max_new_tokens, 1)
    try:
        prompts = fit_prompts(tokenizer, [f.tac for f in functions], room)
    except ValueError as exc:
        raise InvalidInput(f"--max-new-tokens {settings.max_new_tokens}: {exc}; lower it") from None
    model = load_for_inference(cfg, adapter, model_load_kwargs(cfg, env), bnb_config_kwargs(cfg, env))
    loaded = time.perf_counter()
    batches: dict[int, tuple[int, float]] = {}

    def timed(indices: list[int], seconds: float) -> None:
        for i in indices:
            batches[i] = (len(indices), seconds)

    texts = generate(
        model,
        tokenizer,
        [ids for ids, _ in prompts],
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        progress=say is not None,
        on_batch=timed,
    )
    out = []
    for i, (function, (ids, cut), text) in enumerate(zip(functions, prompts, texts, strict=True)):
        size, seconds = batches[i]
        out.append(
            {
                "line": function.line,
                **({"id": function.id} if function.id is not None else {}),
                "solidity": text,
                "promptTokens": len(ids),
                "truncated": cut,
                "seconds": round(seconds / size, 4),
                "batchSeconds": round(seconds, 4),
                "batchSize": size,
            }
        )
    return {
        "adapter": str(adapter),
        "base": base,
        "device": env.device,
        "settings": {
            "decoding": "greedy" if settings.num_beams == 1 else f"beam search ({settings.num_beams} beams)",
            "maxNewTokens": settings.max_new_tokens,
            "batchSize": settings.batch_size,
            "maxSeqLength": cfg.data.max_seq_length,
            "quantization": cfg.quantization,
            "precision": cfg.distributed.precision,
        },
        "functions": out,
        "loadSeconds": round(loaded - started, 3),
        "generateSeconds": round(time.perf_counter() - loaded, 3),
    }


def read_source(source: str) -> str:
    """The text of ``source``: a file, or ``-`` for stdin."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InvalidInput(f"{source}: no such file; give a .tac file, a JSONL file or - for stdin") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{source}: cannot read it ({exc})") from None


def as_text(result: dict[str, Any]) -> str:
    """One function: its Solidity. Several: each after a ``// line N`` comment."""
    functions = result["functions"]
    if len(functions) == 1:
        return str(functions[0]["solidity"])
    return "\n\n".join(
        f"// line {f['line']}" + (f" (id {f['id']})" if "id" in f else "") + f"\n{f['solidity']}"
        for f in functions
    )
