"""The project's own SYNTHETIC sample data: TAC → Solidity pairs for simple functions.

Made by code (no row comes from a real contract) so that the local tour needs nothing that the
project may not redistribute. Each "contract" gets a random storage layout; each function is
rendered twice from one description, once as Solidity and once as TAC in the style of the
lifter that built ``../shared/datasets/tac2sol-500.jsonl`` (blocks, ``temp_N`` values, a
selector comment). About one row in five gets ``stack_underflow`` markers in its TAC, like the
real lifter's artefacts, so that preflight has something to count.

Every row says what it is: ``metadata.synthetic = true`` and ``metadata.source =
"tac2sol-synthetic"``. Selectors are the first 4 bytes of SHA3-256 of the signature (stdlib;
real EVM selectors use Keccak-256), another reason nobody should mistake these rows for real.
Deterministic: the same seed gives byte-identical output.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GENERATOR = "tac2sol.tour.sample/1"
SOURCE = "tac2sol-synthetic"
DEFAULT_PATH = Path(".cache/sample/tac2sol-sample.jsonl")
DEFAULT_CONTRACTS = 90
DEFAULT_SEED = 1234
ADDRESS_MASK = "ffffffffffffffffffffffffffffffffffffffff"

_UINT_VARS = [
    "fee",
    "limit",
    "rate",
    "cap",
    "threshold",
    "price",
    "reward",
    "delay",
    "count",
    "supply",
    "minAmount",
    "maxAmount",
    "interval",
    "deadline",
    "bonus",
    "quota",
    "epoch",
    "nonce",
]
_ADDR_VARS = ["owner", "admin", "treasury", "operator", "router", "oracle", "manager", "vault"]
_BOOL_VARS = ["paused", "locked", "active", "frozen", "enabled", "finalized"]
_MAP_VARS = ["balances", "deposits", "stakes", "credits", "rewards", "shares", "points", "claims"]
_CONTRACTS = [
    "Token",
    "Vault",
    "Staking",
    "Registry",
    "Treasury",
    "Auction",
    "Lottery",
    "Escrow",
    "Crowdsale",
    "Faucet",
    "Bank",
    "Pool",
    "Market",
    "Airdrop",
    "Timelock",
    "Wallet",
]
_ERRORS = [
    "not owner",
    "not allowed",
    "too high",
    "too low",
    "insufficient balance",
    "paused",
    "zero address",
    "invalid amount",
    "already set",
    "not active",
    "locked",
]
_ARITH = {
    "add": ("+", "add"),
    "sub": ("-", "sub"),
    "mul": ("*", "mul"),
    "div": ("/", "div"),
    "mod": ("%", "mod"),
}


def _selector(signature: str) -> str:
    return hashlib.sha3_256(signature.encode()).hexdigest()[:8]


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


@dataclass
class _Tac:
    """Writes lifter-style TAC: numbered temps, hex block labels, successor comments."""

    rng: random.Random
    temp: int = 0
    pc: int = 0
    blocks: list[tuple[str, list[str], list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.temp = self.rng.randrange(100, 3000)
        self.pc = self.rng.randrange(0x0100, 0x0800)

    def t(self) -> str:
        self.temp += 1
        return f"temp_{self.temp}"

    def label(self) -> str:
        self.pc += self.rng.randrange(0x10, 0x180)
        return f"block_{self.pc:04x}"

    def set(self, lines: list[str], expr: str) -> str:
        name = self.t()
        lines.append(f"{name} = {expr}")
        return name

    def block(self, label: str, lines: list[str], successors: list[str]) -> None:
        self.blocks.append((label, lines, successors))

    def render(self, selector: str) -> str:
        out = [
            f"function selector_{selector}:",
            f"  // Selector: 0x{selector}",
            f"  // Entry block: {self.blocks[0][0]}",
        ]
        preds: dict[str, list[str]] = {}
        for label, _, succ in self.blocks:
            for s in succ:
                preds.setdefault(s, []).append(label)
        for label, lines, succ in self.blocks:
            out.append(f"  {label}:")
            if label in preds:
                out.append(f"    // Predecessors: {', '.join(preds[label])}")
            if succ:
                out.append(f"    // Successors: {', '.join(succ)}")
            out.extend(f"    {line}" for line in lines)
            out.append("")
        return "\n".join(out).rstrip()


@dataclass
class _Fn:
    """One function: its Solidity text, its TAC, and the facts metadata needs."""

    kind: str
    name: str
    signature: str
    solidity: str
    tac: str
    visibility: str
    is_view: bool
    is_payable: bool


class _Contract:
    def __init__(self, rng: random.Random, index: int) -> None:
        self.rng = rng
        self.name = f"{rng.choice(_CONTRACTS)}{index}"
        self.address = "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))
        slots = list(range(12))
        rng.shuffle(slots)
        self.slot: dict[str, int] = {}
        for pool, k in ((_ADDR_VARS, 1), (_UINT_VARS, 3), (_BOOL_VARS, 1), (_MAP_VARS, 2)):
            for var in rng.sample(pool, k):
                self.slot[var] = slots.pop()
        self.owner = next(v for v in self.slot if v in _ADDR_VARS)
        self.uints = [v for v in self.slot if v in _UINT_VARS]
        self.flag = next(v for v in self.slot if v in _BOOL_VARS)
        self.maps = [v for v in self.slot if v in _MAP_VARS]

    # -- TAC building blocks -------------------------------------------------------------------
    def _entry(self, tac: _Tac, nargs: int, payable: bool) -> tuple[list[str], list[str]]:
        """Call-value and calldata-size checks; returns the next block's lines and arg temps."""
        lines: list[str] = []
        label = tac.label()
        if not payable:
            cv = tac.set(lines, "callvalue")
            ok = tac.set(lines, f"!({cv})")
            nxt = tac.label()
            dest = tac.set(lines, nxt[6:])
            lines.append(f"if {ok} goto {dest}")
            tac.block(label, lines, [nxt])
            tac.block(tac.label(), ["revert(0, 0)"], [])
            label, lines = nxt, []
        args: list[str] = []
        if nargs:
            size = tac.set(lines, "calldatasize")
            need = tac.set(lines, f"{4 + 32 * nargs:02x}")
            short = tac.set(lines, f"{size} - 04 < {need}")
            ok = tac.set(lines, f"!({short})")
            nxt = tac.label()
            dest = tac.set(lines, nxt[6:])
            lines.append(f"if {ok} goto {dest}")
            tac.block(label, lines, [nxt])
            label, lines = nxt, []
            for i in range(nargs):
                off = tac.set(lines, f"{4 + 32 * i:02x}")
                args.append(tac.set(lines, f"calldata[{off}]"))
        tac.blocks.append((label, lines, []))
        return lines, args

    def _sload(self, tac: _Tac, lines: list[str], var: str) -> str:
        slot = tac.set(lines, f"{self.slot[var]:02x}")
        return tac.set(lines, f"storage[{slot}]")

    def _map_slot(self, tac: _Tac, lines: list[str], var: str, key: str) -> str:
        zero = tac.set(lines, "00")
        lines.append(f"memory[{zero}] = {key}")
        slot = tac.set(lines, f"{self.slot[var]:02x}")
        lines.append(f"memory[20] = {slot}")
        return tac.set(lines, f"keccak256(memory[{zero}:40])")

    def _require(self, tac: _Tac, lines: list[str], cond: str, message: str | None) -> list[str]:
        """Branch to a revert block unless ``cond``; returns the lines of the continuation."""
        nxt = tac.label()
        dest = tac.set(lines, nxt[6:])
        lines.append(f"if {cond} goto {dest}")
        label = tac.blocks[-1][0]
        tac.blocks[-1] = (label, lines, [nxt])
        fail: list[str] = []
        if message is not None:
            ptr = tac.set(fail, "80")
            fail.append(f"memory[{ptr}] = 08c379a0")
            fail.append(f"memory[{ptr} + 44] = {message.encode().hex()}")
            fail.append(f"revert({ptr}, 64)")
        else:
            fail.append("revert(0, 0)")
        tac.block(tac.label(), fail, [])
        rest: list[str] = []
        tac.block(nxt, rest, [])
        return rest

    def _only_owner(self, tac: _Tac, lines: list[str], message: str | None) -> list[str]:
        who = self._sload(tac, lines, self.owner)
        mask = tac.set(lines, ADDRESS_MASK)
        owner = tac.set(lines, f"{mask} & {who}")
        caller = tac.set(lines, "caller")
        same = tac.set(lines, f"{caller} == {owner}")
        return self._require(tac, lines, same, message)

    def _return(self, tac: _Tac, lines: list[str], value: str | None) -> None:
        if value is None:
            lines.append("stop")
            return
        ptr = tac.set(lines, "40")
        free = tac.set(lines, f"memory[{ptr}]")
        lines.append(f"memory[{free}] = {value}")
        lines.append(f"return({free}, 20)")

    # -- function kinds ------------------------------------------------------------------------
    def getter(self, tac: _Tac) -> _Fn:
        var, typ = self.rng.choice(
            [(u, "uint256") for u in self.uints] + [(self.owner, "address"), (self.flag, "bool")]
        )
        vis = self.rng.choice(["public", "external"])
        name = self.rng.choice([var, f"get{_cap(var)}"]) if typ != "bool" else f"is{_cap(var)}"
        lines, _ = self._entry(tac, 0, payable=False)
        value = self._sload(tac, lines, var)
        if typ == "address":
            mask = tac.set(lines, ADDRESS_MASK)
            value = tac.set(lines, f"{mask} & {value}")
        elif typ == "bool":
            value = tac.set(lines, f"!(!({value} & ff))")
        self._return(tac, lines, value)
        sol = f"function {name}() {vis} view returns ({typ}) {{\n    return {var};\n}}"
        return _Fn("getter", name, f"{name}()", sol, "", vis, True, False)

    def map_getter(self, tac: _Tac) -> _Fn:
        var = self.rng.choice(self.maps)
        name = self.rng.choice([f"{var}Of", f"get{_cap(var)}", f"{var[:-1]}Of"])
        arg = self.rng.choice(["account", "user", "who", "holder"])
        vis = self.rng.choice(["public", "external"])
        lines, args = self._entry(tac, 1, payable=False)
        mask = tac.set(lines, ADDRESS_MASK)
        key = tac.set(lines, f"{mask} & {args[0]}")
        slot = self._map_slot(tac, lines, var, key)
        self._return(tac, lines, tac.set(lines, f"storage[{slot}]"))
        sol = f"function {name}(address {arg}) {vis} view returns (uint256) {{\n    return {var}[{arg}];\n}}"
        return _Fn("map_getter", name, f"{name}(address)", sol, "", vis, True, False)

    def setter(self, tac: _Tac) -> _Fn:
        var = self.rng.choice(self.uints)
        name = f"set{_cap(var)}"
        arg = self.rng.choice([f"new{_cap(var)}", f"_{var}", "value"])
        vis = self.rng.choice(["public", "external"])
        message = self.rng.choice([None, "not owner", "not allowed"])
        bound = self.rng.choice([None, None, self.rng.choice([10, 100, 1000, 10000])])
        lines, args = self._entry(tac, 1, payable=False)
        lines = self._only_owner(tac, lines, message)
        body = [f"    require(msg.sender == {self.owner}" + (f', "{message}");' if message else ");")]
        if bound is not None:
            limit = tac.set(lines, f"{bound:02x}")
            gt = tac.set(lines, f"{args[0]} > {limit}")
            err = self.rng.choice(["too high", "invalid amount"])
            lines = self._require(tac, lines, tac.set(lines, f"!({gt})"), err)
            body.append(f'    require({arg} <= {bound}, "{err}");')
        slot = tac.set(lines, f"{self.slot[var]:02x}")
        lines.append(f"storage[{slot}] = {args[0]}")
        self._return(tac, lines, None)
        body.append(f"    {var} = {arg};")
        sol = f"function {name}(uint256 {arg}) {vis} {{\n" + "\n".join(body) + "\n}"
        return _Fn("setter", name, f"{name}(uint256)", sol, "", vis, False, False)

    def toggle(self, tac: _Tac) -> _Fn:
        value = self.rng.choice([True, False])
        verbs = {True: ["pause", "lock", "enable", "activate"], False: ["unpause", "unlock", "disable"]}
        name = self.rng.choice(verbs[value])
        vis = self.rng.choice(["public", "external"])
        lines, _ = self._entry(tac, 0, payable=False)
        lines = self._only_owner(tac, lines, None)
        slot = tac.set(lines, f"{self.slot[self.flag]:02x}")
        old = tac.set(lines, f"storage[{slot}]")
        cleared = tac.set(lines, f"{old} & ~ff")
        lines.append(f"storage[{slot}] = {cleared} | {'01' if value else '00'}")
        self._return(tac, lines, None)
        sol = (
            f"function {name}() {vis} {{\n    require(msg.sender == {self.owner});\n"
            f"    {self.flag} = {'true' if value else 'false'};\n}}"
        )
        return _Fn("toggle", name, f"{name}()", sol, "", vis, False, False)

    def arith(self, tac: _Tac) -> _Fn:
        op_name = self.rng.choice(list(_ARITH))
        op, verb = _ARITH[op_name]
        a, b = self.rng.choice([("a", "b"), ("x", "y"), ("left", "right")])
        name = self.rng.choice([verb, f"safe{_cap(verb)}", f"{verb}Values"])
        vis = self.rng.choice(["public", "external"])
        lines, args = self._entry(tac, 2, payable=False)
        if op in "/%":
            zero = tac.set(lines, f"!({args[1]})")
            lines = self._require(tac, lines, tac.set(lines, f"!({zero})"), None)
        elif op in "+*":
            res = tac.set(lines, f"{args[0]} {op} {args[1]}")
            over = tac.set(lines, f"{res} < {args[0]}" if op == "+" else f"{res} / {args[0]} != {args[1]}")
            lines = self._require(tac, lines, tac.set(lines, f"!({over})"), None)
        else:
            under = tac.set(lines, f"{args[0]} < {args[1]}")
            lines = self._require(tac, lines, tac.set(lines, f"!({under})"), None)
        self._return(tac, lines, tac.set(lines, f"{args[0]} {op} {args[1]}"))
        sol = (
            f"function {name}(uint256 {a}, uint256 {b}) {vis} pure returns (uint256) {{\n"
            f"    return {a} {op} {b};\n}}"
        )
        return _Fn("arith", name, f"{name}(uint256,uint256)", sol, "", vis, True, False)

    def deposit(self, tac: _Tac) -> _Fn:
        var = self.rng.choice(self.maps)
        name = self.rng.choice(["deposit", "fund", "contribute", "stake"])
        vis = self.rng.choice(["public", "external"])
        minimum = self.rng.choice([None, None, self.rng.choice([1, 100, 1000])])
        lines, _ = self._entry(tac, 0, payable=True)
        body = []
        value = tac.set(lines, "callvalue")
        if minimum is not None:
            low = tac.set(lines, f"{value} < {minimum:02x}")
            lines = self._require(tac, lines, tac.set(lines, f"!({low})"), "too low")
            body.append(f'    require(msg.value >= {minimum}, "too low");')
        caller = tac.set(lines, "caller")
        slot = self._map_slot(tac, lines, var, caller)
        old = tac.set(lines, f"storage[{slot}]")
        lines.append(f"storage[{slot}] = {old} + {value}")
        self._return(tac, lines, None)
        body.append(f"    {var}[msg.sender] += msg.value;")
        sol = f"function {name}() {vis} payable {{\n" + "\n".join(body) + "\n}"
        return _Fn("deposit", name, f"{name}()", sol, "", vis, False, True)

    def transfer(self, tac: _Tac) -> _Fn:
        var = self.rng.choice(self.maps)
        name = self.rng.choice(["transfer", "send", "move", f"transfer{_cap(var)}"])
        to, amount = self.rng.choice([("to", "amount"), ("recipient", "value"), ("dst", "wad")])
        vis = self.rng.choice(["public", "external"])
        message = self.rng.choice(["insufficient balance", "invalid amount", None])
        returns = self.rng.choice([True, False])
        lines, args = self._entry(tac, 2, payable=False)
        caller = tac.set(lines, "caller")
        src = self._map_slot(tac, lines, var, caller)
        have = tac.set(lines, f"storage[{src}]")
        low = tac.set(lines, f"{have} < {args[1]}")
        lines = self._require(tac, lines, tac.set(lines, f"!({low})"), message)
        lines.append(f"storage[{src}] = {have} - {args[1]}")
        mask = tac.set(lines, ADDRESS_MASK)
        dst_key = tac.set(lines, f"{mask} & {args[0]}")
        dst = self._map_slot(tac, lines, var, dst_key)
        old = tac.set(lines, f"storage[{dst}]")
        lines.append(f"storage[{dst}] = {old} + {args[1]}")
        self._return(tac, lines, tac.set(lines, "01") if returns else None)
        req = f"require({var}[msg.sender] >= {amount}" + (f', "{message}");' if message else ");")
        sol = (
            f"function {name}(address {to}, uint256 {amount}) {vis}"
            + (" returns (bool)" if returns else "")
            + " {\n"
            f"    {req}\n    {var}[msg.sender] -= {amount};\n    {var}[{to}] += {amount};\n"
            + ("    return true;\n" if returns else "")
            + "}"
        )
        return _Fn("transfer", name, f"{name}(address,uint256)", sol, "", vis, False, False)

    def increment(self, tac: _Tac) -> _Fn:
        var = self.rng.choice(self.uints)
        step = self.rng.choice([1, 1, 2, 5, 10])
        name = self.rng.choice([f"increment{_cap(var)}", f"bump{_cap(var)}", f"increase{_cap(var)}"])
        vis = self.rng.choice(["public", "external"])
        lines, _ = self._entry(tac, 0, payable=False)
        old = self._sload(tac, lines, var)
        new = tac.set(lines, f"{old} + {step:02x}")
        slot = tac.set(lines, f"{self.slot[var]:02x}")
        lines.append(f"storage[{slot}] = {new}")
        self._return(tac, lines, None)
        sol = f"function {name}() {vis} {{\n    {var} += {step};\n}}"
        return _Fn("increment", name, f"{name}()", sol, "", vis, False, False)

    def kinds(self) -> list[Callable[[_Tac], _Fn]]:
        return [
            self.getter,
            self.map_getter,
            self.setter,
            self.toggle,
            self.arith,
            self.deposit,
            self.transfer,
            self.increment,
        ]


def _inject_underflow(tac: str, rng: random.Random) -> str:
    """Replace a few operand temps with ``stack_underflow``, as the real lifter sometimes does."""
    lines = tac.split("\n")
    candidates = [i for i, line in enumerate(lines) if " = temp_" in line or " + temp_" in line]
    for i in rng.sample(candidates, min(len(candidates), rng.randint(1, 3))):
        head, _, tail = lines[i].partition(" = ")
        words = tail.split(" ")
        j = next((k for k, w in enumerate(words) if w.startswith("temp_")), None)
        if j is not None:
            words[j] = "stack_underflow"
        lines[i] = f"{head} = {' '.join(words)}"
    return "\n".join(lines)


def generate_rows(contracts: int = DEFAULT_CONTRACTS, seed: int = DEFAULT_SEED) -> Iterator[dict[str, Any]]:
    """Yield synthetic rows ``{"input", "output", "metadata"}``, deterministically from ``seed``."""
    rng = random.Random(seed)
    for index in range(contracts):
        contract = _Contract(rng, index)
        kinds = contract.kinds()
        chosen = rng.sample(kinds, rng.randint(3, 6))
        seen: set[str] = set()
        for make in chosen:
            tac = _Tac(rng)
            fn = make(tac)
            if fn.signature in seen:
                continue
            seen.add(fn.signature)
            selector = _selector(fn.signature)
            text = tac.render(selector)
            underflow = rng.random() < 0.2
            if underflow:
                text = _inject_underflow(text, rng)
            yield {
                "input": text,
                "output": fn.solidity,
                "metadata": {
                    "synthetic": True,
                    "generator": GENERATOR,
                    "source": SOURCE,
                    "kind": fn.kind,
                    "schema_version": 1,
                    "body_hash": hashlib.md5(fn.solidity.encode()).hexdigest(),
                    "contract_address": contract.address,
                    "contract_name": contract.name,
                    "compiled_contract": contract.name,
                    "compiler_version": "synthetic",
                    "function_name": fn.name,
                    "function_signature": f"function {fn.signature}",
                    "selector": f"0x{selector}",
                    "selector_hash": "sha3-256 (synthetic; EVM uses keccak-256)",
                    "visibility": fn.visibility,
                    "is_view": fn.is_view,
                    "is_payable": fn.is_payable,
                    "injected_stack_underflow": underflow,
                },
            }


def write_sample(
    path: Path = DEFAULT_PATH, contracts: int = DEFAULT_CONTRACTS, seed: int = DEFAULT_SEED
) -> Path:
    """Write the sample JSONL (atomically) unless an identical one is already there."""
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in generate_rows(contracts, seed))
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
