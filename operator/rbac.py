"""The operator's permissions: ONE list of rules, the source of the chart's ClusterRole.

Every verb here is used by ``tac2sol.operator.kube`` or by kopf itself, and nothing more; the
end-to-end tests run the operator as a ServiceAccount bound to exactly these rules. A chart or
manifest test compares its ClusterRole with :func:`cluster_role`.

Namespaced mode (``tac2sol operator --namespace NS``): bind the ClusterRole with a RoleBinding in
NS. The cluster-scoped rules are then not granted: the operator turns kopf's CRD scanning off in that
mode and reads the API's resources once at start, and the chart grants the trainjob backend's read of
its ClusterTrainingRuntime by a ClusterRole limited to that runtime's name.

Backends (``TAC2SOL_BACKENDS``, chart value ``backends``): the job kinds' rules are granted only for
the backends the operator may use, so a trainjob-only install has no rule on ``kubeflow.org``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tac2sol.operator.backend import BACKENDS, PYTORCHJOB_BACKEND, TRAINJOB_BACKEND
from tac2sol.operator.names import API_GROUP, PLURAL, TRAINER_API_VERSION, TRAINJOB_PLURAL

CLUSTER_ROLE_NAME = "tac2sol-operator"


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    cluster_scoped: bool = False
    backend: str | None = None  # granted only when the operator may use this backend (TAC2SOL_BACKENDS)

    def to_api(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: tuple[Rule, ...] = (
    Rule(
        (API_GROUP,),
        (PLURAL,),
        ("get", "list", "watch", "patch"),
        "kopf watches TrainingRuns and keeps its progress/diff-base annotations (prefix tac2sol.dev) on them",
    ),
    Rule(
        (API_GROUP,),
        (f"{PLURAL}/status",),
        ("patch",),
        "status: phase, conditions, plan, job reference, progress",
    ),
    Rule(
        (API_GROUP,),
        (f"{PLURAL}/finalizers",),
        ("update",),
        "children carry blockOwnerDeletion owner references (OwnerReferencesPermissionEnforcement)",
    ),
    Rule(
        ("kubeflow.org",),
        ("pytorchjobs", "mpijobs"),
        ("get", "list", "watch", "create", "patch"),
        "server-side apply of the job (create when new, patch after); watch its conditions; "
        "list: whether the cluster serves the kind (backend auto)",
        backend=PYTORCHJOB_BACKEND,
    ),
    Rule(
        (TRAINER_API_VERSION.split("/")[0],),
        (TRAINJOB_PLURAL,),
        ("get", "list", "watch", "create", "patch"),
        "server-side apply of the TrainJob (create when new, patch after); watch its conditions; "
        "list: whether the cluster serves the kind (backend auto)",
        backend=TRAINJOB_BACKEND,
    ),
    Rule(
        (TRAINER_API_VERSION.split("/")[0],),
        ("trainingruntimes",),
        ("create", "patch"),
        "server-side apply of a run's own TrainingRuntime (a TrainJob run with a priority class)",
        backend=TRAINJOB_BACKEND,
    ),
    Rule(
        (TRAINER_API_VERSION.split("/")[0],),
        ("clustertrainingruntimes",),
        ("get",),
        "read the ClusterTrainingRuntime a run's own TrainingRuntime copies (namespaced mode: the "
        "chart grants it by a ClusterRole limited to its runtime's name)",
        cluster_scoped=True,
        backend=TRAINJOB_BACKEND,
    ),
    Rule(("",), ("configmaps",), ("get", "create", "patch"), "server-side apply of the trainer config"),
    Rule(
        ("",),
        ("pods",),
        ("list", "watch"),
        "one watch of the job pods it made (labelled by it): progress, why pods do not run, failure reasons",
    ),
    Rule(
        ("",),
        ("events",),
        ("create", "list"),
        "an Event per phase transition; kopf's own warnings; list: Trainer's TrainJobResourcesCreationFailed "
        "Events on a TrainJob that has no pods",
    ),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        ("list", "watch"),
        "kopf notices CRDs installed after the operator started (cluster-wide mode only)",
        cluster_scoped=True,
    ),
)


def rules(*, namespaced: bool = False, backends: Iterable[str] = BACKENDS) -> list[dict[str, Any]]:
    """PolicyRules: every backend-independent rule, then each of ``backends``' rules (the chart
    concatenates them in this order); ``namespaced`` leaves out the cluster-scoped ones."""
    common = [r.to_api() for r in RULES if r.backend is None and not (namespaced and r.cluster_scoped)]
    wanted = set(backends)
    out = common + [rule for b in BACKENDS if b in wanted for rule in backend_rules(b)]
    if not namespaced:
        out += [rule for b in BACKENDS if b in wanted for rule in backend_rules(b, cluster_scoped=True)]
    return out


def backend_rules(backend: str, *, cluster_scoped: bool = False) -> list[dict[str, Any]]:
    """The rules only a backend needs: its (namespaced) job kinds, or with ``cluster_scoped`` its
    cluster-scoped reads (a namespaced install's chart grants these limited by resource name)."""
    return [r.to_api() for r in RULES if r.backend == backend and r.cluster_scoped == cluster_scoped]


def cluster_role(name: str = CLUSTER_ROLE_NAME, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The ClusterRole object (the chart renders the same rules)."""
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta,
        "rules": rules(),
    }
