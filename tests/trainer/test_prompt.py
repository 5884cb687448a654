"""Prompt format and masking: loss only on the completion; nothing cut silently."""

from __future__ import annotations

from typing import Any

from tac2sol.trainer.prompt import IGNORE_INDEX, build_prompt, encode_batch, encode_prompts


def test_labels_are_masked_on_every_prompt_token(tiny_tokenizer: Any, sample_file: Any) -> None:
    import json

    rows = [json.loads(line) for line in sample_file.read_text().splitlines()[:40]]
    tacs, sols = [r["input"] for r in rows], [r["output"] for r in rows]
    encoded = encode_batch(tiny_tokenizer, tacs, sols, max_seq_length=1024)
    prompts = encode_prompts(tiny_tokenizer, tacs)
    for e, p, sol in zip(encoded, prompts, sols, strict=True):
        assert e.reject is None and len(e.input_ids) == len(e.labels) == e.full_length
        n = len(p)
        assert e.input_ids[:n] == p  # the same prompt tokens generation will see
        assert all(label == IGNORE_INDEX for label in e.labels[:n])
        assert e.labels[n:] == e.input_ids[n:]  # every completion token is learned ...
        assert e.labels[-1] == tiny_tokenizer.eos_token_id  # ... including the stop token
        assert tiny_tokenizer.decode(e.input_ids[n:-1]) == sol
        assert tiny_tokenizer.decode(p).endswith("### Solidity:\n")


def test_too_long_rows_are_rejected_or_their_tac_cut_never_the_completion(tiny_tokenizer: Any) -> None:
    tac = "\n".join(f"    temp_{i} = storage[{i:02x}]" for i in range(300))
    sol = "function f() public view returns (uint256) {\n    return x;\n}"
    dropped = encode_batch(tiny_tokenizer, [tac], [sol], max_seq_length=128)[0]
    assert dropped.reject == "too_long" and dropped.input_ids == [] and dropped.full_length > 128

    cut = encode_batch(tiny_tokenizer, [tac], [sol], max_seq_length=128, truncation="truncate_input")[0]
    assert cut.reject is None and cut.truncated and len(cut.input_ids) <= 128
    completion = [t for t, label in zip(cut.input_ids, cut.labels, strict=True) if label != IGNORE_INDEX]
    assert tiny_tokenizer.decode(completion[:-1]) == sol
    assert "[TAC truncated]" in tiny_tokenizer.decode(cut.input_ids)

    huge = encode_batch(tiny_tokenizer, [tac], [sol * 30], max_seq_length=128, truncation="truncate_input")[0]
    assert huge.reject == "completion_too_long"


def test_prompt_carries_instruction_and_tac() -> None:
    text = build_prompt("temp_1 = caller")
    assert text.startswith("Decompile the following EVM three-address code")
    assert "### TAC:\ntemp_1 = caller\n\n### Solidity:\n" in text
