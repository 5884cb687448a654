"""``tac2sol compare``: runs evaluated on one test set, each candidate against the first (baseline).

Rows are paired by their stable id (``evalfile.py``); per metric and per slice the mean of each
run, the paired difference with its bootstrap interval, wins/ties/losses (``stats.py``). The
decision per candidate reads the primary metric over all rows. Gates turn the comparison into
an exit code for CI: a slice (with enough rows) that loses more than a margin with significance,
an overall metric that does, or a candidate that is not a keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tac2sol.errors import InvalidInput
from tac2sol.trainer.evalfile import METRIC_BY_NAME, METRICS, EvalRun, load_eval
from tac2sol.trainer.stats import KEEP, LEVEL, RESAMPLES, paired

COMPARE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Gates:
    slice_loss: float | None = None  # no slice with n >= min_rows may lose more than this, significantly
    losses: dict[str, float] = field(default_factory=dict)  # metric -> allowed significant overall loss
    require_keep: bool = False
    min_rows: int = 30


def _names(dirs: Sequence[Path]) -> list[str]:
    """A run's name per directory: ``qwen32b/eval`` is qwen32b, ``qwen32b/eval-test-set-base`` is
    qwen32b-test-set-base (the evaluations a run writes, ``evaluate.evaluate_run``)."""
    names: list[str] = []
    for d in dirs:
        if d.name.startswith("eval") and d.parent.name:
            name = d.parent.name + d.name.removeprefix("eval")
        else:
            name = d.name or str(d)
        names.append(name if name not in names else f"{name}#{len(names) + 1}")
    return names


def load_runs(dirs: Sequence[Path]) -> list[EvalRun]:
    if len(dirs) < 2:
        raise InvalidInput("compare: give at least two evaluation directories (a baseline and a candidate)")
    return [load_eval(d, name) for d, name in zip(dirs, _names(dirs), strict=True)]


def common_rows(runs: Sequence[EvalRun], intersect: bool) -> tuple[list[str], str | None]:
    """The row ids every run has, in the baseline's order, and a note when rows were dropped."""
    base = runs[0]
    shared = set(base.rows)
    for run in runs[1:]:
        shared &= set(run.rows)
    differ = [run for run in runs[1:] if set(run.rows) != set(base.rows)]
    if differ and not intersect:
        other = differ[0]
        raise InvalidInput(
            f"{other.path} and {base.path} were evaluated on different rows ({len(other.rows)} and "
            f"{len(base.rows)}, {len(set(other.rows) & set(base.rows))} in common); evaluate both on one "
            "test set, or pass --intersect to compare the common rows only"
        )
    if not shared:
        raise InvalidInput(f"--intersect: {', '.join(str(r.path) for r in runs)} have no row in common")
    ids = [i for i in base.rows if i in shared]
    note = None
    if differ:
        note = f"--intersect kept {len(ids)} rows that every run has ({len(base.rows)} in {base.name})"
    return ids, note


def _pair(
    base: EvalRun, cand: EvalRun, ids: Sequence[str], metric: str, *, min_rows: int, seed: int, resamples: int
) -> dict[str, Any]:
    a, b = [], []
    for i in ids:
        x, y = base.rows[i]["metrics"].get(metric), cand.rows[i]["metrics"].get(metric)
        if x is not None and y is not None:
            a.append(x)
            b.append(y)
    m = METRIC_BY_NAME[metric]
    result = paired(
        a, b, higher_is_better=m.higher_is_better, min_rows=min_rows, seed=seed, resamples=resamples
    )
    return {"metric": metric, "label": m.label, "higherIsBetter": m.higher_is_better, **result.to_json()}


def compare_runs(
    runs: Sequence[EvalRun],
    *,
    intersect: bool = False,
    primary: str = "similarity",
    min_rows: int = 30,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """The comparison as plain data (what ``-o json`` prints and the reports read)."""
    if primary not in METRIC_BY_NAME:
        raise InvalidInput(f"--metric: {primary!r} is not one of {', '.join(METRIC_BY_NAME)}")
    ids, note = common_rows(runs, intersect)
    base = runs[0]
    slices: dict[str, list[str]] = {}
    for i in ids:
        for name in base.rows[i]["slices"]:
            slices.setdefault(str(name), []).append(i)
    candidates = []
    for cand in runs[1:]:
        kw = {"min_rows": min_rows, "seed": seed, "resamples": resamples}
        metrics = {m.name: _pair(base, cand, ids, m.name, **kw) for m in METRICS}
        by_slice = {
            name: {m.name: _pair(base, cand, members, m.name, **kw) for m in METRICS}
            for name, members in sorted(slices.items())
        }
        candidates.append(
            {
                "name": cand.name,
                "path": str(cand.path),
                "decision": metrics[primary]["decision"],
                "metrics": metrics,
                "slices": by_slice,
            }
        )
    return {
        "schemaVersion": COMPARE_SCHEMA_VERSION,
        "baseline": {"name": base.name, "path": str(base.path)},
        "rows": len(ids),
        "note": note,
        "primaryMetric": primary,
        "minRows": min_rows,
        "confidence": LEVEL,
        "resamples": resamples,
        "seed": seed,
        "candidates": candidates,
    }


def _significant_loss(p: dict[str, Any], margin: float) -> bool:
    """The candidate is worse by more than ``margin`` on average, and the interval excludes 0."""
    if p["n"] == 0:
        return False
    loss = -p["diff"] if p["higherIsBetter"] else p["diff"]
    significant = p["high"] < 0 if p["higherIsBetter"] else p["low"] > 0
    return significant and loss > margin


def check_gates(result: dict[str, Any], gates: Gates) -> list[dict[str, Any]]:
    """One record per gate and candidate: ``{"gate", "candidate", "passed", "detail"}``."""
    out = []
    primary = result["primaryMetric"]
    for cand in result["candidates"]:
        if gates.slice_loss is not None:
            losing = [
                f"{name} ({p['diff']:+.4f}, n={p['n']})"
                for name, per_metric in cand["slices"].items()
                if (p := per_metric[primary])["n"] >= gates.min_rows
                and _significant_loss(p, gates.slice_loss)
            ]
            out.append(
                {
                    "gate": f"no slice with n >= {gates.min_rows} loses more than {gates.slice_loss} "
                    f"{primary} with significance",
                    "candidate": cand["name"],
                    "passed": not losing,
                    "detail": "; ".join(losing) or "none does",
                }
            )
        for metric, margin in gates.losses.items():
            p = cand["metrics"][metric]
            out.append(
                {
                    "gate": f"{metric} loses no more than {margin} with significance",
                    "candidate": cand["name"],
                    "passed": not _significant_loss(p, margin),
                    "detail": f"difference {p['diff']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}], n={p['n']}",
                }
            )
        if gates.require_keep:
            out.append(
                {
                    "gate": "decision is keep",
                    "candidate": cand["name"],
                    "passed": cand["decision"] == KEEP,
                    "detail": cand["decision"],
                }
            )
    return out


def _fmt(p: dict[str, Any]) -> tuple[str, ...]:
    if p["n"] == 0:
        return ("not measured",) * 4 + ("", "0", "")
    return (
        f"{p['mean_a']:.4f}",
        f"{p['mean_b']:.4f}",
        f"{p['diff']:+.4f}",
        f"[{p['low']:+.4f}, {p['high']:+.4f}]",
        f"{p['wins']}/{p['ties']}/{p['losses']}",
        str(p["n"]),
        p["decision"],
    )


HEADER = ("baseline", "candidate", "difference", "95% CI", "W/T/L", "n", "decision")


def _rows_of(result: dict[str, Any], cand: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    metrics = [[p["label"], *_fmt(p)] for p in cand["metrics"].values()]
    primary = result["primaryMetric"]
    slices = [[name, *_fmt(per[primary])] for name, per in cand["slices"].items()]
    return metrics, slices


def table(result: dict[str, Any], gates: Sequence[dict[str, Any]] = ()) -> str:
    """A plain-text table per candidate (what ``tac2sol compare`` prints)."""
    lines = [f"baseline: {result['baseline']['name']} ({result['rows']} rows)"]
    if result["note"]:
        lines.append(result["note"])
    for cand in result["candidates"]:
        metrics, slices = _rows_of(result, cand)
        lines += ["", f"{cand['name']} vs {result['baseline']['name']}: {cand['decision'].upper()}"]
        lines.append(
            f"  (decided on {result['primaryMetric']}, {result['confidence']:.0%} bootstrap interval)"
        )
        for title, body in (("metric", metrics), (f"slice ({result['primaryMetric']})", slices)):
            rows = [[title, *HEADER], *body]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            lines.append("")
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for gate in gates:
        lines.append(
            f"gate {'PASS' if gate['passed'] else 'FAIL'}: {gate['candidate']}: "
            f"{gate['gate']}: {gate['detail']}"
        )
    return "\n".join(lines)


def markdown(result: dict[str, Any], gates: Sequence[dict[str, Any]] = ()) -> str:
    """The report ``--report DIR`` writes as compare.md."""
    base = result["baseline"]["name"]
    lines = [
        "# tac2sol compare",
        "",
        f"Baseline **{base}**, {result['rows']} paired rows. Differences are candidate minus baseline; "
        f"{result['confidence']:.0%} percentile bootstrap intervals ({result['resamples']} resamples, "
        f"seed {result['seed']}). Decision on {result['primaryMetric']}; fewer than {result['minRows']} "
        "rows: too few rows to tell.",
    ]
    if result["note"]:
        lines += ["", result["note"]]
    for cand in result["candidates"]:
        metrics, slices = _rows_of(result, cand)
        lines += ["", f"## {cand['name']}: {cand['decision']}", ""]
        for title, body in (("metric", metrics), (f"slice ({result['primaryMetric']})", slices)):
            lines += [f"| {title} | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in body]
            lines.append("")
        lines.append(f"![{cand['name']} vs {base}](compare-{cand['name']}.png)")
    if gates:
        lines += ["", "## Gates", ""]
        lines += [
            f"- {'PASS' if g['passed'] else 'FAIL'} {g['candidate']}: {g['gate']} ({g['detail']})"
            for g in gates
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], runs: Sequence[EvalRun], out_dir: Path) -> list[Path]:
    """Per candidate: similarity per row (baseline vs candidate) and per-slice differences with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = runs[0]
    by_name = {r.name: r for r in runs}
    primary = result["primaryMetric"]
    paths = []
    for cand in result["candidates"]:
        run = by_name[cand["name"]]
        pairs = [
            (base.rows[i]["metrics"].get("similarity"), run.rows[i]["metrics"].get("similarity"))
            for i in base.rows
            if i in run.rows
        ]
        xs, ys = (
            zip(*[(a, b) for a, b in pairs if a is not None and b is not None], strict=True)
            if pairs
            else ((), ())
        )
        names = list(cand["slices"])
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(4.0, 0.35 * len(names) + 1.5)), dpi=100)
        left.scatter(xs, ys, s=10, alpha=0.6, color="#3b6ea8")
        left.plot([0, 1], [0, 1], color="#888888", linewidth=1, linestyle="--")
        left.set(
            xlim=(0, 1), ylim=(0, 1), xlabel=f"{base.name} similarity", ylabel=f"{cand['name']} similarity"
        )
        left.set_title("semantic similarity per row (above the line: candidate better)")
        colors = {"keep": "#2e8b57", "reject": "#b03a2e"}
        for y, name in enumerate(names):
            p = cand["slices"][name][primary]
            if p["n"] == 0:
                continue
            right.errorbar(
                p["diff"],
                y,
                xerr=[[p["diff"] - p["low"]], [p["high"] - p["diff"]]],
                fmt="o",
                color=colors.get(p["decision"], "#777777"),
                capsize=3,
            )
        right.axvline(0, color="#888888", linewidth=1)
        right.set_yticks(
            range(len(names)), [f"{n} (n={cand['slices'][n][primary]['n']})" for n in names], fontsize=8
        )
        right.invert_yaxis()
        right.set_xlabel(f"{primary}: candidate minus baseline, {result['confidence']:.0%} CI")
        right.set_title("per slice (green keep, red reject, grey no call)")
        fig.tight_layout()
        path = out_dir / f"compare-{cand['name']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def parse_gate_losses(specs: Sequence[str]) -> dict[str, float]:
    """``["syntaxValid=0.02"]`` → ``{"syntaxValid": 0.02}``, with one clear error per bad spec."""
    out = {}
    for spec in specs:
        metric, sep, value = spec.partition("=")
        if not sep or metric not in METRIC_BY_NAME:
            raise InvalidInput(
                f"--gate-loss {spec!r}: write METRIC=MARGIN with METRIC one of {', '.join(METRIC_BY_NAME)}"
            )
        try:
            out[metric] = float(value)
        except ValueError:
            raise InvalidInput(f"--gate-loss {spec!r}: the margin {value!r} is not a number") from None
        if out[metric] < 0:
            raise InvalidInput(f"--gate-loss {spec!r}: the margin must be >= 0")
    return out
