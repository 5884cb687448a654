"""The pure renderers: golden files pin the ConfigMap + PyTorchJob/MPIJob of a few runs, and
table-driven checks say what must hold for any run. The rendered jobs are also validated against
the Kubeflow v1.9.0 CRD schemas that hack/install-tools.sh takes from the training-operator's Go
module (the apiserver would check the same).

Review golden diffs like code. To accept an intended change:
    TAC2SOL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_render.py
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tac2sol.errors import InvalidInput
from tac2sol.operator import render
from tac2sol.operator.planner import make_plan
from tac2sol.operator.render import RenderOptions, render_children, to_yaml
from tac2sol.operator.resolve import resolve
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.specfile import parse_training_run
from tac2sol.operator.trainconfig import to_train_config

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
OPTIONS = RenderOptions(trainer_image="ghcr.io/tac2sol/tac2sol-trainer:0.1.0")
UID = "0b5e7a52-6f4b-4c1e-9a0e-3d2f1c0b9a88"


def _load(name: str, **spec_changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((REPO / "runs" / f"{name}.yaml").read_text())
    for dotted, value in spec_changes.items():
        node = data["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def _run(data: dict[str, Any], namespace: str = "ml") -> TrainingRun:
    data = copy.deepcopy(data)
    data["metadata"].update(namespace=namespace, uid=UID, generation=1)
    return parse_training_run(data)


EVERYTHING = {
    "resources__nodes": 2,
    "resources__nodeSelector": {"topology.kubernetes.io/zone": "lab-a"},
    "resources__tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    ],
    "resources__priorityClassName": "training-high",
    "resources__kueueQueue": "gpu-queue",
    "resources__podLabels": {"team": "decompilers"},
    "resources__podAnnotations": {"example.com/owner": "alice"},
    "resources__cpu": "24",
    "hfTokenSecret": {"name": "hf-token", "key": "token"},
    "image": "registry.example.com/tac2sol-trainer:dev",
    "imagePullPolicy": "Always",
    "runPolicy": {
        "backoffLimit": 5,
        "cleanPodPolicy": "All",
        "ttlSecondsAfterFinished": 86400,
        "activeDeadlineSeconds": 172800,
    },
}

CASES = {
    # The tour's run: DDP, fp16, 1 node x 4 RTX 8000, PyTorchJob with a Master only.
    "qwen32b": _load("qwen32b"),
    # ZeRO-3 over 2 nodes with every scheduling option: Master + 1 Worker, ds_config.json.
    "llama70b-2nodes-everything": _load("llama-3.1-70b", **EVERYTHING),
    # The DeepSpeed launcher path: an MPIJob (mpirun on a Launcher, 2 Workers x 4 slots).
    "qwen72b-mpijob": _load("qwen2.5-72b", launcher="mpijob", resources__nodes=2),
    # A CPU run with data in the image and no claims: no GPUs, emptyDirs for output and cache.
    "tiny-cpu": _load("tiny-local"),
    # Data from an S3 URI: no data claim, the trainer downloads under /output, credentials by envFrom.
    "qwen32b-s3-uri": _load(
        "qwen32b",
        dataset={"uri": "s3://tac2sol-data/sets/tac2sol-500.jsonl", "credentialsSecret": "s3-creds"},
    ),
}


# The same runs as Kubeflow Trainer v2 TrainJobs (backend trainjob), minus what a TrainJob cannot
# carry (imagePullPolicy, v1 runPolicy settings, launcher mpijob); the priority class has its own case.
TRAINJOB_EVERYTHING = {
    k: v
    for k, v in EVERYTHING.items()
    if k not in ("resources__priorityClassName", "imagePullPolicy", "runPolicy")
}
# The chart's ClusterTrainingRuntime with its default values, as the operator reads it from a cluster.
CLUSTER_RUNTIME = yaml.safe_load((REPO / "manifests" / "trainer" / "clustertrainingruntime.yaml").read_text())
TRAINJOB_CASES = {
    # DDP on one node x 4 GPUs.
    "trainjob-qwen32b": _load("qwen32b", backend="trainjob"),
    # ZeRO-3 over 2 nodes with every scheduling option a TrainJob carries, and a deadline.
    "trainjob-llama70b-2nodes-everything": _load(
        "llama-3.1-70b",
        backend="trainjob",
        runPolicy={"activeDeadlineSeconds": 172800},
        **TRAINJOB_EVERYTHING,
    ),
    # DeepSpeed on 2 nodes (the v1 case above runs it as an MPIJob).
    "trainjob-qwen72b-2nodes": _load("qwen2.5-72b", backend="trainjob", resources__nodes=2),
    # A priority class: the run's own TrainingRuntime (the chart's runtime with it), then the TrainJob.
    "trainjob-qwen32b-priority": _load(
        "qwen32b", backend="trainjob", resources__priorityClassName="training-high"
    ),
    # CPU: no GPUs, emptyDirs.
    "trainjob-tiny-cpu": _load("tiny-local", backend="trainjob"),
    # An S3 URI: the credentials Secret's known keys as optional secretKeyRef variables.
    "trainjob-qwen32b-s3-uri": _load(
        "qwen32b",
        backend="trainjob",
        dataset={"uri": "s3://tac2sol-data/sets/tac2sol-500.jsonl", "credentialsSecret": "s3-creds"},
    ),
}
ALL_CASES = {**CASES, **TRAINJOB_CASES}


def _render(data: dict[str, Any]) -> list[dict[str, Any]]:
    run = _run(data)
    kind = "TrainJob" if run.spec.backend == "trainjob" else None
    return render_children(resolve(run), make_plan(resolve(run)), OPTIONS, kind, CLUSTER_RUNTIME)


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_golden(case: str) -> None:
    text = to_yaml(_render(ALL_CASES[case]))
    path = GOLDEN / f"{case}.yaml"
    header = f"# Golden output of tests/operator/test_render.py case {case!r}; review diffs like code.\n"
    if os.environ.get("TAC2SOL_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(header + text)
    assert path.exists(), f"{path} is missing: run TAC2SOL_UPDATE_GOLDEN=1 .venv/bin/pytest {__file__}"
    want = path.read_text().removeprefix(header)
    if text != want:
        diff = "".join(
            difflib.unified_diff(want.splitlines(True), text.splitlines(True), "golden", "rendered")
        )
        pytest.fail(f"{case}: rendering changed (TAC2SOL_UPDATE_GOLDEN=1 to accept):\n{diff[:6000]}")


@functools.cache
def _crd_schema(crds: Path, kind: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~600 KB
    doc = yaml.load((crds / f"kubeflow.org_{kind.lower()}s.yaml").read_text(), Loader=loader)
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1")
    return _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])


def _openapi_to_jsonschema(node: Any) -> Any:
    """Kubernetes' structural OpenAPI -> JSON Schema: int-or-string fields accept both."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
        out["additionalProperties"] = False  # the apiserver prunes unknown fields: a typo would vanish
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_jobs_match_the_kubeflow_crd_schema(case: str, kubeflow_crds: Path) -> None:
    job = _render(CASES[case])[1]
    schema = _crd_schema(kubeflow_crds, job["kind"])
    # metadata is validated by the apiserver itself, not by the CRD schema
    jsonschema.validate({**job, "metadata": {}}, schema)


@functools.cache
def _trainer_crd_schema(crds: Path, plural: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    doc = yaml.load((crds / f"trainer.kubeflow.org_{plural}.yaml").read_text(), Loader=loader)
    version = next(v for v in doc["spec"]["versions"] if v["name"] == "v1alpha1")
    return _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("case", sorted(TRAINJOB_CASES))
def test_trainjobs_match_the_trainer_crd_schema(case: str, trainer_crds: Path) -> None:
    """The TrainJob, and the run's own TrainingRuntime when it has one."""
    *runtimes, job = _render(TRAINJOB_CASES[case])[1:]
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    jsonschema.validate({**job, "metadata": {}}, _trainer_crd_schema(trainer_crds, "trainjobs"))
    for runtime in runtimes:
        assert runtime["kind"] == "TrainingRuntime"
        schema = _trainer_crd_schema(trainer_crds, "trainingruntimes")
        jsonschema.validate({**runtime, "metadata": {}}, schema)


def test_a_priority_class_gets_the_run_its_own_runtime() -> None:
    """The chart's runtime with the priority class on its pods, owned by the run; the TrainJob refers
    to it. Without a priority class: the ClusterTrainingRuntime, and nothing more."""
    _, runtime, job = _render(TRAINJOB_CASES["trainjob-qwen32b-priority"])
    assert job["spec"]["runtimeRef"] == {
        "name": "qwen32b",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
    }
    assert (runtime["kind"], runtime["metadata"]["name"]) == ("TrainingRuntime", "qwen32b")
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod_spec = rjob["template"]["spec"]["template"]["spec"]
    assert pod_spec.pop("priorityClassName") == "training-high"
    (cluster_rjob,) = CLUSTER_RUNTIME["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob == cluster_rjob  # otherwise the chart's runtime, untouched (and not mutated)
    assert "priorityClassName" not in str(job["spec"])
    plain = _render(TRAINJOB_CASES["trainjob-qwen32b"])
    assert [o["kind"] for o in plain] == ["ConfigMap", "TrainJob"]
    assert plain[1]["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    run = _run(TRAINJOB_CASES["trainjob-qwen32b-priority"])
    with pytest.raises(ValueError, match="ClusterTrainingRuntime"):
        render_children(resolve(run), make_plan(resolve(run)), OPTIONS, "TrainJob")


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_every_child_is_owned_and_labelled(case: str) -> None:
    for obj in _render(ALL_CASES[case]):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "tac2sol.dev/v1alpha1",
                "kind": "TrainingRun",
                "name": ALL_CASES[case]["metadata"]["name"],
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["tac2sol.dev/run"] == ALL_CASES[case]["metadata"]["name"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tac2sol-operator"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"} <= set(
            meta["labels"]
        )


def test_rendering_is_pure_and_leaves_its_input_alone() -> None:
    run = _run(CASES["llama70b-2nodes-everything"])
    plan = make_plan(resolve(run))
    before = (run.model_dump(), plan.model_dump())
    first = render_children(resolve(run), plan, OPTIONS)
    second = render_children(resolve(run), plan, OPTIONS)
    assert first == second
    assert (run.model_dump(), plan.model_dump()) == before
    # Master and Worker templates are copies: editing one never edits the other.
    specs = first[1]["spec"]["pytorchReplicaSpecs"]
    specs["Master"]["template"]["metadata"]["labels"]["x"] = "y"
    assert "x" not in specs["Worker"]["template"]["metadata"]["labels"]


def _pod(job: dict[str, Any], replica: str = "Master") -> dict[str, Any]:
    replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    return replicas[replica]["template"]


def test_qwen32b_is_one_master_with_four_gpus_in_fp16() -> None:
    config_map, job = _render(CASES["qwen32b"])
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "qwen32b"
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert job["spec"]["nprocPerNode"] == "4"
    (container,) = _pod(job)["spec"]["containers"]
    assert container["name"] == "pytorch"
    assert container["command"][-4:] == ["tac2sol", "train", "--config", "/etc/tac2sol/train.yaml"]
    # Memory limited at the request: an outgrown trainer is OOMKilled in its pod, not the node's.
    assert container["resources"]["limits"] == {"memory": "48Gi", "nvidia.com/gpu": "4"}
    # 4 processes x 8Gi + no offload + 16Gi /dev/shm; 4 CPUs per process
    assert container["resources"]["requests"] == {"cpu": "16", "memory": "48Gi"}
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["distributed"]["precision"] == "fp16"
    assert train["distributed"]["strategy"] == "ddp"
    assert train["data"]["path"] == "/data/tac2sol-500.jsonl"
    assert train["output_dir"] == "/output/qwen32b"
    assert "ds_config.json" not in config_map["data"]


def test_deepspeed_plans_carry_the_trainers_ds_config() -> None:
    config_map, job = _render(CASES["llama70b-2nodes-everything"])
    ds = json.loads(config_map["data"]["ds_config.json"])
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False
    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.deepspeed_config import build_deepspeed_config

    cfg = TrainConfig(**yaml.safe_load(config_map["data"]["train.yaml"]))
    assert ds == build_deepspeed_config(cfg.distributed, hidden_size=cfg.distributed.model_hidden_size)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)


def test_the_trainer_reads_the_rendered_ds_config_and_generates_none(tmp_path: Path) -> None:
    """train.yaml names the ConfigMap's ds_config.json; the trainer copies that file as it is."""
    from tac2sol.trainer.config import TrainConfig
    from tac2sol.trainer.deepspeed_config import write_deepspeed_config

    config_map, _ = _render(CASES["qwen72b-mpijob"])
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["distributed"]["deepspeed_config"] == "/etc/tac2sol/ds_config.json"
    rendered = tmp_path / "ds_config.json"
    rendered.write_text(json.dumps({**json.loads(config_map["data"]["ds_config.json"]), "marker": 1}))
    train["distributed"]["deepspeed_config"] = str(rendered)
    written = write_deepspeed_config(TrainConfig(**train), tmp_path / "run", on_gpu=False)
    assert written is not None and json.loads(written.read_text())["marker"] == 1
    rendered.write_text("{not json")
    with pytest.raises(InvalidInput, match=r"distributed\.deepspeed_config: .* is not JSON"):
        write_deepspeed_config(TrainConfig(**train), tmp_path / "run", on_gpu=False)


@pytest.mark.parametrize("case", ["qwen32b", "qwen72b-mpijob"])
def test_pods_stop_after_the_trainers_checkpoint_grace(case: str) -> None:
    """SIGTERM -> the trainer checkpoints and serves a last scrape -> only then the kubelet's SIGKILL."""
    config_map, job = _render(CASES[case])
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    stop = train["training"]["termination_grace_seconds"] + train["metrics"]["linger_seconds"]
    pod = _pod(job, "Master" if job["kind"] == "PyTorchJob" else "Worker")
    assert pod["spec"]["terminationGracePeriodSeconds"] > stop
    if job["kind"] == "PyTorchJob":  # torchrun waits that long for its workers before SIGKILL
        (container,) = pod["spec"]["containers"]
        assert f"--shutdown-timeout={math.ceil(stop)}" in container["command"]


def test_pods_serve_metrics_on_every_interface_the_tour_on_loopback() -> None:
    config_map, _ = _render(CASES["tiny-cpu"])
    assert yaml.safe_load(config_map["data"]["train.yaml"])["metrics"]["host"] == "0.0.0.0"
    rr = resolve(_run(CASES["tiny-cpu"]))
    assert to_train_config(rr, make_plan(rr)).metrics.host == "127.0.0.1"


def test_the_hf_token_is_a_secret_reference_never_config() -> None:
    config_map, job = _render(CASES["llama70b-2nodes-everything"])
    env = {e["name"]: e for e in _pod(job)["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert "hf-token" not in json.dumps(config_map) and "HF_TOKEN" not in json.dumps(config_map)
    assert env["PYTHONUNBUFFERED"]["value"] == "1" and env["NCCL_DEBUG"]["value"] == "WARN"


def test_a_uri_run_downloads_under_the_output_with_credentials_from_its_secret() -> None:
    config_map, job = _render(CASES["qwen32b-s3-uri"])
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["data"]["uri"] == "s3://tac2sol-data/sets/tac2sol-500.jsonl"
    assert "path" not in train["data"]  # the trainer derives <output_dir>/data/source/tac2sol-500.jsonl
    from tac2sol.trainer.config import TrainConfig

    cfg = TrainConfig(**train)
    assert str(cfg.data.file) == "/output/qwen32b/data/source/tac2sol-500.jsonl"
    pod = _pod(job)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "data" not in volumes and "persistentVolumeClaim" in volumes["output"]
    container = pod["spec"]["containers"][0]
    assert not any(m["mountPath"] == "/data" for m in container["volumeMounts"])
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "s3-creds" not in json.dumps(config_map)
    # A path run gets no envFrom at all.
    _, plain = _render(CASES["qwen32b"])
    assert "envFrom" not in _pod(plain)["spec"]["containers"][0]


def test_pods_get_shm_mounts_scheduling_and_scrape_wiring() -> None:
    _, job = _render(CASES["llama70b-2nodes-everything"])
    pod = _pod(job, "Worker")
    spec = pod["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "tac2sol-data", "readOnly": True}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "tac2sol-output"}
    assert spec["nodeSelector"] == {
        "nvidia.com/gpu.product": "Quadro-RTX-8000",
        "topology.kubernetes.io/zone": "lab-a",
    }
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["priorityClassName"] == "training-high"
    assert pod["metadata"]["labels"]["team"] == "decompilers"
    assert pod["metadata"]["labels"]["tac2sol.dev/metrics"] == "true"
    assert pod["metadata"]["annotations"]["example.com/owner"] == "alice"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    ports = spec["containers"][0]["ports"]
    assert [p["name"] for p in ports] == ["metrics-0", "metrics-1", "metrics-2", "metrics-3"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["runPolicy"] == {
        "backoffLimit": 5,
        "cleanPodPolicy": "All",
        "ttlSecondsAfterFinished": 86400,
        "activeDeadlineSeconds": 172800,
    }


@pytest.mark.parametrize(
    ("suspend", "kueue", "expected"),
    [
        pytest.param(False, None, False, id="plain-running"),
        pytest.param(True, None, True, id="plain-suspended"),
        pytest.param(True, "q", True, id="kueue-held-by-spec"),
        pytest.param(False, "q", None, id="kueue-decides"),
    ],
)
def test_suspend_maps_to_run_policy(suspend: bool, kueue: str | None, expected: bool | None) -> None:
    changes: dict[str, Any] = {"suspend": suspend}
    if kueue:
        changes["resources__kueueQueue"] = kueue
    _, job = _render(_load("qwen32b", **changes))
    assert job["spec"]["runPolicy"].get("suspend") == expected


def test_mpijob_runs_mpirun_on_a_launcher_without_gpus() -> None:
    _, job = _render(CASES["qwen72b-mpijob"])
    assert job["kind"] == "MPIJob" and job["spec"]["slotsPerWorker"] == 4
    launcher = _pod(job, "Launcher")["spec"]["containers"][0]
    command = launcher["command"]
    # sh finds worker 0's pod IP (MASTER_ADDR) with the delivered kubectl, then execs mpirun.
    assert command[:2] == ["sh", "-c"] and "/opt/kube/kubectl get pod" in command[2]
    assert command[4] == "qwen2-5-72b-worker-0"
    mpirun = command.index("mpirun")
    assert command[mpirun : mpirun + 3] == ["mpirun", "-np", "8"]
    assert command[command.index("-x") + 1] == "MASTER_ADDR"
    assert launcher["command"][-4:] == ["tac2sol", "train", "--config", "/etc/tac2sol/train.yaml"]
    assert "limits" not in launcher["resources"]
    worker = _pod(job, "Worker")["spec"]["containers"][0]
    assert worker["resources"]["limits"] == {"memory": "48Gi", "nvidia.com/gpu": "4"}
    assert job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2


def test_mpijob_launcher_follows_the_specs_node_selector_and_tolerations() -> None:
    """Without them a launcher lands on any node (the test cluster's real node caught it on a kwok
    GPU node); it gets the spec's own, not the Workers' GPU product selector and GPU toleration."""
    pool = {"key": "pool", "operator": "Equal", "value": "train", "effect": "NoSchedule"}
    changes = {"resources__nodeSelector": {"pool": "train"}, "resources__tolerations": [pool]}
    _, job = _render(_load("qwen2.5-72b", launcher="mpijob", resources__nodes=2, **changes))
    launcher = _pod(job, "Launcher")["spec"]
    assert launcher["nodeSelector"] == {"pool": "train"}
    assert launcher["tolerations"] == [pool]
    worker = _pod(job, "Worker")["spec"]
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "Quadro-RTX-8000", "pool": "train"}
    _, plain = _render(CASES["qwen72b-mpijob"])
    assert "nodeSelector" not in _pod(plain, "Launcher")["spec"]


def test_cpu_runs_request_no_gpus_and_keep_paths_without_claims() -> None:
    config_map, job = _render(CASES["tiny-cpu"])
    spec = _pod(job)["spec"]
    resources = spec["containers"][0]["resources"]
    assert resources["limits"] == {"memory": resources["requests"]["memory"]}  # no GPU
    assert "nodeSelector" not in spec and "tolerations" not in spec
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    assert train["data"]["path"] == ".cache/sample/tac2sol-sample.jsonl"
    assert train["output_dir"] == "/output/out/tiny-local"
    assert {v["name"]: v for v in spec["volumes"]}["output"] == {"name": "output", "emptyDir": {}}


def test_spec_fingerprint_ignores_only_suspend() -> None:
    base = _run(_load("qwen32b"))
    suspended = _run(_load("qwen32b", suspend=True))
    other = _run(_load("qwen32b", training__learningRate=5e-5))
    assert render.spec_fingerprint(base) == render.spec_fingerprint(suspended)
    assert render.spec_fingerprint(base) != render.spec_fingerprint(other)


def test_an_impossible_plan_renders_nothing() -> None:
    run = _run(_load("deepseek-v3"))
    with pytest.raises(ValueError, match="does not fit"):
        render_children(resolve(run), make_plan(resolve(run)), OPTIONS)


def test_children_need_the_runs_uid() -> None:
    data = _load("qwen32b")
    run = parse_training_run(data)
    with pytest.raises(ValueError, match=r"no metadata\.uid"):
        render_children(resolve(run), make_plan(resolve(run)), OPTIONS)


# --- TrainJob (Kubeflow Trainer v2) --------------------------------------------------------------


def _trainjob_pod(job: dict[str, Any]) -> dict[str, Any]:
    (patch,) = job["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return rjob["template"]["spec"]["template"]


def test_a_trainjob_carries_the_pytorchjob_pod() -> None:
    """Same command, env, resources, volumes, mounts, security and scheduling as the v1 Master pod."""
    data = _load("llama-3.1-70b", **TRAINJOB_EVERYTHING)
    _, v1 = _render(data)
    config_map, job = _render({**data, "spec": {**data["spec"], "backend": "trainjob"}})
    master = _pod(v1)
    (container,) = master["spec"]["containers"]
    trainer = job["spec"]["trainer"]
    assert trainer["command"] == container["command"] and trainer["image"] == container["image"]
    assert trainer["env"] == container["env"]
    assert trainer["resourcesPerNode"] == container["resources"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    pod = _trainjob_pod(job)
    assert pod["metadata"] == master["metadata"]
    (patched,) = pod["spec"]["containers"]
    assert patched["name"] == "node" and patched["securityContext"] == container["securityContext"]
    # Mount paths as in the v1 pod; a runtime patch keys mounts by name, so the output claim's second
    # mount (HF_HOME) goes through a second volume of the same claim.
    assert [m["mountPath"] for m in patched["volumeMounts"]] == [
        m["mountPath"] for m in container["volumeMounts"]
    ]
    assert len({m["name"] for m in patched["volumeMounts"]}) == len(patched["volumeMounts"])
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["spec"]["volumes"]}
    assert claims["output"] == claims["output-1"] == "tac2sol-output"
    for key in ("securityContext", "terminationGracePeriodSeconds", "nodeSelector", "tolerations"):
        assert pod["spec"][key] == master["spec"][key], key
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "suspend" not in job["spec"]  # Kueue admits it
    assert config_map["data"] == _render(data)[0]["data"]


@pytest.mark.parametrize(
    ("suspend", "kueue", "expected"),
    [(False, None, False), (True, None, True), (True, "q", True), (False, "q", None)],
)
def test_trainjob_suspend_follows_the_run_and_kueue(
    suspend: bool, kueue: str | None, expected: bool | None
) -> None:
    _, job = _render(_load("qwen32b", backend="trainjob", suspend=suspend, resources__kueueQueue=kueue))
    assert job["spec"].get("suspend") == expected


def test_trainjob_dataset_credentials_are_optional_secret_keys() -> None:
    _, job = _render(TRAINJOB_CASES["trainjob-qwen32b-s3-uri"])
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in job["spec"]["trainer"]["env"] if "valueFrom" in e
    }
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": True}
    assert refs["FSSPEC_GS"]["optional"] is True


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"imagePullPolicy": "Always"}, "spec.imagePullPolicy"),
        ({"runPolicy": {"backoffLimit": 7}}, "spec.runPolicy"),
    ],
)
def test_auto_choosing_trainjob_refuses_what_a_trainjob_cannot_carry(
    changes: dict[str, Any], field: str
) -> None:
    """backend auto may pick TrainJob on a Trainer-only cluster: the run fails with the field, never
    silently without it (backend trainjob is refused earlier, by the CRD's CEL rules)."""
    run = _run(_load("qwen32b", **changes))
    with pytest.raises(InvalidInput, match=field.replace(".", r"\.")):
        render_children(resolve(run), make_plan(resolve(run)), OPTIONS, "TrainJob")
