"""A TrainingRun as a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``).

The pod is the one :mod:`tac2sol.operator.render` builds for a PyTorchJob (same command, env,
volumes, security context, ConfigMap, labels, scheduling), split over the two places a TrainJob
takes it:

* ``spec.trainer``: image, torchrun command, env, ``numNodes``, ``numProcPerNode`` and
  ``resourcesPerNode`` (GPUs, CPU, memory); Trainer's torch plugin adds the ``PET_*`` variables
  torchrun reads, as the training-operator does for a PyTorchJob;
* ``spec.runtimePatches`` (one entry, manager ``tac2sol.dev/operator``): what the runtime does not
  set per run: the pod's labels and annotations, volumes and the trainer container's mounts and
  security context, the pod security context, node selector, tolerations and termination grace.

The ClusterTrainingRuntime (the chart's ``tac2sol-torch``, :data:`TRAINER_CONTAINER` ``node``) owns
the rest: image pull policy, the metrics ports, restarts (JobSet ``failurePolicy``; exit codes
1-127 fail the run at once, as ``restartPolicy: ExitCode`` does for a PyTorchJob).

A run with ``resources.priorityClassName`` gets its own namespaced ``TrainingRuntime`` (named and
owned like the TrainJob): the ClusterTrainingRuntime's spec, as read from the cluster, with the
priority class on its pod templates, since Trainer v2.3's runtimePatches have no field for it. The
TrainJob then refers to that runtime. Runs without one refer to the ClusterTrainingRuntime itself.

What a TrainJob cannot carry per run (``validation.trainjob_problems``) is refused here, never
dropped: ``imagePullPolicy``, v1 ``runPolicy`` settings, ``launcher: mpijob``.
The dataset's credentials Secret, ``envFrom`` on a PyTorchJob, becomes one optional ``secretKeyRef``
variable per documented key (:data:`DATASET_CREDENTIAL_KEYS`): a TrainJob has no ``envFrom``.

Pure, like render.py: plain values in, a complete dict for server-side apply out.
"""

from __future__ import annotations

import copy
from typing import Any

from tac2sol.operator.names import (
    RUNTIME_PATCH_MANAGER,
    TRAINER_API_VERSION,
    TRAINER_CONTAINER,
    TRAINER_REPLICATED_JOB,
    TRAINJOB,
)
from tac2sol.operator.plan import Plan
from tac2sol.operator.render import (
    TORCHRUN,
    TRAIN_COMMAND,
    RenderOptions,
    common_labels,
    config_data,
    config_hash,
    job_metadata,
    job_suspend,
    owner_reference,
    pod_template,
    stop_seconds,
    train_config,
    trainer_container,
)
from tac2sol.operator.resolve import ResolvedRun
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.validation import trainjob_problems

RUNTIME_API_GROUP = TRAINER_API_VERSION.split("/")[0]
RUNTIME_KIND = "ClusterTrainingRuntime"
RUN_RUNTIME_KIND = "TrainingRuntime"  # a run's own runtime (a run with a priority class)
# Labels of the ClusterTrainingRuntime its per-run copy keeps (Trainer reads the framework from them).
RUNTIME_LABEL_PREFIX = "trainer.kubeflow.org/"
# spec.dataset.credentialsSecret keys the trainer's download reads (spec.py documents them).
DATASET_CREDENTIAL_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "FSSPEC_GS",
)
# The pod and container fields render.py sets, and where each goes in a TrainJob (None: the runtime's).
_POD_FIELDS = {
    "priorityClassName",  # into the run's own TrainingRuntime
    "containers",
    "volumes",
    "securityContext",
    "terminationGracePeriodSeconds",
    "nodeSelector",
    "tolerations",
}
_CONTAINER_FIELDS = {
    "name": None,
    "image": "trainer",
    "imagePullPolicy": None,
    "command": "trainer",
    "env": "trainer",
    "envFrom": "trainer",
    "ports": None,
    "resources": "trainer",
    "volumeMounts": "patch",
    "securityContext": "patch",
}


def credential_env(run: TrainingRun) -> list[dict[str, Any]]:
    """``spec.dataset.credentialsSecret`` as one optional secretKeyRef variable per known key."""
    secret = run.spec.dataset.credentials_secret
    if not secret:
        return []
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
        for key in DATASET_CREDENTIAL_KEYS
    ]


def needs_own_runtime(run: TrainingRun) -> bool:
    """Whether the run's TrainJob needs a TrainingRuntime of its own (and so the cluster's runtime)."""
    return run.spec.resources.priority_class_name is not None


def render_trainjob_children(
    rr: ResolvedRun,
    plan: Plan,
    opts: RenderOptions,
    config: str | None = None,
    cluster_runtime: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The TrainJob, preceded by the run's own TrainingRuntime when it needs one
    (:func:`needs_own_runtime`); ``cluster_runtime`` is then ``opts.trainjob_runtime`` as read
    from the cluster."""
    job = render_trainjob(rr, plan, opts, config)
    if not needs_own_runtime(rr.run):
        return [job]
    if cluster_runtime is None:
        raise ValueError(f"{rr.name} has a priority class: its runtime copies the ClusterTrainingRuntime")
    priority = rr.spec.resources.priority_class_name
    assert priority is not None
    runtime = render_run_runtime(rr.run, cluster_runtime, priority)
    job["spec"]["runtimeRef"] = {
        "name": runtime["metadata"]["name"],
        "apiGroup": RUNTIME_API_GROUP,
        "kind": RUN_RUNTIME_KIND,
    }
    return [runtime, job]


def render_run_runtime(
    run: TrainingRun, cluster_runtime: dict[str, Any], priority_class: str
) -> dict[str, Any]:
    """The run's TrainingRuntime: ``cluster_runtime``'s spec with ``priority_class`` on the pod
    template of every replicated job (the chart's runtime has one, the trainer nodes)."""
    spec = copy.deepcopy(cluster_runtime["spec"])
    for rjob in spec["template"]["spec"]["replicatedJobs"]:
        pod = rjob.setdefault("template", {}).setdefault("spec", {}).setdefault("template", {})
        pod.setdefault("spec", {})["priorityClassName"] = priority_class
    kept = {
        k: v
        for k, v in (cluster_runtime["metadata"].get("labels") or {}).items()
        if k.startswith(RUNTIME_LABEL_PREFIX)
    }
    name = run.metadata.name
    meta: dict[str, Any] = {"name": name}
    if run.metadata.namespace:
        meta["namespace"] = run.metadata.namespace
    meta["labels"] = {**common_labels(name), "app.kubernetes.io/component": "trainer", **kept}
    meta["ownerReferences"] = [owner_reference(run)]
    return {"apiVersion": TRAINER_API_VERSION, "kind": RUN_RUNTIME_KIND, "metadata": meta, "spec": spec}


def render_trainjob(
    rr: ResolvedRun, plan: Plan, opts: RenderOptions, config: str | None = None
) -> dict[str, Any]:
    """The TrainJob: ``nodes`` trainer pods with ``gpusPerNode`` torchrun processes each, on
    ``opts.trainjob_runtime``; ``config`` is the ConfigMap data's hash (computed when not given).
    The pod's ``priorityClassName`` goes into the run's own runtime (:func:`render_trainjob_children`).
    Raises SpecProblem for what a TrainJob cannot carry."""
    problems = trainjob_problems(rr.spec)
    if problems:
        raise problems[0]
    run = rr.run
    stop = stop_seconds(train_config(rr, plan, opts))
    command = [*TORCHRUN, f"--shutdown-timeout={stop}", *TRAIN_COMMAND]
    container = trainer_container(rr, plan, opts, name=TRAINER_CONTAINER, command=command)
    config = config or config_hash(config_data(rr, plan, opts))
    template = pod_template(rr, opts, containers=[container], config=config, stop=stop)
    pod = template["spec"]
    unplaced = (set(pod) - _POD_FIELDS) | (set(container) - set(_CONTAINER_FIELDS))
    if unplaced:  # render.py grew a field: say where it goes in a TrainJob (or refuse it above)
        raise AssertionError(f"no place in a TrainJob for {sorted(unplaced)}")

    trainer: dict[str, Any] = {
        "image": container["image"],
        "command": container["command"],
        "env": [*container["env"], *credential_env(run)],
        "numNodes": plan.nodes,
        "numProcPerNode": plan.gpus_per_node,
        "resourcesPerNode": container["resources"],
    }
    volumes, mounts = _one_mount_per_volume(pod["volumes"], container["volumeMounts"])
    pod_patch: dict[str, Any] = {
        "volumes": volumes,
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "volumeMounts": mounts,
                "securityContext": container["securityContext"],
            }
        ],
        "securityContext": pod["securityContext"],
        "terminationGracePeriodSeconds": pod["terminationGracePeriodSeconds"],
    }
    for key in ("nodeSelector", "tolerations"):
        if key in pod:
            pod_patch[key] = pod[key]
    patch = {
        "manager": RUNTIME_PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": TRAINER_REPLICATED_JOB,
                            "template": {
                                "spec": {"template": {"metadata": template["metadata"], "spec": pod_patch}}
                            },
                        }
                    ]
                }
            }
        },
    }
    spec: dict[str, Any] = {
        "runtimeRef": {"name": opts.trainjob_runtime, "apiGroup": RUNTIME_API_GROUP, "kind": RUNTIME_KIND},
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    suspend = job_suspend(run)
    if suspend is not None:
        spec["suspend"] = suspend
    deadline = run.spec.run_policy.active_deadline_seconds
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": TRAINER_API_VERSION, "kind": TRAINJOB, "metadata": job_metadata(run), "spec": spec}


def _one_mount_per_volume(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A runtime patch keys volume mounts by name (a map list): a volume mounted twice (the output
    claim at /output and its .cache/huggingface at HF_HOME) gets a second volume of the same source."""
    by_name = {v["name"]: v for v in volumes}
    out_volumes = list(volumes)
    out_mounts: list[dict[str, Any]] = []
    uses: dict[str, int] = {}
    for mount in mounts:
        name = mount["name"]
        uses[name] = uses.get(name, 0) + 1
        if uses[name] > 1:
            alias = f"{name}-{uses[name] - 1}"
            out_volumes.append({**copy.deepcopy(by_name[name]), "name": alias})
            mount = {**mount, "name": alias}
        out_mounts.append(mount)
    return out_volumes, out_mounts
