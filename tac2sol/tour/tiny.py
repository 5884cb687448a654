"""A tiny Llama-architecture model and a tokenizer trained here, for the CPU tour and the tests.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on the project's synthetic sample
(TAC, Solidity and the prompt text). The model is a ``LlamaForCausalLM`` built from a config
(seeded) and then briefly pre-trained as a plain language model on TAC and Solidity texts of a
*different* synthetic sample (another seed: none of the tour's rows), with the transformers
``Trainer``. That makes it a (very) small "code model", as the real base models are: QLoRA then
has to learn the TAC → Solidity mapping, which a frozen random network could barely express.
Nothing is downloaded. The directory carries ``tiny-spec.json`` (written last): a directory whose
spec matches is reused as it is. Built on one machine, the bytes are reproducible (seeded data,
initialisation and data order); other CPUs may round differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tac2sol.tour import sample
from tac2sol.trainer import prompt

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
    pretrain_contracts: int = 120
    pretrain_seed: int = 98765  # not the sample's seed: the tour's eval rows stay unseen
    pretrain_steps: int = 150
    pretrain_batch: int = 8
    pretrain_block: int = 256
    pretrain_lr: float = 3e-3


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


def _pretrain_blocks(spec: TinySpec, tokenizer: Any) -> list[list[int]]:
    """TAC and Solidity texts as separate documents, EOS between, cut into equal blocks."""
    stream: list[int] = []
    texts = []
    for row in sample.generate_rows(spec.pretrain_contracts, spec.pretrain_seed):
        texts += [row["input"], row["output"]]
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        stream += [*ids, tokenizer.eos_token_id]
    n = spec.pretrain_block
    return [stream[i : i + n] for i in range(0, len(stream) - n + 1, n)]


def pretrain(spec: TinySpec, model: Any, tokenizer: Any, workdir: Path) -> dict[str, float]:
    """A short causal-LM pre-training with the transformers Trainer; returns first/last loss."""
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: one thread is several times faster on small CPUs
    blocks = _pretrain_blocks(spec, tokenizer)
    ds = datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=spec.pretrain_steps,
        per_device_train_batch_size=spec.pretrain_batch,
        learning_rate=spec.pretrain_lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"first_loss": losses[0], "last_loss": losses[-1], "blocks": len(blocks)}


def spec_matches(path: Path, spec: TinySpec) -> bool:
    try:
        return bool(json.loads((path / SPEC_FILE).read_text()) == asdict(spec))
    except (OSError, ValueError):
        return False


def spec_key(spec: TinySpec) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]


def cache_root() -> Path:
    """Built models are kept here by spec (``TAC2SOL_CACHE`` or ``~/.cache/tac2sol``)."""
    return Path(os.environ.get("TAC2SOL_CACHE") or Path.home() / ".cache" / "tac2sol") / "tiny-model"


def _build(spec: TinySpec, target: Path) -> None:
    log.info("building the tiny model", extra={"path": str(target)})
    tmp = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = train_tokenizer(spec)
    model = build_model(spec, tokenizer)
    tmp.mkdir(parents=True)
    stats = pretrain(spec, model, tokenizer, tmp / "pretrain") if spec.pretrain_steps else {}
    shutil.rmtree(tmp / "pretrain", ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    (tmp / "pretrain.json").write_text(json.dumps(stats, indent=2) + "\n")
    (tmp / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def ensure_tiny_model(path: Path = DEFAULT_DIR, spec: TinySpec | None = None, use_cache: bool = True) -> Path:
    """The tiny model + tokenizer at ``path``: reused when its spec matches, else copied from the
    per-spec cache, else built (and cached)."""
    spec = spec or TinySpec()
    path = Path(path)
    if spec_matches(path, spec):
        return path
    if not use_cache:
        _build(spec, path)
        return path
    cached = cache_root() / spec_key(spec)
    if not spec_matches(cached, spec):
        cached.parent.mkdir(parents=True, exist_ok=True)
        _build(spec, cached)
    tmp = path.with_name(f"{path.name}.copying-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(cached, tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)
    return path
