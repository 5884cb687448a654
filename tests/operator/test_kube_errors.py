"""Which API errors mean "the run's namespace is going away" (nothing to create, nothing to retry).

The Status bodies are the ones kube-apiserver v1.35 returned in CI when a cluster-wide operator
met runs left in a namespace that was being deleted."""

from __future__ import annotations

import httpx2
from lightkube import ApiError
from lightkube.models import meta_v1

from tac2sol.operator.kube import is_not_found, namespace_going_away, status_code


def _error(code: int, message: str, kind: str | None = None) -> ApiError:
    details = meta_v1.StatusDetails(kind=kind, name="ns-x") if kind else None
    return ApiError(status=meta_v1.Status(code=code, message=message, reason="x", details=details))


def test_terminating_namespace_is_going_away() -> None:
    exc = _error(
        403,
        'configmaps "r-train-config" is forbidden: unable to create new content in namespace ns-x '
        "because it is being terminated",
        kind="configmaps",
    )
    assert namespace_going_away(exc)


def test_deleted_namespace_is_going_away() -> None:
    assert namespace_going_away(_error(404, 'namespaces "ns-x" not found', kind="namespaces"))


def test_rbac_denial_and_missing_kinds_are_not() -> None:
    rbac = _error(
        403,
        'configmaps is forbidden: User "system:serviceaccount:tac2sol-system:tac2sol" cannot create '
        'resource "configmaps" in API group "" in the namespace "ns-x"',
        kind="configmaps",
    )
    missing_kind = _error(404, "the server could not find the requested resource", kind="pytorchjobs")
    assert not namespace_going_away(rbac)
    assert not namespace_going_away(missing_kind)
    assert not namespace_going_away(ValueError("not an API error"))


def test_a_plain_404_of_an_api_group_not_served_is_not_found() -> None:
    """Asking for trainer.kubeflow.org where Trainer v2 is not installed: the apiserver answers a
    plain-text 404, which lightkube raises as httpx's error, not an ApiError."""
    request = httpx2.Request(
        "GET", "https://127.0.0.1/apis/trainer.kubeflow.org/v1alpha1/namespaces/x/trainjobs"
    )
    response = httpx2.Response(404, text="404 page not found", request=request)
    exc = httpx2.HTTPStatusError("404 Not Found", request=request, response=response)
    assert status_code(exc) == 404 and is_not_found(exc)
    assert status_code(_error(409, "conflict")) == 409 and not is_not_found(_error(409, "conflict"))
