"""A real Prometheus for the observability tests (mark them `prom`).

`start_prometheus(targets)` runs the `prometheus` hack/install-tools.sh builds (Prometheus 3) on a
free 127.0.0.1 port with its own config and storage, scraping every second and loading the
generated alert rules; it is stopped when the test (or module) that started it ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tac2sol import devtools

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "manifests" / "prometheus" / "tac2sol.rules.yaml"
# What Grafana would put for $__rate_interval at a 1 s scrape interval, with margin.
RANGE = "1h"
RATE_INTERVAL = "10s"


def tool(name: str) -> str:
    """A binary from hack/install-tools.sh's cache, else from PATH; fail with what to run."""
    cached = devtools.bin_dir() / name
    if cached.exists():
        return str(cached)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found in {cached.parent} or PATH: run `bash hack/install-tools.sh`")
    return found


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}", timeout=30)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: HTTP {status}: {payload.get('error', body)}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait(self, expr: str, ok: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if ok(result):
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last {expr} -> {result}")


def _start(tmp: Path, targets: dict[str, list[str]]) -> Prometheus:
    port = devtools.free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()
        ],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    process = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if http_get(f"{prom.url}/-/ready", timeout=1)[0] == 200:
                return prom
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise AssertionError(f"prometheus did not become ready in 60 s: {log.read_text()[-2000:]}")


stop = devtools.stop_group  # the test modules call obs.stop


@pytest.fixture(scope="module")
def start_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, list[str]]) -> Prometheus:
        prom = _start(tmp_path_factory.mktemp("prometheus"), targets)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        stop(prom.process)


def promtool(
    *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120
    )


def substitute(expr: str, run: str = ".*") -> str:
    """A dashboard query as Grafana would send it with "All" namespaces and the given run
    (``$__range``: the dashboard's time range, here longer than any test's run)."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", RANGE)
        .replace("$namespace", ".*")
        .replace("$run", run)
    )


@pytest.fixture(scope="session")
def obs() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import this conftest)."""
    return SimpleNamespace(
        repo=REPO,
        rules=RULES,
        tool=tool,
        free_port=devtools.free_port,
        http_get=http_get,
        promtool=promtool,
        substitute=substitute,
        stop=stop,
    )
