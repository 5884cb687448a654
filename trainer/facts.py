"""Facts a function states, read from its parsed AST, and their F1 between prediction and reference.

Fact kinds (each a multiset of short strings; names lower-cased, outer underscores dropped, so
``_balances`` and ``balances`` agree):

* ``externalCalls``: the member name of each call that reads as external (``token.transfer``
  → ``transfer``; see ``solidity.is_external_call``);
* ``stateWrites``: the variable at the root of each assignment, ``++``/``--``, ``delete``,
  ``push``/``pop`` target that is not a parameter or a memory/calldata local;
* ``guards``: ``require``, ``assert``, ``revert`` and ``if-revert`` (an ``if`` whose body reverts);
* ``events``: the name of each emitted event;
* ``returns``: ``returns`` when the function declares or returns a value;
* ``visibility`` and ``mutability``: the declared ones (the parser's default when omitted).

The AST is unannotated (parse only), so these are syntactic facts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from tac2sol.trainer.solidity import is_external_call

FACT_KINDS = ("externalCalls", "stateWrites", "guards", "events", "returns", "visibility", "mutability")
Facts = dict[str, Counter[str]]


def _norm(name: str) -> str:
    return name.strip("_").lower()


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _root(expr: dict[str, Any] | None) -> str | None:
    """The identifier at the root of ``a[i].b[j]`` (``a``), or None (a call, a literal...)."""
    while expr is not None:
        kind = expr.get("nodeType")
        if kind == "Identifier":
            return str(expr["name"])
        if kind == "IndexAccess":
            expr = expr.get("baseExpression")
        elif kind in ("MemberAccess", "IndexRangeAccess"):
            expr = expr.get("expression") or expr.get("baseExpression")
        else:
            return None
    return None


def _targets(expr: dict[str, Any]) -> list[dict[str, Any]]:
    """Assignment targets: the components of ``(a, b) = ...`` or the expression itself."""
    if expr.get("nodeType") == "TupleExpression":
        return [c for c in expr.get("components", []) if c]
    return [expr]


def _reverts(statement: dict[str, Any] | None) -> dict[str, Any] | None:
    """The revert node a statement (or a block's direct statements) ends in, or None."""
    if statement is None:
        return None
    kind = statement.get("nodeType")
    if kind == "Block":
        for inner in statement.get("statements", []):
            found = _reverts(inner)
            if found is not None:
                return found
        return None
    if kind == "RevertStatement":
        return statement
    expr = statement.get("expression") or {}
    callee = expr.get("expression") or {}
    if (
        kind == "ExpressionStatement"
        and expr.get("nodeType") == "FunctionCall"
        and callee.get("name") == "revert"
    ):
        return expr  # the call node itself: its id marks it
    return None


def extract(function: dict[str, Any] | None) -> Facts:
    """The facts of one ``FunctionDefinition`` AST node; every kind empty for None."""
    facts: Facts = {kind: Counter() for kind in FACT_KINDS}
    if function is None:
        return facts
    local: set[str] = set()
    for decl in _walk([function.get("parameters"), function.get("returnParameters")]):
        if decl.get("nodeType") == "VariableDeclaration" and decl.get("name"):
            local.add(decl["name"])
    for node in _walk(function.get("body")):
        if node.get("nodeType") == "VariableDeclarationStatement":
            for decl in node.get("declarations", []):
                if decl and decl.get("storageLocation") != "storage":  # a storage pointer writes state
                    local.add(decl["name"])

    def write(expr: dict[str, Any] | None) -> None:
        name = _root(expr)
        if name is not None and name not in local:
            facts["stateWrites"][_norm(name)] += 1

    if function.get("returnParameters", {}).get("parameters"):
        facts["returns"]["returns"] += 1
    if function.get("visibility"):
        facts["visibility"][str(function["visibility"])] += 1
    if function.get("stateMutability"):
        facts["mutability"][str(function["stateMutability"])] += 1
    guarded: set[int] = set()  # reverts counted as part of an if-revert
    for node in _walk(function.get("body")):  # pre-order: an if comes before its body
        kind = node.get("nodeType")
        if kind == "IfStatement":
            revert = _reverts(node.get("trueBody"))
            if revert is not None:
                facts["guards"]["if-revert"] += 1
                guarded.add(id(revert))
        elif kind == "RevertStatement" and id(node) not in guarded:
            facts["guards"]["revert"] += 1
        elif kind == "Return" and node.get("expression") is not None and not facts["returns"]:
            facts["returns"]["returns"] += 1
        elif kind == "EmitStatement":
            callee = (node.get("eventCall") or {}).get("expression") or {}
            name = callee.get("name") or callee.get("memberName")
            if name:
                facts["events"][_norm(str(name))] += 1
        elif kind == "Assignment":
            for target in _targets(node.get("leftHandSide") or {}):
                write(target)
        elif kind == "UnaryOperation" and node.get("operator") in ("++", "--", "delete"):
            write(node.get("subExpression"))
        elif kind == "FunctionCall" and id(node) not in guarded:
            _call(node, facts, write)
    return facts


def _call(node: dict[str, Any], facts: Facts, write: Callable[[dict[str, Any] | None], None]) -> None:
    callee = node.get("expression") or {}
    if callee.get("nodeType") == "FunctionCallOptions":  # x.call{value: v}(...)
        callee = callee.get("expression") or {}
    if callee.get("nodeType") == "Identifier":
        if callee.get("name") in ("require", "assert", "revert"):
            facts["guards"][str(callee["name"])] += 1
        return
    if callee.get("nodeType") != "MemberAccess":
        return
    member = str(callee.get("memberName"))
    receiver = callee.get("expression") or {}
    if member in ("push", "pop"):
        write(receiver)
        return
    name = receiver.get("name") if receiver.get("nodeType") == "Identifier" else None
    if receiver.get("nodeType") == "MemberAccess" and _root(receiver) == "msg":
        name = None  # msg.sender.transfer(...)
    if is_external_call(name, member):
        facts["externalCalls"][_norm(member)] += 1


def f1(predicted: Counter[str], reference: Counter[str]) -> float:
    """Multiset F1; 1.0 when both are empty (agreeing that a fact is absent)."""
    if not predicted and not reference:
        return 1.0
    common = sum((predicted & reference).values())
    if common == 0:
        return 0.0
    precision = common / sum(predicted.values())
    recall = common / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def counts(predicted: Counter[str], reference: Counter[str]) -> tuple[int, int, int]:
    """(true positives, predicted, reference) for micro-averaged precision and recall."""
    return sum((predicted & reference).values()), sum(predicted.values()), sum(reference.values())
