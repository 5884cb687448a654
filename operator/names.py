"""Names the operator and the cluster agree on: API group and kind, labels, annotations, field manager.

One module so that a label written by the renderer and read by the progress poller, the handlers'
filters and the chart's PodMonitor cannot drift apart.
"""

from __future__ import annotations

# The TrainingRun API.
API_GROUP = "tac2sol.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "TrainingRun"
PLURAL = "trainingruns"

# Who the operator is to the apiserver (server-side apply, Events) and on its children.
FIELD_MANAGER = "tac2sol-operator"
MANAGED_BY = "tac2sol-operator"
RUN_LABEL = "tac2sol.dev/run"
METRICS_LABEL = "tac2sol.dev/metrics"  # trainer pods serving /metrics (the chart's PodMonitor selects it)
SPEC_ANNOTATION = "tac2sol.dev/spec"  # the spec (suspend aside) the job was made from
CONFIG_HASH_ANNOTATION = "tac2sol.dev/config-hash"

# Kubeflow training-operator v1.
KUBEFLOW_API_VERSION = "kubeflow.org/v1"
PYTORCHJOB = "PyTorchJob"
MPIJOB = "MPIJob"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"

# Kubeflow Trainer v2: a TrainJob runs as a JobSet of the same name (sigs.k8s.io/jobset).
TRAINER_API_VERSION = "trainer.kubeflow.org/v1alpha1"
TRAINJOB = "TrainJob"
TRAINJOB_PLURAL = "trainjobs"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the JobSet
RUNTIME_PATCH_MANAGER = "tac2sol.dev/operator"  # the TrainJob's runtimePatches entry the operator owns
DEFAULT_TRAINJOB_RUNTIME = "tac2sol-torch"  # the chart's ClusterTrainingRuntime
TRAINER_REPLICATED_JOB = "node"  # the runtime's replicated job of trainer pods (ancestor step "trainer")
TRAINER_CONTAINER = "node"  # the container Trainer's torch plugin fills (image, command, env, resources)

# Other projects' labels and resources.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
