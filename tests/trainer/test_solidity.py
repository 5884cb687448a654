"""Signature match and slices on hand-written Solidity and on the real rows (no compiler needed)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tac2sol.trainer.slices import row_slices
from tac2sol.trainer.solidity import (
    candidate_signatures,
    canonical_type,
    function_header,
    is_external_call,
    selector,
    signature_matches,
    strip_comments_and_strings,
)


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        ("transfer(address,uint256)", "0xa9059cbb"),  # ERC-20, as published in EIP-20 tooling
        ("balanceOf(address)", "0x70a08231"),
        ("approve(address,uint256)", "0x095ea7b3"),
        ("totalSupply()", "0x18160ddd"),
        ("safeTransferFrom(address,address,uint256,bytes)", "0xb88d4fde"),  # ERC-721
    ],
)
def test_selector_is_keccak_not_sha3(signature: str, expected: str) -> None:
    assert selector(signature) == expected


@pytest.mark.parametrize(
    ("param", "abi"),
    [
        ("uint x", "uint256"),
        ("int y", "int256"),
        ("uint[] memory xs", "uint256[]"),
        ("uint256 [ 3 ] calldata fixed3", "uint256[3]"),
        ("address payable to", "address"),
        ("address payable", "address"),
        ("bytes32", "bytes32"),
        ("byte b", "bytes1"),
        ("string calldata name", "string"),
        ("bool[][2] memory grid", "bool[][2]"),
        ("IERC20 token", "@IERC20"),
        ("Lib.Order[] memory orders", "@Lib.Order[]"),
        ("mapping(address => uint) storage m", None),
        ("uint[SIZE] memory a", None),
    ],
    ids=lambda v: str(v),
)
def test_canonical_parameter_types(param: str, abi: str | None) -> None:
    assert canonical_type(param) == abi


def test_header_ignores_comments_strings_and_function_types() -> None:
    text = "// function fake(uint a)\n/* function other() */ function  pay( address /*to*/ to , uint amt)"
    text += ' public { emit Log("function no(uint)"); }'
    header = function_header(text)
    assert header is not None and header.name == "pay" and header.params == ("address to", "uint amt")
    assert candidate_signatures(text) == ["pay(address,uint256)"]
    assert "fake" not in strip_comments_and_strings(text) and "no(uint)" not in strip_comments_and_strings(
        text
    )
    callback = "function run(function (uint) external returns (uint) cb, uint n) public {}"
    assert function_header(callback) == function_header(
        "function run(function (uint) external returns (uint) cb, uint n)"
    )
    assert candidate_signatures(callback) == []  # a function-type parameter: not read, so no match


TRANSFER = "function transfer(address to, uint amount) public returns (bool) { return true; }"


@pytest.mark.parametrize(
    ("prediction", "sel", "expected"),
    [
        (TRANSFER, "0xa9059cbb", True),
        (TRANSFER, "A9059CBB", True),  # case and 0x do not matter
        (TRANSFER.replace("uint amount", "uint128 amount"), "0xa9059cbb", False),
        (TRANSFER.replace("transfer", "send"), "0xa9059cbb", False),
        ("return true;", "0xa9059cbb", False),  # no function header
        (TRANSFER, None, None),  # nothing to check against: not measured
        (TRANSFER, "", None),
        # a contract-typed parameter is an address in the ABI
        ("function deposit(IERC20 token, uint a) external {}", selector("deposit(address,uint256)"), True),
        # an enum parameter is a uint8
        ("function setState(State s) external {}", selector("setState(uint8)"), True),
    ],
)
def test_signature_match(prediction: str, sel: str | None, expected: bool | None) -> None:
    assert signature_matches(prediction, sel) is expected


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reference_signatures_match_the_real_selectors(dataset_500: Path) -> None:
    rows = _rows(dataset_500)
    matched = sum(bool(signature_matches(r["output"], r["metadata"]["selector"])) for r in rows)
    assert matched == len(rows) == 500  # measured: every reference hashes to its row's selector
    # another row's function almost never has this row's selector
    shifted = sum(
        bool(signature_matches(rows[(i + 1) % 500]["output"], r["metadata"]["selector"]))
        for i, r in enumerate(rows)
    )
    assert shifted < 10


@pytest.mark.parametrize(
    ("receiver", "member", "external"),
    [
        ("token", "transfer", True),
        ("sender", "transfer", True),  # msg.sender.transfer(...)
        (None, "balanceOf", True),  # IERC20(t).balanceOf(...)
        ("super", "transfer", False),
        ("abi", "encodePacked", False),
        ("amount", "mul", False),  # SafeMath through using-for
        ("SafeMath", "add", False),
        ("_tokenIds", "current", False),  # Counters
        ("recipient", "call", True),
    ],
)
def test_external_call_reading(receiver: str | None, member: str, external: bool) -> None:
    assert is_external_call(receiver, member) is external


HARD = {
    "fixed-point arithmetic": "function f(uint a) public { x = a.mul(1e18).div(total); }",
    "nested mappings": "function f(address a) public { allowed[a][msg.sender] = 0; }",
    "external calls": "function f() public { IERC20(token).transfer(msg.sender, 1); }",
    "loops": "function f() public { for (uint i; i < n; i++) { s += i; } }",
    "inline assembly": 'function f() public { assembly ("memory-safe") { sstore(0, 1) } }',
}


@pytest.mark.parametrize("name", list(HARD))
def test_hard_case_slices(name: str) -> None:
    slices = row_slices(HARD[name], {"visibility": "public"})
    assert f"hard:{name}" in slices
    assert [s for s in slices if s.startswith("hard:")] == [f"hard:{name}"]  # and no other hard case
    assert slices[:2] == ["size:1-5 lines", "visibility:public"]


def test_patterns_in_comments_and_strings_do_not_count() -> None:
    text = 'function f() public {\n  // for (;;) a[1][2] x * 1e18 token.transfer(b)\n  s = "assembly { }";\n}'
    assert row_slices(text, {}) == ["size:1-5 lines", "visibility:unknown"]
    assert row_slices("function g(uint a) public { y = a * 3 + 1; }", {})[2:] == []


def test_slices_of_the_real_rows(dataset_500: Path) -> None:
    counts = Counter(s for r in _rows(dataset_500) for s in row_slices(r["output"], r["metadata"]))
    assert counts["visibility:public"] + counts["visibility:external"] == 500
    assert counts["size:1-5 lines"] + counts["size:6-15 lines"] + counts["size:16+ lines"] == 500
    # measured on this file: 100 external calls, 37 nested mappings, 33 loops, 20 fixed-point, 5 assembly
    assert 80 <= counts["hard:external calls"] <= 120
    assert 25 <= counts["hard:nested mappings"] <= 50
    assert 25 <= counts["hard:loops"] <= 45
    assert 10 <= counts["hard:fixed-point arithmetic"] <= 30
    assert 1 <= counts["hard:inline assembly"] <= 10
