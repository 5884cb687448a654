"""spec.backend -> the job kind: what auto picks on clusters serving v1, Trainer v2, both or neither."""

from __future__ import annotations

import pytest

from tac2sol.operator.backend import BackendUnavailable, candidate_kinds, choose, pod_selector

BOTH = frozenset({"pytorchjob", "trainjob"})
V1 = frozenset({"PyTorchJob", "MPIJob"})
V2 = frozenset({"TrainJob"})


@pytest.mark.parametrize(
    ("spec", "served", "enabled", "want"),
    [
        # Existing runs (no backend) on a cluster with the training-operator: unchanged.
        ({}, V1, BOTH, ("pytorchjob", "PyTorchJob", "V1Served")),
        ({}, V1 | V2, BOTH, ("pytorchjob", "PyTorchJob", "V1Served")),
        ({"launcher": "mpijob"}, V1 | V2, BOTH, ("pytorchjob", "MPIJob", "LauncherMPIJob")),
        # A cluster with only Trainer v2, or an operator installed for trainjob only.
        ({}, V2, BOTH, ("trainjob", "TrainJob", "TrainJobServed")),
        ({}, V1 | V2, frozenset({"trainjob"}), ("trainjob", "TrainJob", "TrainJobServed")),
        # Nothing served: the v1 kind, whose apply then reports JobKindMissing.
        ({}, frozenset(), BOTH, ("pytorchjob", "PyTorchJob", "NothingServed")),
        ({}, frozenset(), frozenset({"trainjob"}), ("trainjob", "TrainJob", "NothingServed")),
        # Asked for: whatever the cluster serves.
        ({"backend": "trainjob"}, V1, BOTH, ("trainjob", "TrainJob", "Requested")),
        ({"backend": "pytorchjob", "launcher": "mpijob"}, V2, BOTH, ("pytorchjob", "MPIJob", "Requested")),
    ],
)
def test_choose(
    spec: dict, served: frozenset[str], enabled: frozenset[str], want: tuple[str, str, str]
) -> None:
    got = choose(spec, served, enabled)
    assert (got.backend, got.kind, got.reason) == want
    assert got.message


@pytest.mark.parametrize(
    ("spec", "enabled", "match"),
    [
        ({"backend": "pytorchjob"}, frozenset({"trainjob"}), "installed for trainjob only"),
        ({"launcher": "mpijob"}, frozenset({"trainjob"}), "launcher mpijob"),
    ],
)
def test_a_backend_the_operator_may_not_use_is_refused(
    spec: dict, enabled: frozenset[str], match: str
) -> None:
    with pytest.raises(BackendUnavailable, match=match):
        choose(spec, V1 | V2, enabled)


def test_candidate_kinds_and_pod_selectors() -> None:
    assert candidate_kinds({}, BOTH) == ["PyTorchJob", "TrainJob"]
    assert candidate_kinds({"launcher": "mpijob"}, BOTH) == ["MPIJob"]
    assert candidate_kinds({"backend": "trainjob"}, BOTH) == ["TrainJob"]
    assert candidate_kinds({}, frozenset({"trainjob"})) == ["TrainJob"]
    assert pod_selector("TrainJob", "r") == {"jobset.sigs.k8s.io/jobset-name": "r"}
    assert pod_selector("PyTorchJob", "r") == {"training.kubeflow.org/job-name": "r"}
