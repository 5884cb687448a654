"""A real 2-rank CPU training run, scraped every second by a real Prometheus.

One module-scoped run (torchrun, DDP over gloo, tests/observability/tiny_trainer.py) feeds all
tests here: counters rise on both ranks, the histogram fills, no GPU series exist, every panel
of the "Training run" dashboard and every training alert expression runs against the data, the
loaded rules evaluate cleanly, and `promtool check metrics` accepts each rank's scrape.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tac2sol.observability import dashboards, rules
from tac2sol.observability import names as n

pytestmark = [pytest.mark.prom, pytest.mark.dist]

RUN = "obs-test"
STEPS = 120
SEQ = 48
SAMPLES_PER_STEP = 4 * 2  # per_device_train_batch_size x gradient_accumulation_steps
TRAINING_DASHBOARD = next(d for d in dashboards.DASHBOARDS if d.uid == "tac2sol-training-run")
TRAINING_ALERTS = rules.GROUPS["tac2sol-training"]


@dataclass
class Run:
    prom: Any
    ports: tuple[int, int]
    start: float
    end: float
    scrapes: dict[int, str]


@pytest.fixture(scope="module")
def run(
    obs: SimpleNamespace, start_prometheus: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("train")
    base = obs.free_port(2)
    ports = (base, base + 1)
    prom = start_prometheus({"tac2sol-trainer": [f"127.0.0.1:{p}" for p in ports]})
    start = time.time()
    log = tmp / "torchrun.log"
    done = tmp / "done"
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.Popen(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={obs.free_port()}",
            str(Path(__file__).with_name("tiny_trainer.py")),
            f"--run-name={RUN}",
            f"--port={base}",
            f"--steps={STEPS}",
            f"--out={tmp / 'out'}",
            f"--done={done}",
            "--linger=600",  # stopped by this fixture once the checks are done
        ],
        env={**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not all(done.with_name(f"done.{r}").exists() for r in (0, 1)):
            if proc.poll() is not None:
                pytest.fail(f"training exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"training did not finish in 600 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        # Both ranks have recorded their eval results: let Prometheus scrape them twice.
        prom.wait(
            f'count({n.EVAL_RESULT}{{run="{RUN}", metric="loss"}})',
            lambda r: bool(r) and float(r[0]["value"][1]) == 2,
            timeout=30,
            what="the eval results of both ranks",
        )
        time.sleep(2)
        end = time.time()
        scrapes = {p: obs.http_get(f"http://127.0.0.1:{p}/metrics")[1] for p in ports}
        yield Run(prom, ports, start, end, scrapes)
    finally:
        obs.stop(proc)


def _by_rank(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["rank"]: float(r["value"][1]) for r in result}


def test_both_ranks_report_every_core_series(run: Run) -> None:
    for metric in (
        n.TRAIN_STEPS,
        n.TRAIN_TOKENS,
        n.TRAIN_SAMPLES,
        n.TRAIN_LOSS,
        n.TRAIN_PROGRESS,
        n.BUILD_INFO,
    ):
        result = run.prom.query(f'{metric}{{run="{RUN}"}}', at=run.end)
        assert {r["metric"]["rank"] for r in result} == {"0", "1"}, metric
        assert {r["metric"]["device"] for r in result} == {"cpu"}, metric


def test_counters_rise_during_the_run(run: Run) -> None:
    for metric in (n.TRAIN_STEPS, n.TRAIN_TOKENS, n.TRAIN_SAMPLES):
        series = run.prom.query_range(f'{metric}{{run="{RUN}"}}', run.start, run.end)
        assert len(series) == 2, metric
        for s in series:
            values = [float(v) for _, v in s["values"]]
            # At least two scrapes mid-run below the final count (a quiet machine trains the run in
            # few scrape intervals), and never down.
            assert len(set(values)) >= 3, f"{metric} rank {s['metric']['rank']} took only {set(values)}"
            assert values == sorted(values), f"{metric} went down: {values}"
    steps = _by_rank(run.prom.query(f'{n.TRAIN_STEPS}{{run="{RUN}"}}', at=run.end))
    samples = _by_rank(run.prom.query(f'{n.TRAIN_SAMPLES}{{run="{RUN}"}}', at=run.end))
    tokens = _by_rank(run.prom.query(f'{n.TRAIN_TOKENS}{{run="{RUN}"}}', at=run.end))
    assert steps == {"0": STEPS, "1": STEPS}
    # Each rank sees its own shard: batch 4 x accumulation 2 rows of 48 tokens per step.
    assert samples == {r: STEPS * SAMPLES_PER_STEP for r in ("0", "1")}
    assert tokens == {r: STEPS * SAMPLES_PER_STEP * SEQ for r in ("0", "1")}


def test_step_histogram_is_filled(run: Run) -> None:
    counts = _by_rank(run.prom.query(f'{n.TRAIN_STEP_DURATION}_count{{run="{RUN}"}}', at=run.end))
    assert counts == {"0": STEPS, "1": STEPS}
    buckets = run.prom.query(f'{n.TRAIN_STEP_DURATION}_bucket{{run="{RUN}", rank="0"}}', at=run.end)
    filled = sorted((float(b["metric"]["le"]), float(b["value"][1])) for b in buckets)
    assert filled[-1] == (math.inf, STEPS)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(filled)), f"buckets not cumulative: {filled}"
    # The steps' real durations, not a constant: their mean (sum / count) lies between the largest
    # bound no step fell under and the smallest bound every step fell under. (How the steps spread
    # over the buckets depends on the machine's load, so that is not asserted.)
    total = _by_rank(run.prom.query(f'{n.TRAIN_STEP_DURATION}_sum{{run="{RUN}", rank="0"}}', at=run.end))["0"]
    assert 0 < total < run.end - run.start
    mean = total / STEPS
    below = max((le for le, count in filled if count == 0), default=0.0)
    above = min(le for le, count in filled if count == STEPS)
    assert below < mean <= above, f"mean step {mean:.4f} s outside ({below}, {above}]: {filled}"
    p95 = run.prom.query(
        f'histogram_quantile(0.95, sum by (le) ({n.TRAIN_STEP_DURATION}_bucket{{run="{RUN}"}}))', at=run.end
    )
    assert 0 < float(p95[0]["value"][1]) < 60


def test_progress_eval_and_checkpoint_series(run: Run) -> None:
    at = run.end
    assert _by_rank(run.prom.query(f'{n.TRAIN_PROGRESS}{{run="{RUN}"}}', at=at)) == {"0": 1.0, "1": 1.0}
    assert _by_rank(run.prom.query(f'{n.TRAIN_IN_PROGRESS}{{run="{RUN}"}}', at=at)) == {"0": 0.0, "1": 0.0}
    assert _by_rank(run.prom.query(f'{n.TRAIN_GLOBAL_STEP}{{run="{RUN}"}}', at=at)) == {
        "0": STEPS,
        "1": STEPS,
    }
    metrics = {r["metric"]["metric"] for r in run.prom.query(f'{n.EVAL_RESULT}{{run="{RUN}"}}', at=at)}
    assert metrics == {"loss", "exact_match", "samples"}  # "model" is text: not a metric
    assert len(run.prom.query(f'{n.EVAL_LOSS}{{run="{RUN}"}}', at=at)) == 2
    saves = _by_rank(run.prom.query(f'{n.TRAIN_CHECKPOINT_SAVE_DURATION}_count{{run="{RUN}"}}', at=at))
    assert saves == {"0": 2, "1": 2}  # save_steps = STEPS / 2
    eta = run.prom.query_range(f'{n.TRAIN_ETA}{{run="{RUN}", rank="0"}}', run.start, run.end)
    assert max(float(v) for _, v in eta[0]["values"]) > 0


def test_no_gpu_series_on_cpu(run: Run) -> None:
    """On a CPU run GPU series are absent (not zero): nothing that was not measured."""
    series = run.prom.api(
        "series",
        **{"match[]": '{__name__=~"tac2sol_gpu_.+|tac2sol_train_mfu_ratio"}'},
        start=run.start,
        end=run.end,
    )
    assert series == []
    # ...while the trainer's own series are there, so the query itself is not what came back empty.
    assert run.prom.api("series", **{"match[]": f'{{__name__=~"tac2sol_train_.+", run="{RUN}"}}'})


def _panel_targets(spec: dashboards.DashboardSpec) -> list[Any]:
    board = dashboards.build(spec)
    params = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            gpu = panel["title"] in dashboards.GPU_PANELS
            params.append(
                pytest.param(panel["title"], target["expr"], gpu, id=f"{panel['title']}-{target['refId']}")
            )
    return params


@pytest.mark.parametrize(("title", "expr", "gpu"), _panel_targets(TRAINING_DASHBOARD))
def test_training_dashboard_panel_returns_data(
    run: Run, obs: SimpleNamespace, title: str, expr: str, gpu: bool
) -> None:
    query = obs.substitute(expr, run=RUN)
    result = run.prom.query_range(query, run.start, run.end)  # parses, or the API says why
    if gpu:
        assert result == [], f"{title}: GPU series on a CPU run"
        pytest.skip(f"GPU panel {title!r}: its series are absent on a CPU run by design (query parsed)")
    assert result, f"panel {title!r} returned no data: {query}"


def test_dashboard_variables_find_the_run(run: Run) -> None:
    runs = run.prom.api("label/run/values", **{"match[]": n.TRAIN_STEPS}, start=run.start, end=run.end)
    assert RUN in runs


@pytest.mark.parametrize("alert", TRAINING_ALERTS, ids=lambda a: a.name)
def test_training_alert_expression_reads_real_series(run: Run, alert: rules.Alert) -> None:
    run.prom.query(alert.expr, at=run.end)  # the whole expression parses and evaluates
    for signal in alert.signals:
        assert signal in alert.expr
        result = run.prom.query(signal, at=run.end)
        if alert.gpu:
            assert result == []
            continue
        assert result, f"{alert.name}: {signal} returned no data"
    if alert.gpu:
        pytest.skip(f"{alert.name} reads GPU series, absent on a CPU run (expression parsed)")


def test_loaded_rules_evaluate_without_errors(run: Run) -> None:
    groups = run.prom.api("rules")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {a.name for a in rules.ALERTS}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"


def test_promtool_accepts_each_rank_scrape(run: Run, obs: SimpleNamespace) -> None:
    for port, text in run.scrapes.items():
        assert f'run="{RUN}"' in text
        checked = obs.promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0 and not checked.stdout.strip(), (
            f"port {port}: {checked.stdout}{checked.stderr}"
        )


def test_build_info_names_versions(run: Run) -> None:
    info = run.prom.query(f'{n.BUILD_INFO}{{run="{RUN}", rank="0"}}', at=run.end)[0]["metric"]
    assert info["component"] == "trainer"
    assert info["torch"] != "none" and info["transformers"] != "none"
