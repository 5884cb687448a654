"""The trainer pushes its progress to Kubeflow Trainer's status server (Trainer v2's TrainJobStatus
gate) when the runtime injects KUBEFLOW_TRAINER_SERVER_URL, _CA_CERT and _TOKEN: transformers'
KubeflowCallback does it, which ``TrainingArguments`` adds by itself when the URL is set (tac2sol's
``report_to: none`` leaves it on). Here the server is a local HTTPS server on 127.0.0.1 with a
certificate from a CA made for the test (openssl); tests/e2e/test_trainer_status.py pushes from a
TrainJob's pod to the real Trainer controller."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tac2sol.trainer.train import train

PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs/tj/status"
TOKEN = "a-projected-token"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for localhost signed by it: (ca.crt, tls.crt, tls.key)."""
    ca, cert, key, csr = d / "ca.crt", d / "tls.crt", d / "tls.key", d / "tls.csr"
    ec = ("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out")
    _openssl(*ec, d / "ca.key")
    _openssl("req", "-x509", "-new", "-key", d / "ca.key", "-subj", "/CN=test-ca", "-days", "1", "-out", ca)
    _openssl(*ec, key)
    _openssl("req", "-new", "-key", key, "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-out", csr)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", d / "ca.key", "-CAcreateserial", "-days", "1",
             "-copy_extensions", "copyall", "-out", cert)  # fmt: skip
    return ca, cert, key


@dataclass
class StatusServer:
    """What the pushes brought: (path, Authorization header, JSON body) each."""

    url: str
    posts: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def status_server(tmp_path: Path) -> Iterator[tuple[StatusServer, Path]]:
    ca, cert, key = _certificates(tmp_path)
    posts: list[tuple[str, str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            posts.append((self.path, self.headers.get("Authorization", ""), body))
            out = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StatusServer(f"https://localhost:{server.server_address[1]}{PATH}", posts), ca
    finally:
        server.shutdown()
        server.server_close()


def test_the_trainer_pushes_progress_where_the_trainjob_runtime_says(
    make_config: Any,
    status_server: tuple[StatusServer, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, ca = status_server
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    # What Trainer v2.3's TrainJobStatus plugin sets in the trainer container (files from a
    # projected volume there).
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", server.url)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_CA_CERT", str(ca))
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_TOKEN", str(token))
    result = train(make_config(training={"max_steps": 4, "logging_steps": 2, "save_steps": 4}))
    assert result.global_step == 4

    assert len(server.posts) >= 2, server.posts  # at the start and at the end; steps in between, throttled
    assert {(path, auth) for path, auth, _ in server.posts} == {(PATH, f"Bearer {TOKEN}")}
    first, last = server.posts[0][2]["trainerStatus"], server.posts[-1][2]["trainerStatus"]
    assert first["progressPercentage"] == 0 and first["lastUpdatedTime"]
    assert last["progressPercentage"] == 100 and last["estimatedRemainingSeconds"] == 0
    metrics = {m["name"]: m["value"] for m in last["metrics"]}
    assert float(metrics["train_loss"]) > 0, metrics
