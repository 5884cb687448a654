"""Solidity read as text: comments stripped, the function header, canonical signature and selector.

No compiler here (that is ``solc.py``): the signature check and the slices work on any machine.
The function selector is the first 4 bytes of the Keccak-256 hash of the canonical signature
``name(type1,type2)`` (Solidity ABI spec): ``uint`` is ``uint256``, ``address payable`` is
``address``, data locations and parameter names are dropped.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

# Calls ``x.f(...)`` that are not external calls: built-in namespaces as the receiver, and the
# helpers that the common libraries attach with ``using ... for`` (OpenZeppelin's SafeMath,
# Counters, EnumerableSet/Map, Strings, ECDSA) or that arrays have. Shared by the fact
# extraction (``facts.py``, on the AST) and the external-call slice (here, on the text).
BUILTIN_RECEIVERS = frozenset({"abi", "msg", "block", "tx", "super", "string", "bytes", "type"})
# A CamelCase receiver (``SafeMath.add``, ``MerkleProof.verify``) names a library: internal code.
_LIBRARY_NAME = re.compile(r"^[A-Z][a-z0-9]\w*$")
LIBRARY_HELPERS = frozenset(
    {
        "add", "sub", "mul", "div", "mod", "tryAdd", "trySub", "tryMul", "tryDiv", "tryMod",
        "current", "increment", "decrement", "reset", "push", "pop", "concat",
        "toString", "toHexString", "recover", "toEthSignedMessageHash", "isContract",
        "contains", "length", "at", "values", "remove",
    }
)  # fmt: skip
LOW_LEVEL_CALLS = frozenset({"call", "delegatecall", "staticcall", "send", "transfer"})

_COMMENTS_AND_STRINGS = re.compile(
    r"""//[^\n]*|/\*.*?\*/|(?:hex|unicode)?"(?:\\.|[^"\\\n])*"|(?:hex|unicode)?'(?:\\.|[^'\\\n])*'""",
    re.DOTALL,
)
_IDENT = r"[A-Za-z_$][\w$]*"
_FUNCTION = re.compile(rf"\bfunction\s+({_IDENT})\s*\(")
_PARAM = re.compile(
    rf"""^(?P<base>address\s+payable|{_IDENT}(?:\s*\.\s*{_IDENT})*)\s*
         (?P<dims>(?:\[[^\[\]]*\]\s*)*)
         (?:(?:memory|storage|calldata)\b\s*)?
         (?:{_IDENT})?$""",
    re.VERBOSE,
)
_ELEMENTARY = re.compile(r"^(?:u?int(?:\d+)?|bytes(?:\d+)?|byte|string|bool|address|u?fixed(?:\d+x\d+)?)$")
_ALIASES = {
    "uint": "uint256",
    "int": "int256",
    "byte": "bytes1",
    "fixed": "fixed128x18",
    "ufixed": "ufixed128x18",
}
# A user-defined parameter type is a contract/interface (ABI type address) or an enum (uint8)
# in almost every verified contract; a struct (a tuple) cannot be resolved from a fragment.
USER_TYPE_CANDIDATES = ("address", "uint8")
_MAX_USER_TYPES = 4  # 2**4 candidate signatures at most


def strip_comments_and_strings(source: str) -> str:
    """``source`` with comments removed and string literals replaced by ``""`` (offsets change)."""
    return _COMMENTS_AND_STRINGS.sub(lambda m: " " if m.group(0).startswith("/") else '""', source)


@dataclass(frozen=True)
class Header:
    """The first named function of a text: its name and raw parameter texts."""

    name: str
    params: tuple[str, ...]


def function_header(source: str) -> Header | None:
    """The name and parameters of the first ``function NAME(...)`` in ``source``, or None."""
    text = strip_comments_and_strings(source)
    match = _FUNCTION.search(text)
    if match is None:
        return None
    depth, start = 0, match.end() - 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            inner = text[start + 1 : i]
            break
    else:
        return None
    params: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in inner:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            params.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        params.append("".join(current).strip())
    return Header(match.group(1), tuple(" ".join(p.split()) for p in params))


def canonical_type(param: str) -> str | None:
    """The ABI type of one parameter text (``uint[] memory xs`` → ``uint256[]``).

    A user-defined type comes back as its name prefixed with ``@``; None when the text is not
    a parameter this reader understands (a mapping or function type, a non-literal array size).
    """
    match = _PARAM.match(param.strip())
    if match is None:
        return None
    base = re.sub(r"\s+", "", match.group("base"))
    dims = re.sub(r"\s+", "", match.group("dims"))
    if any(size and not size.isdigit() for size in re.findall(r"\[([^\]]*)\]", dims)):
        return None
    if base == "addresspayable":
        base = "address"
    elif _ELEMENTARY.match(base):
        base = _ALIASES.get(base, base)
    else:
        base = "@" + base
    return base + dims


def candidate_signatures(source: str) -> list[str]:
    """Canonical signatures the first function of ``source`` can have; [] when there is none.

    Several when parameters have user-defined types: each such type may be a contract
    (``address``) or an enum (``uint8``); a fragment does not say which.
    """
    header = function_header(source)
    if header is None:
        return []
    types = [canonical_type(p) for p in header.params]
    if any(t is None for t in types):
        return []
    user = sorted({re.sub(r"\[.*", "", t)[1:] for t in types if t and t.startswith("@")})
    if len(user) > _MAX_USER_TYPES:
        return []
    out = []
    for choice in itertools.product(USER_TYPE_CANDIDATES, repeat=len(user)):
        resolved = dict(zip(user, choice, strict=True))
        abi = [
            resolved[t[1:].split("[")[0]] + t[1:][len(t[1:].split("[")[0]) :] if t.startswith("@") else t
            for t in types
            if t is not None
        ]
        out.append(f"{header.name}({','.join(abi)})")
    return out


def selector(signature: str) -> str:
    """``0x`` + the first 4 bytes of Keccak-256 of ``signature`` (``transfer(address,uint256)``)."""
    from Crypto.Hash import keccak

    return "0x" + keccak.new(digest_bits=256, data=signature.encode()).hexdigest()[:8]


def signature_matches(source: str, expected_selector: str | None) -> bool | None:
    """Whether the first function of ``source`` has the selector ``expected_selector``.

    None when there is no selector to check against; False when ``source`` has no function
    header this reader understands.
    """
    if not expected_selector:
        return None
    want = expected_selector.lower()
    want = want if want.startswith("0x") else "0x" + want
    return any(selector(sig) == want for sig in candidate_signatures(source))


def is_external_call(receiver: str | None, member: str) -> bool:
    """Whether ``receiver.member(...)`` reads as an external call.

    ``receiver`` is the receiver's identifier, or None when it is an expression (a cast such as
    ``IERC20(token)``, an index such as ``pools[i]``), which is always a contract or address.
    Syntactic: a library's function reached through ``using ... for`` on a name not listed in
    ``LIBRARY_HELPERS`` counts as external; ``Address.sendValue`` (a library) does not.
    """
    if receiver is not None and receiver in BUILTIN_RECEIVERS:
        return False
    if member in LOW_LEVEL_CALLS:
        return True
    if receiver is not None and _LIBRARY_NAME.match(receiver):
        return False
    return member not in LIBRARY_HELPERS
