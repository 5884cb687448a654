"""The prompt format and the encoding of one example (prompt masked, completion learned).

An example is ``instruction + TAC`` as the prompt and the Solidity function (+ EOS) as the
completion. Prompt and completion are tokenized separately and concatenated, so the boundary is
exact: every prompt token gets label -100 and only completion tokens count in the loss.

Too long for ``max_seq_length``: policy ``drop`` rejects the row (it goes to rejects.jsonl with
reason ``too_long``); policy ``truncate_input`` cuts the end of the TAC (never the completion)
and counts the row as truncated; a completion that cannot fit even with an empty TAC is
rejected as ``completion_too_long``. Nothing is cut silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TEMPLATE_VERSION = "tac2sol-prompt/1"
INSTRUCTION = (
    "Decompile the following EVM three-address code (TAC) into the Solidity function it was compiled from."
)
TAC_HEADER = "\n\n### TAC:\n"
SOLIDITY_HEADER = "\n\n### Solidity:\n"
TRUNCATION_NOTE = "\n// [TAC truncated]"
IGNORE_INDEX = -100

Truncation = Literal["drop", "truncate_input"]


def build_prompt(tac: str) -> str:
    """The text the model sees before it writes the Solidity function."""
    return f"{INSTRUCTION}{TAC_HEADER}{tac}{SOLIDITY_HEADER}"


def prompt_parts() -> tuple[str, str]:
    """The text before and after the TAC (truncation keeps both intact)."""
    return f"{INSTRUCTION}{TAC_HEADER}", SOLIDITY_HEADER


@dataclass(frozen=True)
class Encoded:
    """One tokenized example, or why it could not be made."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    reject: str | None = None  # "too_long" | "completion_too_long"
    full_length: int = 0  # tokens before any truncation


def special_prefix(tokenizer: Any) -> list[int]:
    """The BOS token(s) the tokenizer itself puts in front of a text (none for some models)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in ids if i == bos][:1]


def encode_prompts(tokenizer: Any, tacs: list[str]) -> list[list[int]]:
    """Prompt token ids exactly as training builds them (for generation at evaluation time)."""
    return [ids for ids, _ in fit_prompts(tokenizer, tacs, None)]


def fit_prompts(tokenizer: Any, tacs: list[str], max_tokens: int | None) -> list[tuple[list[int], bool]]:
    """Prompt token ids and whether the TAC was cut: a prompt longer than ``max_tokens`` loses the
    end of its TAC (marked with the truncation note), as ``truncate_input`` does in training."""
    head, tail = prompt_parts()
    head_ids = tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False, verbose=False)["input_ids"]
    note_ids = tokenizer(TRUNCATION_NOTE, add_special_tokens=False, verbose=False)["input_ids"]
    bos = special_prefix(tokenizer)
    fixed = len(bos) + len(head_ids) + len(tail_ids)
    out = []
    for tac in tokenizer(list(tacs), add_special_tokens=False, verbose=False)["input_ids"]:
        cut = max_tokens is not None and fixed + len(tac) > max_tokens
        if cut:
            room = int(max_tokens or 0) - fixed - len(note_ids)
            if room <= 0:
                raise ValueError(f"{max_tokens} tokens leave no room for TAC after the prompt's {fixed}")
            tac = tac[:room] + note_ids
        out.append((bos + head_ids + tac + tail_ids, cut))
    return out


def encode_batch(
    tokenizer: Any,
    tacs: list[str],
    completions: list[str],
    max_seq_length: int,
    truncation: Truncation = "drop",
) -> list[Encoded]:
    """Encode examples in one batched tokenizer call per part (fast tokenizers parallelise)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: the model could never learn to stop")
    bos = special_prefix(tokenizer)
    head, tail = prompt_parts()
    head_ids = tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
    tail_ids = tokenizer(tail, add_special_tokens=False, verbose=False)["input_ids"]
    note_ids = tokenizer(TRUNCATION_NOTE, add_special_tokens=False, verbose=False)["input_ids"]
    tac_ids = tokenizer(list(tacs), add_special_tokens=False, verbose=False)["input_ids"]
    out_ids = tokenizer(list(completions), add_special_tokens=False, verbose=False)["input_ids"]
    fixed = len(bos) + len(head_ids) + len(tail_ids)
    result = []
    for tac, completion in zip(tac_ids, out_ids, strict=True):
        completion = [*completion, eos]
        full = fixed + len(tac) + len(completion)
        truncated = False
        if full > max_seq_length:
            room = max_seq_length - fixed - len(completion) - len(note_ids)
            if truncation == "drop":
                result.append(Encoded([], [], reject="too_long", full_length=full))
                continue
            if room <= 0:
                result.append(Encoded([], [], reject="completion_too_long", full_length=full))
                continue
            tac = tac[:room] + note_ids
            truncated = True
        prompt = bos + head_ids + tac + tail_ids
        result.append(
            Encoded(
                input_ids=prompt + completion,
                labels=[IGNORE_INDEX] * len(prompt) + completion,
                truncated=truncated,
                full_length=full,
            )
        )
    return result


def example_lengths(tokenizer: Any, tacs: list[str], completions: list[str]) -> list[int]:
    """Tokens each example needs untruncated (prompt + completion + EOS): the fit measure."""
    encoded = encode_batch(tokenizer, tacs, completions, max_seq_length=1 << 30)
    return [e.full_length for e in encoded]
