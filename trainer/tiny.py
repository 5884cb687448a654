"""A tiny Llama-architecture model and a tokenizer trained here, for the CPU tour and the tests.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the project's synthetic sample
(TAC, Solidity and the prompt text); the model is a randomly initialised ``LlamaForCausalLM``
built from a config (seeded). Nothing is downloaded. The directory carries ``tiny-spec.json``
(written last): a directory whose spec matches is reused as it is.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tac2sol.trainer import prompt, sample

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(".cache/tiny-model")
SPEC_FILE = "tiny-spec.json"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class TinySpec:
    """Everything that decides the tiny model's bytes; a change rebuilds it."""

    version: int = 1
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    seed: int = 0
    sample_contracts: int = sample.DEFAULT_CONTRACTS
    sample_seed: int = sample.DEFAULT_SEED


def _corpus(spec: TinySpec) -> Iterable[str]:
    yield prompt.build_prompt("") + prompt.TRUNCATION_NOTE
    for row in sample.generate_rows(spec.sample_contracts, spec.sample_seed):
        yield row["input"]
        yield row["output"]


def train_tokenizer(spec: TinySpec) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the synthetic sample."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    # No GPT-2 word regex: merges may span spaces and newlines, which halves the token count of
    # indented TAC (all sample rows then fit 512 tokens). Byte-level, so nothing is ever <unk>.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=16,
    )
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=spec.max_position_embeddings,
        padding_side="right",
        **SPECIAL_TOKENS,
    )


def build_model(spec: TinySpec, tokenizer: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def spec_matches(path: Path, spec: TinySpec) -> bool:
    try:
        return bool(json.loads((path / SPEC_FILE).read_text()) == asdict(spec))
    except (OSError, ValueError):
        return False


def ensure_tiny_model(path: Path = DEFAULT_DIR, spec: TinySpec | None = None) -> Path:
    """Build the tiny model + tokenizer at ``path`` unless one with the same spec is there."""
    spec = spec or TinySpec()
    path = Path(path)
    if spec_matches(path, spec):
        return path
    log.info("building the tiny model", extra={"path": str(path)})
    tmp = path.with_name(path.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = train_tokenizer(spec)
    model = build_model(spec, tokenizer)
    tmp.mkdir(parents=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path
