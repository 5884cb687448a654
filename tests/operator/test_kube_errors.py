"""Which API errors mean "the run's namespace is going away" (nothing to create, nothing to retry).

The Status bodies are the ones kube-apiserver v1.35 returned in CI when a cluster-wide operator
met runs left in a namespace that was being deleted."""

from __future__ import annotations

from lightkube import ApiError
from lightkube.models import meta_v1

from tac2sol.operator.kube import namespace_going_away


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
