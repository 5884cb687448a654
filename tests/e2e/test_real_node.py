"""The real node beside kwok's GPU nodes (hack/node.sh): a kubelet, containerd, runc, the CNI
bridge and CoreDNS, in network, mount and pid namespaces of their own. Pods run there for real
(the pause image built here, imported, never pulled), admitted at Pod Security `restricted`;
the apiserver reaches the kubelet (`kubectl logs`) through its egress proxy; CoreDNS answers for
headless Services; and `hack/cluster.sh down` leaves the host as it found it, its network
namespace untouched throughout."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tac2sol import devtools

pytestmark = pytest.mark.k8s

GOLDEN = Path(__file__).resolve().parents[1] / "operator" / "golden"
NODE = "tac2sol-node"
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
NODE_IP = "10.244.0.1"
PAUSE_IMAGE = "localhost/tac2sol/pause:1"
KUBECTL_DELIVERY_IMAGE = "localhost/tac2sol/kubectl-delivery:1"  # hack/cluster.sh imports it too
REAL_NODE_TAINT = {"key": "tac2sol.dev/real-node", "value": "true", "effect": "NoSchedule"}
# The paths containerd, the CNI plugins and the kubelet use whatever their configuration says.
FIXED_PATHS = (
    "/run/containerd",
    "/var/lib/containerd",
    "/opt/containerd",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/run/netns",
)
# Global kernel settings the kubelet writes unless stopped, and the network namespace's own.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# One A query to a DNS server, answers printed one a line: run in the node's network namespace,
# where CoreDNS listens on the node IP.
DNS_QUERY = r"""
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
q = struct.pack(">6H", 0x7AC2, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">2H", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (server, 53))
r = s.recv(4096)
rcode, answers, i = r[3] & 15, struct.unpack(">H", r[6:8])[0], len(q)
print(f"rcode {rcode}")
for _ in range(answers):
    i += 2 if r[i] & 0xC0 else r.index(b"\0", i) + 1 - i
    rtype, _, _, size = struct.unpack(">HHIH", r[i : i + 10])
    if rtype == 1:
        print(socket.inet_ntoa(r[i + 10 : i + 14]))
    i += 10 + size
"""


def pause_pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod that Pod Security `restricted` admits, for the real node only."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeSelector": {"tac2sol.dev/node": "real"},
            "tolerations": [{"key": "tac2sol.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65535,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "pause",
                    "image": PAUSE_IMAGE,
                    "imagePullPolicy": "Never",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }


def _running_on_node(get_json: Any, namespace: str, name: str) -> dict[str, Any] | None:
    pod = get_json("-n", namespace, "pod", name)
    return pod if pod["status"].get("phase") == "Running" and pod["spec"].get("nodeName") == NODE else None


def test_real_node_is_ready_tainted_and_has_no_gpu(control_plane: Any) -> None:
    node = control_plane.get_json("node", NODE)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    assert node["metadata"]["labels"]["tac2sol.dev/node"] == "real"
    assert REAL_NODE_TAINT in node["spec"]["taints"]
    assert "nvidia.com/gpu" not in node["status"]["capacity"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    server = json.loads(control_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == server["gitVersion"]
    assert {"type": "InternalIP", "address": NODE_IP} in node["status"]["addresses"]


def test_restricted_pod_runs_with_logs_and_cluster_dns(control_plane: Any, namespace: str, wait: Any) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    # Admission is real: the same pod without its securityContext is refused.
    bare = pause_pod("bare")
    del bare["spec"]["securityContext"], bare["spec"]["containers"][0]["securityContext"]
    refused = control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(bare), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr

    control_plane.apply(pause_pod("sleeper", {"app": "sleeper"}), namespace)
    control_plane.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sleepers"},
            "spec": {"clusterIP": "None", "selector": {"app": "sleeper"}, "ports": [{"port": 80}]},
        },
        namespace,
    )
    pod = wait(
        "the pod Running on the real node",
        lambda: _running_on_node(control_plane.get_json, namespace, "sleeper"),
        timeout=60,
    )
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in POD_CIDR
    # apiserver -> kubelet, through the egress proxy into the node's namespace.
    logs = control_plane.kubectl("-n", namespace, "logs", "sleeper", check=False)
    assert logs.returncode == 0, logs.stderr

    def resolve(name: str) -> list[str] | None:
        proc = control_plane.dev.node_exec(sys.executable, "-c", DNS_QUERY, name, NODE_IP)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.split()
        return lines[2:] if lines[:2] == ["rcode", "0"] and len(lines) > 2 else None

    service = f"sleepers.{namespace}.svc.cluster.local"
    assert wait("CoreDNS to answer for the headless Service", lambda: resolve(service), timeout=30) == [ip]
    # Nothing outside the cluster is forwarded anywhere.
    assert resolve("example.com") is None

    control_plane.kubectl("-n", namespace, "delete", "pod", "sleeper", "--wait=true", timeout=90)


# --- the host, before, during and after ------------------------------------------------------------


def _host_state(state_dirs: tuple[Path, ...]) -> dict[str, Any]:
    """What a node could leave behind in the host's namespaces."""

    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    mounts = [
        line
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if " nsfs " in line or any(p in line for p in (*map(str, state_dirs), *FIXED_PATHS))
    ]
    # A node's cgroups belong under its own root (another cluster's node may come and go meanwhile).
    cgroups = sorted(
        str(p) for p in Path("/sys/fs/cgroup").glob("*/*") if p.name.startswith(("kubepods", "k8s.io"))
    )
    return {
        "bridges": out("ip", "-o", "link", "show", "type", "bridge"),
        "veths": out("ip", "-o", "link", "show", "type", "veth"),
        "routes": out("ip", "route", "show", "table", "all"),
        "iptables": out("iptables", "-S"),
        "sysctls": {key: Path("/proc/sys", key).read_text().strip() for key in SYSCTLS},
        "paths": {p: os.path.lexists(p) for p in FIXED_PATHS},
        "mounts": mounts,
        "cgroups": cgroups,
    }


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_cluster_down_leaves_no_trace(control_plane: Any, tmp_path: Path, wait: Any) -> None:
    """A second cluster with its own real node runs a pod, then goes down: the host's network
    namespace, kernel settings, mounts, fixed paths and cgroups are as they were before it."""
    state = tmp_path / "cluster"
    before = _host_state((state,))
    with devtools.start_cluster(state) as cluster:
        kubectl = [str(control_plane.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig)]
        subprocess.run(
            [*kubectl, "apply", "-f", "-"], input=json.dumps(pause_pod("trace")), check=True, text=True
        )

        def running() -> bool:
            phase = subprocess.run(
                [*kubectl, "get", "pod", "trace", "-o", "jsonpath={.status.phase}"],
                capture_output=True,
                text=True,
            )
            return phase.stdout == "Running"

        wait("a pod Running on the second cluster's node", running, timeout=60)
        during = _host_state((state,))
        # The node lives in namespaces of its own: nothing of it shows in the host's.
        for key in ("bridges", "veths", "routes", "iptables", "sysctls", "paths", "mounts"):
            assert during[key] == before[key], key
        assert during["cgroups"] == before["cgroups"]
        env = (state / "cluster.env").read_text()
        root = next(line.split("=", 1)[1] for line in env.splitlines() if "TAC2SOL_NODE_CGROUP_ROOT=" in line)
        node_cgroups = list(Path("/sys/fs/cgroup").glob(f"*/{root.strip('/')}"))
        assert node_cgroups and any((c / "kubepods").is_dir() for c in node_cgroups), node_cgroups
        assert (state / "node" / "containerd.sock").exists()
    assert _host_state((state,)) == before
    assert not [c for c in node_cgroups if c.exists()]
    assert not (state / "node").exists()
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(state) in _cmdline(pid)]
    assert not leftovers, f"processes of the stopped cluster still run: {leftovers}"


def _replica_templates(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    specs = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    return {role: spec["template"] for role, spec in specs.items()}


# TrainJob goldens hold no pod template of their own (Trainer merges the runtime's with the
# operator's patch): test_operator.py runs those pods under `restricted` through the real Trainer.
V1_GOLDEN = sorted(p.name for p in GOLDEN.glob("*.yaml") if not p.name.startswith("trainjob-"))


@pytest.mark.parametrize("golden", V1_GOLDEN)
def test_rendered_trainer_pods_pass_restricted_admission(
    control_plane: Any, namespace: str, golden: str
) -> None:
    """Every pod the operator renders (PyTorchJob masters and workers, MPIJob launchers and
    workers) is admitted where Pod Security `restricted` is enforced (a server-side dry run)."""
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    (job,) = [
        o for o in yaml.safe_load_all((GOLDEN / golden).read_text()) if o["kind"] in ("PyTorchJob", "MPIJob")
    ]
    for role, template in _replica_templates(job).items():
        pod = {"apiVersion": "v1", "kind": "Pod", **template}
        pod["metadata"] = {**template["metadata"], "name": f"{role.lower()}-0"}
        # Admission of a priority class is not Pod Security's: leave it out here.
        pod["spec"] = {k: v for k, v in template["spec"].items() if k != "priorityClassName"}
        proc = control_plane.kubectl(
            "-n", namespace, "create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False
        )
        assert proc.returncode == 0, f"{golden} {role}: {proc.stderr}"


def test_pods_reach_the_apiserver_at_the_kubernetes_service(
    control_plane: Any, namespace: str, wait: Any
) -> None:
    """In-cluster clients (an MPIJob launcher's kubectl, an operator pod) dial the `kubernetes`
    Service (kube-proxy's rules in the node's namespace): from a pod, kubectl with the pod's
    service account (the kubectl-delivery image hack/cluster.sh gives the training-operator)
    reads the apiserver's /version."""
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = pause_pod("in-cluster")
    pod["spec"]["restartPolicy"] = "Never"
    (container,) = pod["spec"]["containers"]
    container.update(image=KUBECTL_DELIVERY_IMAGE, command=["/kubectl", "get", "--raw", "/version"])
    control_plane.apply(pod, namespace)

    def finished() -> dict[str, Any] | None:
        got = control_plane.get_json("-n", namespace, "pod", "in-cluster")
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    done = wait("the in-cluster kubectl to finish", finished, timeout=60)
    logs = control_plane.kubectl("-n", namespace, "logs", "in-cluster").stdout
    assert done["status"]["phase"] == "Succeeded", logs
    assert json.loads(logs)["gitVersion"].startswith("v1."), logs
