"""Pure builders of a TrainingRun's children: the ConfigMap and the PyTorchJob or MPIJob.

Everything here takes plain values and returns complete dicts ready for server-side apply: no
I/O, clock, randomness or environment. Names derive from the run, so a retry (or a restarted
operator) finds what the last attempt made. Arguments are never mutated.

Layout of a trainer pod (both kinds)::

    /etc/tac2sol/train.yaml      the trainer config (TrainConfig) rendered from the run and its plan
    /etc/tac2sol/ds_config.json  the DeepSpeed config (DeepSpeed plans only): train.yaml names it, the
                                 trainer reads it and generates none of its own
    /data                        spec.dataset.pvc (read-only); none for a spec.dataset.uri run
    /test-set                    spec.evaluation.testSet.pvc (read-only) when it is another claim than
                                 the dataset's (the same claim: the test set is read under /data)
    /output                      spec.output.pvc (or an emptyDir); checkpoints, adapter, reports, and
                                 data/source/ where a spec.dataset.uri is downloaded to
    /var/cache/huggingface       HF_HOME: the output claim's .cache/huggingface (downloads survive restarts)
    /dev/shm                     memory-backed emptyDir of spec.resources.shmSize (NCCL, dataloaders)

The Hugging Face token comes from the Secret named in ``spec.hfTokenSecret`` through an env
``valueFrom``, the dataset download's credentials from ``spec.dataset.credentialsSecret`` through
``envFrom``; neither is ever copied into the ConfigMap.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

import yaml

from tac2sol.operator.metrics import trainer_metrics_ports, trainer_scrape_annotations
from tac2sol.operator.names import (
    CONFIG_HASH_ANNOTATION,
    DEFAULT_TRAINJOB_RUNTIME,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GROUP_VERSION,
    KIND,
    KUBEFLOW_API_VERSION,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY,
    METRICS_LABEL,
    MPIJOB,
    PYTORCHJOB,
    RUN_LABEL,
    SPEC_ANNOTATION,
    TRAINJOB,
)
from tac2sol.operator.plan import Plan
from tac2sol.operator.resolve import ResolvedRun
from tac2sol.operator.spec import TrainingRun, parse_quantity
from tac2sol.operator.trainconfig import to_train_config
from tac2sol.trainer.config import TrainConfig
from tac2sol.trainer.deepspeed_config import DS_CONFIG_FILENAME, build_deepspeed_config

PYTORCH_CONTAINER = "pytorch"  # the name the training-operator looks for in a PyTorchJob
MPI_CONTAINER = "mpi"

CONFIG_DIR = "/etc/tac2sol"
CONFIG_FILE = "train.yaml"
DATA_DIR = "/data"
TEST_SET_DIR = "/test-set"
OUTPUT_DIR = "/output"
HF_HOME = "/var/cache/huggingface"
TRAIN_COMMAND = ["tac2sol", "train", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
# torchrun reads PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE, PET_MASTER_ADDR/PORT, which the
# training-operator sets on every PyTorchJob pod, and starts one process per GPU. `tac2sol
# torchrun` is torchrun exiting 143/137 (not torchrun's 1) when the ranks stopped on a signal, so
# the restart policy re-creates the pods (tac2sol/trainer/torchrun.py).
TORCHRUN = ["tac2sol", "torchrun", "--no-python"]
# After the trainer's own stop time (stop_seconds), time for torchrun and the runtime to exit.
STOP_MARGIN_SECONDS = 15
# The trainer image's user (the Dockerfile's ARG UID); fsGroup makes the volumes writable to it.
TRAINER_UID = 10001
# mpirun and one `kubectl exec` per worker: mostly idle, so a small share (a whole CPU per job
# left a 2-CPU node unable to place the launcher beside its workers).
LAUNCHER_REQUESTS = {"cpu": "250m", "memory": "512Mi"}
# Where training-operator v1's kubectl-delivery init container puts kubectl in an MPIJob launcher.
KUBECTL_DELIVERED = "/opt/kube/kubectl"
RESTART_POLICY = "ExitCode"  # see render_pytorchjob


@dataclass(frozen=True)
class RenderOptions:
    """Operator settings that shape the children (from ``OperatorSettings``)."""

    trainer_image: str
    image_pull_policy: str = "IfNotPresent"
    nccl_debug: str = "WARN"
    memory_per_process: str = "8Gi"
    cpu_per_process: int = 4
    select_gpu_product: bool = True
    # The trainer keeps serving /metrics this long after it ends, so a last progress read sees
    # the final step and the evaluation summary.
    metrics_linger_seconds: float = 60.0
    # The ClusterTrainingRuntime a TrainJob refers to (backend trainjob).
    trainjob_runtime: str = DEFAULT_TRAINJOB_RUNTIME


@dataclass(frozen=True)
class ChildNames:
    config_map: str
    job: str


def child_names(run_name: str) -> ChildNames:
    """Names derived from the run. Not ``<run>-config``: the MPIJob controller makes that one (hostfile)."""
    return ChildNames(config_map=f"{run_name}-train-config", job=run_name)


def job_kind(run: TrainingRun) -> str:
    return MPIJOB if run.spec.launcher == "mpijob" else PYTORCHJOB


def common_labels(run_name: str) -> dict[str, str]:
    """Labels on every child: the app.kubernetes.io set and ``tac2sol.dev/run``."""
    return {
        "app.kubernetes.io/name": "tac2sol",
        "app.kubernetes.io/instance": run_name,
        "app.kubernetes.io/part-of": "tac2sol",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        RUN_LABEL: run_name,
    }


def owner_reference(run: TrainingRun) -> dict[str, Any]:
    """The controller reference to the run: garbage collection deletes the children with it."""
    if not run.metadata.uid:
        raise ValueError(f"TrainingRun {run.metadata.name} has no metadata.uid: read it from the apiserver")
    return {
        "apiVersion": GROUP_VERSION,
        "kind": KIND,
        "name": run.metadata.name,
        "uid": run.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    run: TrainingRun, name: str, *, labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if run.metadata.namespace:
        meta["namespace"] = run.metadata.namespace
    meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    meta["ownerReferences"] = [owner_reference(run)]
    return meta


def spec_fingerprint(run: TrainingRun) -> str:
    """The spec without ``suspend``, as canonical JSON: what a running job may not change."""
    spec = run.spec.to_api()
    spec.pop("suspend", None)
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# --- the trainer config ---------------------------------------------------------------------------


def _in_dir(root: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(root, path.lstrip("/")))


def train_config(rr: ResolvedRun, plan: Plan, opts: RenderOptions) -> TrainConfig:
    """The trainer config with the pod's mount paths (and, for DeepSpeed, where its config is)."""
    s = rr.spec
    overrides: dict[str, Any] = {
        "output_dir": _in_dir(OUTPUT_DIR, s.output.path),
        "metrics": {"linger_seconds": opts.metrics_linger_seconds},
    }
    if s.dataset.path is not None:
        path = _in_dir(DATA_DIR, s.dataset.path) if s.dataset.pvc else s.dataset.path
        overrides["data"] = {"path": path}
    ts = s.evaluation.test_set
    if ts is not None and ts.path is not None and ts.pvc:
        overrides["evaluation"] = {"test_set": _in_dir(_test_set_mount(s.dataset.pvc, ts.pvc), ts.path)}
    if plan.strategy == "deepspeed":
        overrides["distributed"] = {"deepspeed_config": f"{CONFIG_DIR}/{DS_CONFIG_FILENAME}"}
    # Prometheus scrapes the pod's address; a local run keeps the trainer's 127.0.0.1.
    overrides["metrics"]["host"] = "0.0.0.0"
    # The pod's environment (a user's Secret fills it through envFrom) must not change the plan.
    overrides["env_overrides"] = False
    return to_train_config(rr, plan, **overrides)


def _test_set_mount(dataset_pvc: str | None, test_set_pvc: str) -> str:
    """Where the test set's claim is mounted: the dataset's mount when it is the same claim."""
    return DATA_DIR if test_set_pvc == dataset_pvc else TEST_SET_DIR


def stop_seconds(cfg: TrainConfig) -> int:
    """How long a trainer may take after SIGTERM: finish the step and checkpoint
    (training.termination_grace_seconds), then serve a last scrape (metrics.linger_seconds)."""
    return math.ceil(cfg.training.termination_grace_seconds + cfg.metrics.linger_seconds)


def config_data(rr: ResolvedRun, plan: Plan, opts: RenderOptions) -> dict[str, str]:
    """The ConfigMap's files: ``train.yaml`` and, for DeepSpeed plans, the ``ds_config.json`` that
    train.yaml names and the trainer reads (it generates none of its own then)."""
    cfg = train_config(rr, plan, opts)
    data = {CONFIG_FILE: cfg.dump_yaml()}
    ds = build_deepspeed_config(
        cfg.distributed, hidden_size=cfg.distributed.model_hidden_size, on_gpu=rr.on_gpu
    )
    if ds is not None:
        data[DS_CONFIG_FILENAME] = json.dumps(ds, indent=2, sort_keys=True) + "\n"
    return data


def config_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def render_config_map(
    rr: ResolvedRun, plan: Plan, opts: RenderOptions, data: dict[str, str] | None = None
) -> dict[str, Any]:
    """The run's ConfigMap; ``data`` is :func:`config_data` when the caller has it already."""
    run = rr.run
    name = run.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            run,
            child_names(name).config_map,
            labels={**common_labels(name), "app.kubernetes.io/component": "config"},
        ),
        "data": data if data is not None else config_data(rr, plan, opts),
    }


# --- pods -----------------------------------------------------------------------------------------


def _gib_ceil(n_bytes: float) -> str:
    return f"{max(1, math.ceil(n_bytes / 2**30))}Gi"


def pod_requests(run: TrainingRun, plan: Plan, opts: RenderOptions) -> dict[str, str]:
    """CPU and memory per trainer pod: the spec's values, else sized from the plan.

    memory = memoryPerProcess x processes + the plan's host memory for offloaded state + /dev/shm
    (a memory-backed emptyDir counts against the pod's memory).
    """
    r = run.spec.resources
    procs = plan.gpus_per_node
    cpu = r.cpu or str(opts.cpu_per_process * procs)
    if r.memory:
        memory = r.memory
    else:
        need = (
            parse_quantity(opts.memory_per_process) * procs
            + plan.host_memory_bytes
            + parse_quantity(r.shm_size)
        )
        memory = _gib_ceil(need)
    return {"cpu": cpu, "memory": memory}


def _env(run: TrainingRun, opts: RenderOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TAC2SOL_LOG_FORMAT", "value": "json"},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "NCCL_DEBUG", "value": opts.nccl_debug},
        # Fail fast (and let the job restart from a checkpoint) instead of hanging on a dead peer.
        {"name": "TORCH_NCCL_ASYNC_ERROR_HANDLING", "value": "1"},
    ]
    secret = run.spec.hf_token_secret
    if secret is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}}
        )
    return env


def _env_from(run: TrainingRun) -> dict[str, Any]:
    """Every key of ``spec.dataset.credentialsSecret`` as an env variable (AWS_*, FSSPEC_GS ...)."""
    secret = run.spec.dataset.credentials_secret
    return {"envFrom": [{"secretRef": {"name": secret}}]} if secret else {}


def _volumes(run: TrainingRun) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    s = run.spec
    name = run.metadata.name
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": child_names(name).config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.resources.shm_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if s.dataset.pvc:
        volumes.append(
            {"name": "data", "persistentVolumeClaim": {"claimName": s.dataset.pvc, "readOnly": True}}
        )
        mounts.append({"name": "data", "mountPath": DATA_DIR, "readOnly": True})
    ts = s.evaluation.test_set
    if ts is not None and ts.pvc and _test_set_mount(s.dataset.pvc, ts.pvc) == TEST_SET_DIR:
        volumes.append({"name": "test-set", "persistentVolumeClaim": {"claimName": ts.pvc, "readOnly": True}})
        mounts.append({"name": "test-set", "mountPath": TEST_SET_DIR, "readOnly": True})
    if s.output.pvc:
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": s.output.pvc}})
        mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
        mounts.append({"name": "output", "mountPath": HF_HOME, "subPath": ".cache/huggingface"})
    else:
        volumes.append({"name": "output", "emptyDir": {}})
        volumes.append({"name": "hf-cache", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
        mounts.append({"name": "hf-cache", "mountPath": HF_HOME})
    return volumes, mounts


def _scheduling(rr: ResolvedRun, opts: RenderOptions) -> dict[str, Any]:
    r = rr.spec.resources
    gpu = rr.gpu
    selector = dict(r.node_selector)
    tolerations = [t.to_api() for t in r.tolerations]
    if rr.on_gpu:
        if opts.select_gpu_product and gpu.product_label and GPU_PRODUCT_LABEL not in selector:
            selector[GPU_PRODUCT_LABEL] = gpu.product_label
        # GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule (GPU operator, cloud node pools).
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    out: dict[str, Any] = {}
    if selector:
        out["nodeSelector"] = dict(sorted(selector.items()))
    if tolerations:
        out["tolerations"] = tolerations
    if r.priority_class_name:
        out["priorityClassName"] = r.priority_class_name
    return out


def _launcher_scheduling(rr: ResolvedRun) -> dict[str, Any]:
    """The MPIJob launcher goes where the spec's nodeSelector and tolerations say (the cluster's
    pool for this run), without the GPU product selector and GPU toleration the Workers get."""
    r = rr.spec.resources
    out: dict[str, Any] = {}
    if r.node_selector:
        out["nodeSelector"] = dict(sorted(r.node_selector.items()))
    if r.tolerations:
        out["tolerations"] = [t.to_api() for t in r.tolerations]
    if r.priority_class_name:
        out["priorityClassName"] = r.priority_class_name
    return out


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standards ``restricted``, pod level: non-root, RuntimeDefault seccomp, and the
    image's user and group, with fsGroup so that the claims are writable to it."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Pod Security Standards ``restricted``, container level: no privilege escalation, no capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def trainer_container(
    rr: ResolvedRun, plan: Plan, opts: RenderOptions, *, name: str, command: list[str]
) -> dict[str, Any]:
    run = rr.run
    s = run.spec
    _, mounts = _volumes(run)
    requests = pod_requests(run, plan, opts)
    # Memory limited at the request: a trainer that outgrows its plan is OOMKilled in its own pod
    # (and the run says so: tac2sol.operator.pods) instead of pushing the node out of memory. No
    # CPU limit: throttling only slows the collective steps of every rank.
    resources: dict[str, Any] = {"requests": requests, "limits": {"memory": requests["memory"]}}
    if rr.on_gpu:
        resources["limits"][GPU_RESOURCE] = str(plan.gpus_per_node)
    return {
        "name": name,
        "image": s.image or opts.trainer_image,
        "imagePullPolicy": s.image_pull_policy or opts.image_pull_policy,
        "command": list(command),
        "env": _env(run, opts),
        **_env_from(run),
        "ports": trainer_metrics_ports(s.metrics_port, plan.gpus_per_node),
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }


def pod_template(
    rr: ResolvedRun,
    opts: RenderOptions,
    *,
    containers: list[dict[str, Any]],
    config: str,
    stop: int,
) -> dict[str, Any]:
    """A trainer pod: labels for the PodMonitor, scrape annotations, the spec's own labels/annotations,
    and a termination grace period that lets the trainer checkpoint before the kubelet's SIGKILL."""
    run = rr.run
    s = run.spec
    name = run.metadata.name
    labels = {**s.resources.pod_labels, **common_labels(name), "app.kubernetes.io/component": "trainer"}
    labels[METRICS_LABEL] = "true"
    annotations = {
        **s.resources.pod_annotations,
        **trainer_scrape_annotations(s.metrics_port),
        CONFIG_HASH_ANNOTATION: config,
    }
    volumes, _ = _volumes(run)
    return {
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {
            "containers": containers,
            "volumes": volumes,
            "securityContext": pod_security_context(),
            "terminationGracePeriodSeconds": stop + STOP_MARGIN_SECONDS,
            **_scheduling(rr, opts),
        },
    }


# --- jobs -----------------------------------------------------------------------------------------


def run_policy(run: TrainingRun) -> dict[str, Any]:
    """Kubeflow runPolicy from ``spec.runPolicy`` and ``spec.suspend``.

    Under Kueue (``resources.kueueQueue``) the operator only ever sets ``suspend: true`` and leaves
    releasing the job to Kueue's admission.
    """
    p = run.spec.run_policy
    policy: dict[str, Any] = {"backoffLimit": p.backoff_limit, "cleanPodPolicy": p.clean_pod_policy}
    if p.ttl_seconds_after_finished is not None:
        policy["ttlSecondsAfterFinished"] = p.ttl_seconds_after_finished
    if p.active_deadline_seconds is not None:
        policy["activeDeadlineSeconds"] = p.active_deadline_seconds
    suspend = job_suspend(run)
    if suspend is not None:
        policy["suspend"] = suspend
    return policy


def job_suspend(run: TrainingRun) -> bool | None:
    """The job's ``suspend``: ``spec.suspend``, except that under Kueue (``resources.kueueQueue``) the
    operator only ever sets ``true`` (None: leave the field to Kueue's admission)."""
    if run.spec.suspend or not run.spec.resources.kueue_queue:
        return run.spec.suspend
    return None


def job_metadata(run: TrainingRun) -> dict[str, Any]:
    name = run.metadata.name
    labels = {**common_labels(name), "app.kubernetes.io/component": "trainer"}
    if run.spec.resources.kueue_queue:
        labels[KUEUE_QUEUE_LABEL] = run.spec.resources.kueue_queue
    return _metadata(
        run,
        child_names(name).job,
        labels=labels,
        annotations={SPEC_ANNOTATION: spec_fingerprint(run)},
    )


def _replica(replicas: int, template: dict[str, Any], restart_policy: str) -> dict[str, Any]:
    return {"replicas": replicas, "restartPolicy": restart_policy, "template": copy.deepcopy(template)}


def render_pytorchjob(
    rr: ResolvedRun, plan: Plan, opts: RenderOptions, config: str | None = None
) -> dict[str, Any]:
    """Master (node rank 0) + ``nodes - 1`` Workers, ``gpusPerNode`` processes each (torchrun)."""
    run = rr.run
    stop = stop_seconds(train_config(rr, plan, opts))
    # torchrun forwards SIGTERM to its workers and kills them --shutdown-timeout later (30 s by default).
    command = [*TORCHRUN, f"--shutdown-timeout={stop}", *TRAIN_COMMAND]
    container = trainer_container(rr, plan, opts, name=PYTORCH_CONTAINER, command=command)
    config = config or config_hash(config_data(rr, plan, opts))
    template = pod_template(rr, opts, containers=[container], config=config, stop=stop)
    # ExitCode (RESTART_POLICY): exit codes 1-127 are the trainer's own verdict (bad data, a bug):
    # the job fails at once instead of repeating it backoffLimit times. 128+ (killed: OOM,
    # preemption, NCCL watchdog abort) re-create the pod, and training resumes from its last
    # checkpoint (trainer resume: auto). training-operator v1.9 does not count those re-creations
    # against runPolicy.backoffLimit: bound a run with runPolicy.activeDeadlineSeconds.
    replicas = {"Master": _replica(1, template, RESTART_POLICY)}
    if plan.nodes > 1:
        replicas["Worker"] = _replica(plan.nodes - 1, template, RESTART_POLICY)
    return {
        "apiVersion": KUBEFLOW_API_VERSION,
        "kind": PYTORCHJOB,
        "metadata": job_metadata(run),
        "spec": {
            "nprocPerNode": str(plan.gpus_per_node),
            "runPolicy": run_policy(run),
            "pytorchReplicaSpecs": replicas,
        },
    }


def mpirun_command(plan: Plan, job: str) -> list[str]:
    """The launcher's command: mpirun starts ``worldSize`` trainer ranks over the Workers' slots,
    rank 0 on ``<job>-worker-0`` (``--map-by slot`` fills the hostfile's workers in order).

    The training-operator gives the launcher the hostfile and kubexec.sh (``kubectl exec`` as the
    rsh agent, through OMPI_MCA_* variables); ranks read OMPI_COMM_WORLD_*. A v1 MPIJob's workers
    have no DNS names, so the launcher reads worker 0's pod IP with the kubectl that the operator's
    kubectl-delivery init container put in /opt/kube, and mpirun hands it to every rank as
    MASTER_ADDR for torch's rendezvous (its launcher Role may get pods).
    """
    find_master = (
        f'MASTER_ADDR=$({KUBECTL_DELIVERED} get pod "$1" -o jsonpath="{{.status.podIP}}") '
        '&& [ -n "$MASTER_ADDR" ] && export MASTER_ADDR && shift && exec "$@"'
    )
    mpirun = ["mpirun", "-np", str(plan.world_size), "--bind-to", "none", "--map-by", "slot"]
    mpirun += ["-x", "MASTER_ADDR"]
    return ["sh", "-c", find_master, "launcher", f"{job}-worker-0", *mpirun, *TRAIN_COMMAND]


def render_mpijob(
    rr: ResolvedRun, plan: Plan, opts: RenderOptions, config: str | None = None
) -> dict[str, Any]:
    """One Launcher (mpirun, no GPU) + ``nodes`` Workers with ``gpusPerNode`` slots each."""
    run = rr.run
    s = run.spec
    worker = trainer_container(rr, plan, opts, name=MPI_CONTAINER, command=["sleep", "infinity"])
    config = config or config_hash(config_data(rr, plan, opts))
    stop = stop_seconds(train_config(rr, plan, opts))
    worker_template = pod_template(rr, opts, containers=[worker], config=config, stop=stop)
    launcher = {
        "name": MPI_CONTAINER,
        "image": s.image or opts.trainer_image,
        "imagePullPolicy": s.image_pull_policy or opts.image_pull_policy,
        "command": mpirun_command(plan, child_names(run.metadata.name).job),
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": dict(LAUNCHER_REQUESTS)},
        "securityContext": container_security_context(),
    }
    name = run.metadata.name
    launcher_template = {
        "metadata": {
            "labels": {
                **s.resources.pod_labels,
                **common_labels(name),
                "app.kubernetes.io/component": "launcher",
            },
            "annotations": {**s.resources.pod_annotations, CONFIG_HASH_ANNOTATION: config},
        },
        "spec": {
            "containers": [launcher],
            "securityContext": pod_security_context(),
            **_launcher_scheduling(rr),
        },
    }
    return {
        "apiVersion": KUBEFLOW_API_VERSION,
        "kind": MPIJOB,
        "metadata": job_metadata(run),
        "spec": {
            "slotsPerWorker": plan.gpus_per_node,
            "mainContainer": MPI_CONTAINER,
            "runPolicy": run_policy(run),
            "mpiReplicaSpecs": {
                "Launcher": _replica(1, launcher_template, RESTART_POLICY),
                "Worker": _replica(plan.nodes, worker_template, RESTART_POLICY),
            },
        },
    }


def render_job(rr: ResolvedRun, plan: Plan, opts: RenderOptions, config: str | None = None) -> dict[str, Any]:
    """The PyTorchJob (``launcher: pytorchjob``, default) or MPIJob (``launcher: mpijob``);
    ``config`` is the ConfigMap data's hash (computed when not given)."""
    if job_kind(rr.run) == MPIJOB:
        return render_mpijob(rr, plan, opts, config)
    return render_pytorchjob(rr, plan, opts, config)


def render_children(
    rr: ResolvedRun,
    plan: Plan,
    opts: RenderOptions,
    kind: str | None = None,
    cluster_runtime: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Everything the run owns, in apply order: the ConfigMap first (the pods mount it), then the job:
    a ``kind`` TrainJob (``tac2sol.operator.trainjob``; after the run's own TrainingRuntime when it
    has a priority class, made from ``cluster_runtime``), else the run's v1 kind (:func:`job_kind`)."""
    if not plan.fits:
        raise ValueError(f"the plan for {rr.name} does not fit; nothing to render")
    data = config_data(rr, plan, opts)
    config = config_hash(data)
    if kind == TRAINJOB:
        from tac2sol.operator.trainjob import render_trainjob_children  # it builds on this module

        jobs = render_trainjob_children(rr, plan, opts, config, cluster_runtime)
    else:
        jobs = [render_job(rr, plan, opts, config)]
    return [render_config_map(rr, plan, opts, data), *jobs]


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the ConfigMap's files) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream (golden files, ``--dry-run`` output)."""
    return yaml.dump_all(objects, Dumper=_BlockDumper, sort_keys=False, width=120)
