"""tac2sol.devtools: free ports and the dev cluster's settings."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tac2sol import devtools


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = devtools.free_ports(6)
    assert len(set(ports)) == 6
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_free_port_range_is_consecutive_and_free() -> None:
    base = devtools.free_port(4)
    socks = [socket.socket() for _ in range(4)]
    try:
        for i, s in enumerate(socks):
            s.bind(("127.0.0.1", base + i))
    finally:
        for s in socks:
            s.close()


def test_free_port_skips_a_range_with_a_taken_port(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        candidates = iter([[busy - 1], [busy + 10]])
        monkeypatch.setattr(devtools, "free_ports", lambda count: next(candidates))
        assert devtools.free_port(2) == busy + 10


def test_cluster_env_defaults_overrides_and_bad_values(tmp_path: Path) -> None:
    env = devtools.cluster_env({"TAC2SOL_CACHE": "unused", "TAC2SOL_APISERVER_PORT": "31443"})
    assert env["TAC2SOL_APISERVER_PORT"] == "31443"
    assert env["TAC2SOL_ETCD_PORT"] == str(devtools.CLUSTER_PORTS["TAC2SOL_ETCD_PORT"])
    assert set(devtools.CLUSTER_PORTS) < set(env)
    assert env["TAC2SOL_CRDS_DIR"] == str(devtools.crds_dir())
    for bad in ("abc", "0", "70000", "-1"):
        with pytest.raises(devtools.DevToolsError, match=f"TAC2SOL_ETCD_PORT='{bad}' is not a port"):
            devtools.cluster_env({"TAC2SOL_ETCD_PORT": bad})


def test_cluster_env_command_is_what_cluster_sh_evals(tmp_path: Path) -> None:
    """hack/cluster.sh evals this output: every port and the CRDs folder, shell-quoted."""
    crds = tmp_path / "a dir"
    proc = subprocess.run(
        ["bash", "-c", f'eval "$({sys.executable} -m tac2sol.devtools cluster-env)"; '
         'echo "$TAC2SOL_CRDS_DIR|$TAC2SOL_APISERVER_PORT|$TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT"'],
        env={"PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1", "TAC2SOL_CRDS_DIR": str(crds),
             "TAC2SOL_APISERVER_PORT": "31443"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    webhook = devtools.CLUSTER_PORTS["TAC2SOL_TRAINING_OPERATOR_WEBHOOK_PORT"]
    assert proc.stdout.strip() == f"{crds}|31443|{webhook}"
    bad = subprocess.run(
        [sys.executable, "-m", "tac2sol.devtools", "cluster-env"],
        env={"PYTHONSAFEPATH": "1", "TAC2SOL_ETCD_PORT": "x"}, capture_output=True, text=True,
    )  # fmt: skip
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "TAC2SOL_ETCD_PORT='x' is not a port" in bad.stderr
