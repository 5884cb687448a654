"""Slices of a test set, computed from the reference Solidity and the row's metadata.

Every row belongs to one size slice and one visibility slice, and to each "hard case" slice
whose pattern its reference shows (the design doc's hard cases): fixed-point arithmetic,
nested mappings, external calls, loops, inline assembly. Patterns read the text with comments
and strings removed, so slices need no compiler and are the same on every machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tac2sol.trainer.solidity import is_external_call, strip_comments_and_strings

# A slice with fewer rows than this is marked "too few rows to judge" (eval.md, compare).
MIN_SLICE_ROWS = 30
SIZE_BUCKETS = ((5, "1-5 lines"), (15, "6-15 lines"), (None, "16+ lines"))

# 1e18, 10 ** 18, 10 ** decimals, 2 ** 112, 1000000 (and more zeros), 0x1000000, 1 ether
_CONST = (
    r"(?:\b\d+(?:\.\d+)?e\d+\b|\b10\s*\*\*\s*\(?\s*[\w.]+|\b2\s*\*\*\s*\d+"
    r"|\b1(?:_?0){6,}\b|\b0x10{6,}\b|\b\d+\s+ether\b)"
)
_FIXED_POINT = re.compile(
    rf"[*/]\s*\(?\s*{_CONST}|{_CONST}\s*\)?\s*[*/]|\.(?:mul|div|mulDiv)\s*\(\s*{_CONST}|(?:<<|>>)\s*\d+"
)
_MAPPING_OF_MAPPING = re.compile(r"\bmapping\s*\([^;{}]*?=>\s*mapping\b")
_INDEXED = re.compile(r"[\w$\])]\s*\[")
_LOOP = re.compile(r"\b(?:for|while)\s*\(|\bdo\s*\{")
_ASSEMBLY = re.compile(r"\bassembly\b\s*(?:\"[^\"]*\"\s*)?(?:\([^)]*\)\s*)?\{")
_MEMBER_CALL = re.compile(r"(?:([A-Za-z_$][\w$]*)|[\])])\s*\.\s*([A-Za-z_$][\w$]*)\s*(?:\{[^{}]*\}\s*)?\(")


def size_bucket(solidity: str) -> str:
    """The size slice of a function: its non-blank lines, in three buckets."""
    lines = len([line for line in solidity.strip().splitlines() if line.strip()])
    for limit, name in SIZE_BUCKETS:
        if limit is None or lines <= limit:
            return name
    raise AssertionError("unreachable")


def _nested_index(text: str) -> bool:
    """``x[a][b]``: an index whose result is indexed again (a nested mapping or a 2-D array)."""
    for match in _INDEXED.finditer(text):
        depth = 0
        for i in range(match.end() - 1, len(text)):
            depth += {"[": 1, "]": -1}.get(text[i], 0)
            if depth == 0:
                if text[i + 1 :].lstrip().startswith("["):
                    return True
                break
    return False


def has_external_call(text: str) -> bool:
    return any(is_external_call(m.group(1), m.group(2)) for m in _MEMBER_CALL.finditer(text))


HARD_CASES: dict[str, Callable[[str], bool]] = {
    "fixed-point arithmetic": lambda t: bool(_FIXED_POINT.search(t)),
    "nested mappings": lambda t: bool(_MAPPING_OF_MAPPING.search(t)) or _nested_index(t),
    "external calls": has_external_call,
    "loops": lambda t: bool(_LOOP.search(t)),
    "inline assembly": lambda t: bool(_ASSEMBLY.search(t)),
}


def row_slices(reference: str, metadata: Mapping[str, Any]) -> list[str]:
    """The slices a row belongs to, e.g. ``["size:1-5 lines", "visibility:public", "hard:loops"]``."""
    text = strip_comments_and_strings(reference)
    out = [f"size:{size_bucket(reference)}", f"visibility:{metadata.get('visibility') or 'unknown'}"]
    out += [f"hard:{name}" for name, test in HARD_CASES.items() if test(text)]
    return out
