"""Code-aware scores of predictions: signature match, syntax validity, fact-level F1.

* signature match: the prediction's canonical signature hashes (Keccak-256) to the row's
  ``metadata.selector`` (``solidity.py``); needs no reference text;
* syntax validity: the pinned solc parses the prediction wrapped in a contract (``solc.py``);
* fact F1 per kind (``facts.py``) from the same parse; a row whose reference does not parse is
  not measured, a prediction that does not parse states no facts.

Predictions and references are parsed in one batch (one node process). Where the compiler is
absent, syntax and facts are None ("not measured") with the reason, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tac2sol.trainer import facts as factlib
from tac2sol.trainer.solc import Solc, find_solc, missing_reason, parse_fragments
from tac2sol.trainer.solidity import signature_matches

_AUTO: Any = object()


@dataclass
class CodeScores:
    rows: list[dict[str, Any]]  # per row: signatureMatch, syntaxValid, syntaxError, facts
    summary: dict[str, Any]  # signatureMatch, syntax, facts


def _rate(values: Sequence[bool | None]) -> tuple[float | None, int]:
    measured = [v for v in values if v is not None]
    return (round(sum(measured) / len(measured), 4) if measured else None), len(measured)


def score_code(
    predictions: Sequence[str],
    references: Sequence[str],
    metadata: Sequence[dict[str, Any]],
    solc: Solc | None = _AUTO,
) -> CodeScores:
    """Score each prediction against its reference and metadata; ``solc`` None: not measured."""
    if solc is _AUTO:
        solc = find_solc()
    rows: list[dict[str, Any]] = []
    sig = [signature_matches(p, m.get("selector")) for p, m in zip(predictions, metadata, strict=True)]
    sig_ref = [signature_matches(r, m.get("selector")) for r, m in zip(references, metadata, strict=True)]
    rate, measured = _rate(sig)
    summary: dict[str, Any] = {
        "signatureMatch": {"rate": rate, "rows": measured, "referenceRate": _rate(sig_ref)[0]}
    }
    if measured == 0:
        summary["signatureMatch"]["notMeasured"] = "no row has metadata.selector"
    if solc is None:
        reason = missing_reason()
        summary["syntax"] = {"validRate": None, "rows": 0, "notMeasured": reason}
        summary["facts"] = {"notMeasured": reason}
        for s in sig:
            rows.append(
                {"signatureMatch": s, "syntaxValid": None, "facts": dict.fromkeys(factlib.FACT_KINDS)}
            )
        return CodeScores(rows, summary)
    sources = {f"p{i}": p for i, p in enumerate(predictions)} | {f"r{i}": r for i, r in enumerate(references)}
    parsed = parse_fragments(solc, sources)
    totals = {kind: [0, 0, 0] for kind in factlib.FACT_KINDS}  # true positives, predicted, reference
    row_f1: dict[str, list[float]] = {kind: [] for kind in factlib.FACT_KINDS}
    for i, s in enumerate(sig):
        pred, ref = parsed[f"p{i}"], parsed[f"r{i}"]
        # An empty prediction (or one without a function) parses inside the wrapper: not a valid function.
        has_function = pred.valid and pred.function() is not None
        row: dict[str, Any] = {"signatureMatch": s, "syntaxValid": has_function}
        if not pred.valid:
            row["syntaxError"] = pred.errors[0]
        elif not has_function:
            row["syntaxError"] = "no function, modifier or constructor in the prediction"
        row["facts"] = dict.fromkeys(factlib.FACT_KINDS)
        if ref.valid:
            pf = factlib.extract(pred.function() if pred.valid else None)
            rf = factlib.extract(ref.function())
            for kind in factlib.FACT_KINDS:
                score = factlib.f1(pf[kind], rf[kind])
                row["facts"][kind] = round(score, 4)
                row_f1[kind].append(score)
                for j, n in enumerate(factlib.counts(pf[kind], rf[kind])):
                    totals[kind][j] += n
        rows.append(row)
    valid_rate, n = _rate([r["syntaxValid"] for r in rows])
    summary["syntax"] = {
        "validRate": valid_rate,
        "rows": n,
        "referenceValidRate": _rate([parsed[f"r{i}"].valid for i in range(len(references))])[0],
        "parser": solc.describe(),
    }
    summary["facts"] = {kind: _micro(totals[kind], row_f1[kind]) for kind in factlib.FACT_KINDS}
    return CodeScores(rows, summary)


def _micro(total: list[int], per_row: list[float]) -> dict[str, Any]:
    """Micro-averaged precision/recall/F1 over rows, and the mean of the per-row F1."""
    tp, predicted, reference = total
    precision = tp / predicted if predicted else None
    recall = tp / reference if reference else None
    f1 = 2 * tp / (predicted + reference) if predicted + reference else None
    return {
        "precision": None if precision is None else round(precision, 4),
        "recall": None if recall is None else round(recall, 4),
        "f1": None if f1 is None else round(f1, 4),
        "meanRowF1": round(sum(per_row) / len(per_row), 4) if per_row else None,
        "rows": len(per_row),
        "referenceFacts": reference,
    }
