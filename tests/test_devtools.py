"""tac2sol.devtools (free ports, the cluster's settings) and the suite's own rules (tests/conftest.py):
the `tools` marker and the check that fails a run on a skip that is not GPU-only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tac2sol import devtools

CONFTEST = Path(__file__).with_name("conftest.py")


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
    assert env["TAC2SOL_TRAINER_CRDS_DIR"] == str(devtools.trainer_crds_dir())
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


# --- the suite's rules, run on a small suite of their own ------------------------------------------


def _suite(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    """Run `body` as a test module with this suite's conftest (its ../shared is absent)."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers =\n    tools: t\n    gpu: g\n    k8s: k\n    prom: p\n    image: i\n")
    pytester.makepyfile(f"import pytest\n\n{body}")
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_a_skip_for_a_missing_tool_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _suite(pytester, "def test_a():\n    pytest.skip('checkov is not installed')\n")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips that fail the run*", "*::test_a: checkov is not installed"])


def test_a_module_skip_fails_the_run(pytester: pytest.Pytester) -> None:
    result = _suite(pytester, "pytest.importorskip('no_such_module_here')\n\ndef test_a():\n    pass\n")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips that fail the run*", "*could not import 'no_such_module_here'*"])


def test_gpu_and_absent_shared_data_skips_pass(pytester: pytest.Pytester) -> None:
    result = _suite(
        pytester,
        "@pytest.mark.gpu\ndef test_marked():\n    pytest.skip('no device')\n\n"
        "def test_reason():\n    pytest.skip('GPU panel: absent on a CPU run')\n\n"
        "def test_data(dataset_500):\n    pass\n",
        "-rs",
    )
    result.assert_outcomes(skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["*needs the real data in ../shared: */tac2sol-500.jsonl is absent (CI has it)"]
    )


def test_test_fast_leaves_out_tool_users_and_cluster_tests(pytester: pytest.Pytester) -> None:
    body = (
        "def test_helm(tool_bin):\n    pass\n\n"
        "@pytest.mark.k8s\ndef test_k8s():\n    pass\n\n"
        "@pytest.mark.image\ndef test_image():\n    pass\n\n"
        "def test_plain():\n    pass\n"
    )
    result = _suite(pytester, body, "-m", "not tools", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*::test_plain", "1/4 tests collected (3 deselected)*"])
    assert "test_helm" not in result.stdout.str()


def test_background_stops_the_whole_process_group(tmp_path: Path) -> None:
    """A background command and what it forked end with the block (node-exec's nsenter and the
    operator under it are one group)."""
    log = tmp_path / "out.log"
    script = "sleep 300 & echo child $!; wait"
    with devtools.background(["bash", "-c", script], dict(os.environ), log) as proc:
        for _ in range(100):
            if "child" in log.read_text():
                break
            time.sleep(0.05)
        child = int(log.read_text().split()[-1])
    assert proc.returncode is not None
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_reap_removes_a_dead_clusters_node_and_keeps_a_live_one(tmp_path: Path) -> None:
    """A cluster whose processes all died with the machine loses its node's data (its images);
    one whose watchdog still runs keeps everything."""
    dead, live = tmp_path / "pytest-1" / "cluster0", tmp_path / "pytest-2" / "cluster0"
    for state in (dead, live):
        (state / "node" / "containerd").mkdir(parents=True)
        (state / "node" / "containerd" / "blob").write_bytes(b"layer")
        (state / "pids").mkdir()
        (state / "pids" / "etcd.pid").write_text(f"{_dead_pid()}\n")
    # What hack/cluster.sh's watchdog runs, waiting on this test's pid.
    watchdog = subprocess.Popen(
        ["bash", "-c", 'while kill -0 "$1" 2>/dev/null; do sleep 2; done', "watchdog", str(os.getpid())],
        start_new_session=True,
    )
    try:
        (live / "pids" / "watchdog.pid").write_text(f"{watchdog.pid}\n")
        assert devtools.reap_stale_clusters(tmp_path) == [dead]
    finally:
        watchdog.kill()
        watchdog.wait()
    assert not (dead / "node").exists() and not (dead / "pids").exists()
    assert (live / "node" / "containerd" / "blob").read_bytes() == b"layer"
    assert devtools.reap_stale_clusters(tmp_path / "pytest-1") == []  # nothing matches below a basetemp


def test_a_trainer_import_that_cannot_fit_fails_first_naming_the_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tac2sol import devimage

    devimage._need_free_disk(tmp_path, 0.001)  # this disk has a MiB free
    usage = devimage.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(devimage.shutil, "disk_usage", lambda _: usage._replace(free=3 * 2**30))
    with pytest.raises(devtools.DevToolsError, match=rf"\({tmp_path}\) needs ~16 GiB free .* 3\.0 GiB is"):
        devimage._need_free_disk(tmp_path, devimage.TRAINER_IMPORT_GIB)
