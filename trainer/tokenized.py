"""Batched tokenization of the rows, cached on disk as a ``datasets`` Dataset.

One pass encodes every readable row (``prompt.encode_batch``); preflight reads the lengths from
it and training selects its split from it. The cache key covers everything that changes the
tokens: the data file's hash and the rows taken from it, the tokenizer's own serialisation, the
prompt template version, ``max_seq_length`` and the truncation policy. A hit skips tokenization entirely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from tac2sol.trainer import prompt
from tac2sol.trainer.data import Row

log = logging.getLogger(__name__)

ENCODE_BATCH = 512


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what the tokenizer does (its serialised form, special tokens), not of its path."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizer: vocabulary and class decide the tokens
        h.update(type(tokenizer).__name__.encode())
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()


def cache_key(
    data_sha256: str, tokenizer: Any, max_seq_length: int, truncation: str, lines: list[int]
) -> str:
    parts = {
        "data": data_sha256,
        "lines": hashlib.sha256(",".join(map(str, lines)).encode()).hexdigest(),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": prompt.TEMPLATE_VERSION,
        "max_seq_length": max_seq_length,
        "truncation": truncation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _encode(
    batch: dict[str, list[Any]], tokenizer: Any, max_seq_length: int, truncation: str
) -> dict[str, Any]:
    encoded = prompt.encode_batch(tokenizer, batch["input"], batch["output"], max_seq_length, truncation)  # type: ignore[arg-type]
    return {
        "line": batch["line"],
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "full_length": [e.full_length for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "reject": [e.reject or "" for e in encoded],
    }


def encode_rows(
    rows: list[Row],
    tokenizer: Any,
    *,
    max_seq_length: int,
    truncation: str,
    data_sha256: str,
    cache_dir: Path | None,
) -> Any:
    """A Dataset with one entry per row (same order): line, input_ids, labels, lengths, reject."""
    import datasets

    key = cache_key(data_sha256, tokenizer, max_seq_length, truncation, [r.line for r in rows])
    target = cache_dir / f"tokenized-{key}" if cache_dir is not None else None
    if target is not None and (target / "dataset_info.json").is_file():
        log.info("tokenization cache hit", extra={"path": str(target)})
        return datasets.load_from_disk(str(target))
    raw = datasets.Dataset.from_dict(
        {"line": [r.line for r in rows], "input": [r.input for r in rows], "output": [r.output for r in rows]}
    )
    was_enabled = datasets.is_caching_enabled()
    datasets.disable_caching()  # in-memory map; our own cache below is keyed by content
    try:
        encoded = raw.map(
            _encode,
            batched=True,
            batch_size=ENCODE_BATCH,
            remove_columns=["input", "output"],
            fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length, "truncation": truncation},
            desc="tokenizing",
        )
    finally:
        if was_enabled:
            datasets.enable_caching()
    if target is not None and not (target / "dataset_info.json").is_file():
        # Several ranks may get here at once (no shared disk): each writes its own temporary
        # directory, the first rename wins, the others throw theirs away.
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        encoded.save_to_disk(str(tmp))
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            encoded = datasets.load_from_disk(str(target))
    return encoded
