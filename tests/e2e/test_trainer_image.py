"""The CPU trainer image (tests/e2e/conftest.py builds it from the Dockerfile) runs on the real
node as a pod that Pod Security `restricted` admits: as the image's non-root user, with torch's
gloo backend for DDP on CPUs and the tac2sol entry point."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tac2sol import __version__

pytestmark = [pytest.mark.k8s, pytest.mark.image, pytest.mark.slow]

NODE = "tac2sol-node"
PROBE = (
    "import os, torch, torch.distributed as dist; "
    "open(os.path.join(os.environ['HOME'], 'probe'), 'w').write('ok'); "
    "print('torch', torch.__version__, 'gloo', dist.is_gloo_available(), 'cuda', torch.cuda.is_available())"
)


def test_trainer_image_runs_on_the_real_node_as_non_root(
    control_plane: Any, namespace: str, trainer_image: str, wait: Any
) -> None:
    control_plane.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"tac2sol.dev/node": "real"},
            "tolerations": [{"key": "tac2sol.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "trainer",
                    "image": trainer_image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f'id -u && tac2sol --version && python3 -c "{PROBE}"'],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    control_plane.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod))

    def finished() -> dict[str, Any] | None:
        got = control_plane.get_json("-n", namespace, "pod", "probe")
        return got if got["status"].get("phase") in ("Succeeded", "Failed") else None

    done = wait("the probe pod to finish", finished, timeout=180)
    logs = control_plane.kubectl("-n", namespace, "logs", "probe").stdout.splitlines()
    assert done["status"]["phase"] == "Succeeded", logs
    assert done["spec"]["nodeName"] == NODE
    # The image's USER (10001) without runAsUser in the pod: runAsNonRoot holds it to a number.
    assert logs[0] == "10001"
    assert logs[1] == f"tac2sol {__version__}"
    words = logs[2].split()
    assert words[0] == "torch" and words[2:] == ["gloo", "True", "cuda", "False"], logs
    # The ~7 GB layer archive went once unpacked (DevCluster.import_image): the pod ran from the
    # snapshot; what stays in the content store is manifests, configs and the small base images.
    blobs = control_plane.state_dir / "node" / "containerd" / "io.containerd.content.v1.content" / "blobs"
    stored = sum(f.stat().st_size for f in blobs.rglob("*") if f.is_file())
    assert stored < 500 * 2**20, f"{stored / 2**30:.1f} GiB in the node's content store"
