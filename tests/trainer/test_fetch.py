"""``data.uri``: downloads from a real HTTP server on 127.0.0.1 (fsspec + aiohttp, nothing mocked),
reuse on re-runs, re-download when the file changed, one clear error per failure, and a real
short training run whose config names only a URI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol.errors import InvalidInput
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.fetch import fetch, read_sidecar, sidecar_path


@dataclass
class FileServer:
    """What the server serves and every request it saw, as (method, path)."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    truncate: set[str] = field(default_factory=set)  # send half the body, then close
    forbidden: set[str] = field(default_factory=set)
    seen: list[tuple[str, str]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def count(self, method: str, name: str) -> int:
        return self.seen.count((method, f"/{name}"))


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            state.seen.append((self.command, self.path))
            name = self.path.lstrip("/").split("?")[0]
            if name in state.forbidden:
                self.send_error(403)
                return
            if name not in state.files:
                self.send_error(404)
                return
            data = state.files[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
            self.end_headers()
            if body:
                self.wfile.write(data[: len(data) // 2] if name in state.truncate else data)
                self.wfile.flush()
                self.close_connection = True

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *_: Any) -> None:  # quiet
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer(base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def _jsonl(n: int, tag: str = "a") -> bytes:
    rows = [{"input": f"tac {tag} {i}", "output": f"function f{i}() {{}}", "metadata": {}} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_downloads_then_reuses_then_downloads_again_when_the_file_changed(
    server: FileServer, tmp_path: Path
) -> None:
    first = _jsonl(50)
    server.files["rows.jsonl"] = first
    target = tmp_path / "source" / "rows.jsonl"
    said: list[str] = []

    got = fetch(server.url("rows.jsonl"), target, progress=False, say=said.append)
    assert not got.reused and target.read_bytes() == first
    assert got.sha256 == hashlib.sha256(first).hexdigest() and got.size == len(first)
    side = read_sidecar(target)
    assert side is not None and side["uri"] == server.url("rows.jsonl")
    assert side["sha256"] == got.sha256 and side["size"] == len(first)
    assert side["version"] == '"' + hashlib.sha1(first).hexdigest() + '"' and side["fetchedAt"]
    assert server.count("GET", "rows.jsonl") == 1
    assert _leftovers(target.parent) == ["rows.jsonl", "rows.jsonl.source.json"]  # no partial file

    again = fetch(server.url("rows.jsonl"), target, progress=False, say=said.append)
    assert again.reused and again.sha256 == got.sha256
    assert server.count("GET", "rows.jsonl") == 1, "a re-run must not download the body again"
    assert server.count("HEAD", "rows.jsonl") == 2
    assert any(line.startswith(f"data: reusing {target}") for line in said)

    changed = _jsonl(50, tag="b")  # same length, other bytes: only the ETag tells
    assert len(changed) == len(first)
    server.files["rows.jsonl"] = changed
    third = fetch(server.url("rows.jsonl"), target, progress=False)
    assert not third.reused and target.read_bytes() == changed
    assert third.sha256 == hashlib.sha256(changed).hexdigest() == read_sidecar(target)["sha256"]  # type: ignore[index]
    assert server.count("GET", "rows.jsonl") == 2


def test_a_copy_of_another_uri_or_a_damaged_copy_is_not_reused(server: FileServer, tmp_path: Path) -> None:
    server.files["a.jsonl"] = _jsonl(5)
    target = tmp_path / "x.jsonl"
    fetch(server.url("a.jsonl"), target, progress=False)
    target.write_bytes(b"truncated by someone")
    assert not fetch(server.url("a.jsonl"), target, progress=False).reused
    original = target.read_bytes()
    target.write_bytes(original.replace(b"tac a 1", b"tac X 1"))  # same size, other bytes
    again = fetch(server.url("a.jsonl"), target, progress=False)
    assert not again.reused and target.read_bytes() == original
    server.files["b.jsonl"] = _jsonl(5)
    assert not fetch(server.url("b.jsonl?v=2"), target, progress=False).reused
    assert server.count("GET", "a.jsonl") == 3 and server.count("GET", "b.jsonl?v=2") == 1


def test_not_found_names_data_uri(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^data\.uri: http://127\.0\.0\.1:\d+/nope\.jsonl was not found"):
        fetch(server.url("nope.jsonl"), tmp_path / "nope.jsonl", progress=False)
    assert _leftovers(tmp_path) == []


def test_forbidden_says_how_to_give_access(server: FileServer, tmp_path: Path) -> None:
    server.files["private.jsonl"] = _jsonl(3)
    server.forbidden.add("private.jsonl")
    with pytest.raises(
        InvalidInput, match=r"data\.uri: .*access denied \(HTTP 403\); use a URL that needs no login"
    ):
        fetch(server.url("private.jsonl"), tmp_path / "p.jsonl", progress=False)


def test_an_interrupted_download_leaves_nothing_at_path(server: FileServer, tmp_path: Path) -> None:
    body = _jsonl(2000)
    server.files["big.jsonl"] = body
    server.truncate.add("big.jsonl")
    target = tmp_path / "big.jsonl"
    with pytest.raises(
        InvalidInput, match=rf"data\.uri: .*stopped after \d+ of {len(body)} bytes.*run again"
    ):
        fetch(server.url("big.jsonl"), target, progress=False)
    assert server.count("GET", "big.jsonl") == 1
    assert _leftovers(tmp_path) == [], "no half file, partial file or sidecar"

    server.truncate.clear()  # the next run succeeds
    assert fetch(server.url("big.jsonl"), target, progress=False).size == len(body)


def test_a_failed_download_keeps_no_stale_copy_vouched_for(server: FileServer, tmp_path: Path) -> None:
    server.files["d.jsonl"] = _jsonl(100)
    target = tmp_path / "d.jsonl"
    fetch(server.url("d.jsonl"), target, progress=False)
    server.files["d.jsonl"] = _jsonl(300, tag="new")
    server.truncate.add("d.jsonl")
    with pytest.raises(InvalidInput, match="stopped after"):
        fetch(server.url("d.jsonl"), target, progress=False)
    assert read_sidecar(target) is None  # the old copy no longer counts as a copy of the uri
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_an_unreachable_host_says_so(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InvalidInput, match=rf"data\.uri: cannot reach 127\.0\.0\.1:{port} .*HTTPS_PROXY"):
        fetch(f"http://127.0.0.1:{port}/x.jsonl", tmp_path / "x.jsonl", progress=False)


@pytest.mark.parametrize(("scheme", "package"), [("s3", "s3fs"), ("gs", "gcsfs")])
def test_a_scheme_without_its_backend_gives_the_pip_hint(
    scheme: str, package: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec(package) is not None:
        # Installed here: make it unimportable (a None entry makes `import` raise ImportError,
        # exactly what fsspec sees when the package is absent).
        monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(
        InvalidInput, match=rf"^data\.uri: {scheme}:// needs the {package} package.*pip install {package}"
    ):
        fetch(f"{scheme}://bucket/rows.jsonl", tmp_path / "rows.jsonl", progress=False)


def test_hf_offline_mode_says_to_copy_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidInput, match=r"data\.uri: hf://.*offline mode.*use data\.path"):
        fetch("hf://datasets/example/tac/rows.jsonl", tmp_path / "rows.jsonl", progress=False)


def test_hf_offline_mode_reuses_an_earlier_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uri = "hf://datasets/example/tac/rows.jsonl"
    target = tmp_path / "rows.jsonl"
    target.write_bytes(_jsonl(3))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    side = {"uri": uri, "size": target.stat().st_size, "sha256": digest, "fetchedAt": "2026-01-01T00:00:00Z"}
    sidecar_path(target).write_text(json.dumps(side))
    got = fetch(uri, target, progress=False)
    assert got.reused and got.sha256 == digest


# --- the config ---------------------------------------------------------------------------------


def _cfg(**data: Any) -> TrainConfig:
    return TrainConfig(model={"name_or_path": "m"}, output_dir="/out/run", data=data)


def test_a_uri_without_a_path_downloads_under_the_output() -> None:
    cfg = _cfg(uri="https://example.org/sets/tac2sol-500.jsonl?download=1")
    assert cfg.data.file == Path("/out/run/data/source/tac2sol-500.jsonl")
    dumped = yaml.safe_load(cfg.dump_yaml())
    assert "path" not in dumped["data"], "a derived path follows output_dir; it is not written back"
    assert TrainConfig(**dumped) == cfg
    moved = TrainConfig(**{**dumped, "output_dir": "/elsewhere"})
    assert moved.data.file == Path("/elsewhere/data/source/tac2sol-500.jsonl")
    both = _cfg(uri="s3://b/k/x.jsonl", path="/data/x.jsonl")
    assert both.data.file == Path("/data/x.jsonl") and "path" in yaml.safe_load(both.dump_yaml())["data"]


def test_the_dataset_flag_replaces_the_uri(tmp_path: Path) -> None:
    """--dataset FILE means that local file: it must not become the target of the download."""
    from tac2sol.trainer.cli import _overrides, load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "m"}, "data": {"uri": "https://h/x.jsonl"}}))
    cfg = load_config(path, _overrides(dataset=tmp_path / "mine.jsonl"))
    assert cfg.data.uri is None and cfg.data.file == tmp_path / "mine.jsonl"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "give data.path (a local JSONL file) or data.uri"),
        ({"uri": "https://example.org/dir/"}, "names no file"),
        ({"uri": "ftp://example.org/x.jsonl"}, "String should match pattern"),
    ],
    ids=["neither", "directory-uri", "scheme"],
)
def test_bad_data_sections(data: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        _cfg(**data)


# --- a real training run from a URI -------------------------------------------------------------


def test_train_with_only_a_uri(
    server: FileServer, tmp_path: Path, tiny_model_dir: Path, sample_file: Path
) -> None:
    """`tac2sol train` with a config that names no file, only a URI on the local server."""
    import os
    import subprocess

    server.files["sets/sample.jsonl"] = sample_file.read_bytes()
    out = tmp_path / "out"
    config = {
        "run_name": "uri",
        "output_dir": str(out),
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"uri": server.url("sets/sample.jsonl"), "max_seq_length": 512, "validation_ratio": 0.1},
        "training": {
            "max_steps": 2,
            "per_device_batch_size": 2,
            "logging_steps": 1,
            "save_steps": 2,
            "gradient_checkpointing": False,
            "cpu_threads": 1,
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "evaluation": {"enabled": False},
        "metrics": {"enabled": False},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    tac2sol = Path(sys.executable).parent / "tac2sol"
    done = subprocess.run(
        [str(tac2sol), "train", "--config", str(path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    landed = out / "data" / "source" / "sample.jsonl"
    assert landed.read_bytes() == sample_file.read_bytes()
    assert f"data: downloading {server.url('sets/sample.jsonl')}" in done.stdout
    digest = hashlib.sha256(landed.read_bytes()).hexdigest()
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["uri"] == server.url("sets/sample.jsonl")
    assert run["data"]["file"] == str(landed)
    assert run["data"]["sha256"] == run["data"]["source"]["sha256"] == digest
    assert run["results"]["globalStep"] == 2
    assert "path" not in yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert server.count("GET", "sets/sample.jsonl") == 1


@pytest.mark.dist
def test_two_ranks_download_once(
    server: FileServer, tmp_path: Path, tiny_model_dir: Path, sample_file: Path
) -> None:
    """Under torchrun (2 CPU ranks, one node): local rank 0 downloads, rank 1 finds its copy."""
    import os
    import subprocess

    server.files["sample.jsonl"] = sample_file.read_bytes()
    out = tmp_path / "out"
    config = {
        "run_name": "uri-ddp",
        "output_dir": str(out),
        "quantization": "none",
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"uri": server.url("sample.jsonl"), "max_seq_length": 256, "validation_ratio": 0.0},
        "training": {"max_steps": 2, "per_device_batch_size": 2, "save_steps": 1000},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "distributed": {"strategy": "ddp", "precision": "fp32", "expected_world_size": 2},
        "evaluation": {"enabled": False},
        "metrics": {"enabled": False},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAC2SOL_", "PET_"))}
    env.update(PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    launch = [str(bindir / "torchrun"), "--nnodes=1", "--nproc_per_node=2", "--master-addr=127.0.0.1"]
    launch += [f"--master-port={port}", "--max-restarts=0"]
    done = subprocess.run(
        [*launch, str(bindir / "tac2sol"), "train", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert server.count("GET", "sample.jsonl") == 1, server.seen  # rank 1 reused rank 0's copy
    assert server.count("HEAD", "sample.jsonl") == 2  # each rank asked once
    assert done.stdout.count("data: downloading") == 1 and "data: reusing" not in done.stdout  # rank 0 speaks
    run = json.loads((out / "run.json").read_text())
    assert run["environment"]["worldSize"] == 2 and run["data"]["uri"] == server.url("sample.jsonl")


def test_preflight_takes_a_uri(server: FileServer, tmp_path: Path) -> None:
    import os
    import subprocess

    server.files["rows.jsonl"] = _jsonl(12)
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).parent / "tac2sol"), "data", "preflight", server.url("rows.jsonl")]
    cmd += ["-o", "json", "--download-dir", str(tmp_path / "dl")]
    for attempt in (1, 2):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rows"] == 12  # stdout stays pure JSON; progress is on stderr
        assert ("data: reusing" in done.stderr) == (attempt == 2), done.stderr
    assert (tmp_path / "dl" / "rows.jsonl").read_bytes() == server.files["rows.jsonl"]
    assert server.count("GET", "rows.jsonl") == 1
