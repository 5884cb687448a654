"""The operator's work behind the kopf entry points (``handlers.py``).

``reconcile``: read spec -> validate (the CLI's pydantic models) -> plan -> render (in a thread) ->
server-side apply, or for a new run a create of its job (owner references and labels come from
the renderer) -> status. Running it twice, or after a crash half-way, changes nothing that is
already right. Which runs need it, and when: ``tac2sol.operator.controller``.

``follow_job``: a Kubeflow job's conditions -> the run's phase, conditions and an Event.

``record_progress``: the master pod's ``/metrics`` -> ``status.progress`` (and ``status.evaluation``).

``record_pods``: the job's pods -> the ``PodsReady`` condition: why they do not run (the
scheduler's or kubelet's reason, ``tac2sol.operator.pods``).

Phases and conditions: ``tac2sol.operator.lifecycle``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import ApiError

from tac2sol.errors import InvalidInput
from tac2sol.operator import jobs, lifecycle, metrics, pods
from tac2sol.operator.backend import (
    BACKEND_OF_KIND,
    BACKEND_SELECTED,
    BackendChoice,
    BackendUnavailable,
    missing_kind_message,
    pod_selector,
)
from tac2sol.operator.kube import Kube, StatusError, TransientError, namespace_going_away, status_code
from tac2sol.operator.lifecycle import JOB_CREATED, PLANNED, SPEC_CHANGE_REJECTED, condition
from tac2sol.operator.names import RUN_LABEL, SPEC_ANNOTATION, TRAINER_API_VERSION, TRAINJOB
from tac2sol.operator.plan import Plan
from tac2sol.operator.planner import format_bytes, make_plan
from tac2sol.operator.podcache import PodCache
from tac2sol.operator.progress import Scrapes, read_progress
from tac2sol.operator.render import RenderOptions, child_names, job_kind, render_children, spec_fingerprint
from tac2sol.operator.resolve import resolve
from tac2sol.operator.settings import OperatorSettings
from tac2sol.operator.spec import TrainingRun
from tac2sol.operator.specfile import parse_training_run
from tac2sol.operator.status import Phase
from tac2sol.operator.trainjob import RUNTIME_KIND as CLUSTER_RUNTIME_KIND
from tac2sol.operator.trainjob import needs_own_runtime
from tac2sol.operator.trainjob_status import CREATION_FAILED, creation_failure, trainer_status_progress

log = logging.getLogger(__name__)

RETRY_SOON = 5.0  # seconds: conflicts, throttling, a dropped connection
RETRY_LATER = 30.0  # seconds: something a person or another controller has to fix first


StatusUpdate = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclass(frozen=True)
class StatusChange:
    """A status change not written yet (and the Event reason and message if the phase changes)."""

    change: StatusUpdate
    why: tuple[str, str]


@dataclass(frozen=True)
class Operator:
    """What every handler needs; built once at startup and kept in kopf's ``memo``."""

    kube: Kube
    settings: OperatorSettings
    options: RenderOptions
    pods: PodCache | None = None  # the job pods, from one watch (None: list them each time)
    # Trainer /metrics reads, all runs together (TAC2SOL_METRICS_SCRAPES, _PROGRESS_TIMEOUT_SECONDS).
    scrapes: Scrapes = field(default_factory=lambda: Scrapes(8, 5.0))


async def job_pods(op: Operator, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    """A job's pods (``backend.pod_selector``): from the pod watch once it has listed them, else
    one list request."""
    cached = op.pods.of_job(namespace, selector) if op.pods is not None else None
    if cached is not None:
        return cached
    return await op.kube.list_pods(namespace, selector)


def render_options(settings: OperatorSettings) -> RenderOptions:
    return RenderOptions(
        trainer_image=settings.trainer_image,
        image_pull_policy=settings.image_pull_policy,
        nccl_debug=settings.nccl_debug,
        memory_per_process=settings.memory_per_process,
        cpu_per_process=settings.cpu_per_process,
        select_gpu_product=settings.select_gpu_product,
        # Two progress reads fit in the trainer's last minute, so the final numbers are seen.
        metrics_linger_seconds=min(600.0, 2 * settings.progress_interval_seconds),
        trainjob_runtime=settings.trainjob_runtime,
    )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- status writes --------------------------------------------------------------------------------


async def write_status(
    op: Operator,
    namespace: str,
    name: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    why: tuple[str, str],
    body: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Change the run's status. When the phase changes (or a Running run starts Restarting),
    post an Event with ``why`` (reason, message) and count the run in its new phase. Returns the
    run as stored (None: nothing to write)."""
    written = await op.kube.update_run_status(namespace, name, change, body=body)
    if written is None:
        return None
    run, stored = written
    old, new = run.get("status") or {}, stored.get("status") or {}
    old_phase, phase = old.get("phase"), new.get("phase")
    if phase and (phase != old_phase or _running_reason(old) != _running_reason(new)):
        reason, message = why
        failed = phase == Phase.FAILED.value
        op.kube.post_event(run, type_="Warning" if failed else "Normal", reason=reason, message=message)
        metrics.set_run_phase(namespace, name, phase)
        log.info("%s/%s: %s -> %s (%s)", namespace, name, old_phase or "-", phase, reason)
    return stored


def _running_reason(status: dict[str, Any]) -> str | None:
    """Why a Running run runs: JobRunning or Restarting (an Event marks each change)."""
    if status.get("phase") != Phase.RUNNING.value:
        return None
    return next((c.get("reason") for c in status.get("conditions") or [] if c["type"] == "Running"), None)


def _with(
    run: dict[str, Any],
    *,
    phase: str | None = None,
    message: str | None = None,
    conditions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    **fields: Any,
) -> dict[str, Any]:
    """A copy of the run's status with these changes (never mutates ``run``)."""
    status = dict(run.get("status") or {})  # shallow: values are replaced, never changed in place
    if conditions:
        status["conditions"] = lifecycle.merge_conditions(
            status.get("conditions") or [], list(conditions), now()
        )
    if phase is not None:
        status["phase"] = phase
    if message is not None:
        status["message"] = message
    for key, value in fields.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value
    return status


async def _fail(
    op: Operator,
    body: dict[str, Any],
    *,
    reason: str,
    message: str,
    plan: Plan | None = None,
) -> None:
    """Phase Failed before any job exists (invalid spec, no fitting plan)."""
    gen = body["metadata"].get("generation")

    def change(run: dict[str, Any]) -> dict[str, Any]:
        return _with(
            run,
            phase=Phase.FAILED.value,
            message=message,
            conditions=[
                condition(PLANNED, False, reason, message, generation=gen),
                condition("Failed", True, reason, message, generation=gen),
            ],
            observedGeneration=gen,
            plan=plan.to_api() if plan is not None else None,
        )

    await write_status(
        op, body["metadata"]["namespace"], body["metadata"]["name"], change, why=(reason, message), body=body
    )


# --- reconcile --------------------------------------------------------------------------------------


def _run_data(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "uid", "generation", "labels", "annotations")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": body.get("spec"),
    }


def no_fit_message(plan: Plan) -> str:
    """Why nothing fits, with the arithmetic, and the ways out the planner found."""
    arithmetic = " ".join(
        f"{r}." for r in plan.reasons if "weights alone" in r or r.startswith("nothing fits")
    )
    ways = "; ".join(plan.ways_out) or "none found"
    return (
        f"no layout of {plan.model} fits {plan.world_size} x {plan.gpu_type} "
        f"(best: {format_bytes(plan.per_gpu_memory_bytes)} per GPU > "
        f"usable {format_bytes(plan.usable_memory_bytes)}). "
        f"{arithmetic} Ways out: {ways}"
    )


def _plan_summary(plan: Plan) -> str:
    layout = plan.strategy + (f" ZeRO-{plan.zero_stage}" if plan.zero_stage is not None else "")
    return (
        f"{layout}, {plan.precision}, {plan.nodes} x {plan.gpus_per_node} {plan.gpu_type}, "
        f"{format_bytes(plan.per_gpu_memory_bytes)} per GPU, "
        f"gradient accumulation {plan.gradient_accumulation_steps}"
    )


def _changed_fields(applied: dict[str, Any], wanted: dict[str, Any], prefix: str = "spec") -> list[str]:
    out = []
    for key in sorted(applied.keys() | wanted.keys()):
        a, w = applied.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(w, dict):
            out.extend(_changed_fields(a, w, f"{prefix}.{key}"))
        elif a != w:
            out.append(f"{prefix}.{key}")
    return out


def _applied_run(body: dict[str, Any], job: dict[str, Any]) -> TrainingRun:
    """The run as its job was made: the spec stored on the job, with today's ``spec.suspend``."""
    spec = json.loads(job["metadata"]["annotations"][SPEC_ANNOTATION])
    spec["suspend"] = bool((body.get("spec") or {}).get("suspend", False))
    return TrainingRun.model_validate({**_run_data(body), "spec": spec})


def _owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in obj["metadata"].get("ownerReferences") or []
    )


class JobExists(Exception):
    """Creating the job found one of the same name (a crash after creating it, or not ours)."""


async def reconcile(
    op: Operator,
    body: dict[str, Any],
    known_job: dict[str, Any] | None = None,
    defer: Callable[[StatusChange], None] | None = None,
) -> dict[str, Any] | None:
    """Bring the run's children and status in line with its spec (new runs, spec changes, and
    runs found at startup). Returns the run as stored by the last status write (None: none).

    ``known_job``: the run's job as the job watch last saw it (saves a GET). A new run (no
    status yet) takes the short path: its ConfigMap, then its job created in one request; its
    status write goes to ``defer`` when given (written later, with the job's first conditions in
    the same write), and its Events are posted from the background."""
    fresh = not body.get("status") and known_job is None
    try:
        return await _reconcile(op, body, known_job, fresh=fresh, defer=defer if fresh else None)
    except JobExists:
        # The job is there already: the long path decides whether it is this run's.
        return await _reconcile(op, body, None, fresh=False, accepted=True)


async def _reconcile(
    op: Operator,
    body: dict[str, Any],
    known_job: dict[str, Any] | None,
    *,
    fresh: bool,
    accepted: bool = False,
    defer: Callable[[StatusChange], None] | None = None,
) -> dict[str, Any] | None:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation")
    status = body.get("status") or {}
    source = f"TrainingRun {ns}/{name}"

    latest: dict[str, Any] | None = body
    accept = (f"generation {gen} accepted; planning", "Accepted")
    if (
        not fresh  # a new run goes straight to its job (Event JobApplied): no Pending step
        and not accepted
        and status.get("observedGeneration") != gen
        and lifecycle.phase_is_operator_owned(status)
    ):
        latest = await write_status(
            op,
            ns,
            name,
            lambda run: _with(
                run,
                phase=Phase.PENDING.value,
                message=accept[0],
                conditions=[
                    condition(PLANNED, "Unknown", "Accepted", "planning this generation", generation=gen)
                ],
            ),
            why=(accept[1], accept[0]),
            body=body,
        )

    job = None if fresh else await _existing_job(op, body, known_job)
    try:
        run = parse_training_run(_run_data(body), source=source)
        invalid = None
    except InvalidInput as exc:
        run, invalid = None, str(exc)

    rejected: str | None = None
    if job is not None:
        # The job keeps the spec it was made from; only spec.suspend follows the run.
        effective = _applied_run(body, job)
        if run is None:
            rejected = f"the new spec is invalid: {invalid}"
        elif spec_fingerprint(run) != spec_fingerprint(effective):
            applied, wanted = json.loads(spec_fingerprint(effective)), json.loads(spec_fingerprint(run))
            rejected = "changed: " + ", ".join(_changed_fields(applied, wanted))
    elif run is None:
        message = invalid or f"{source}: invalid spec"
        await _fail(op, body, reason=lifecycle.INVALID_SPEC, message=message)
        raise kopf.PermanentError(message)
    else:
        effective = run

    # Planning and rendering take milliseconds of CPU: threads, so the event loop keeps serving.
    resolved = resolve(effective)
    plan = await asyncio.to_thread(make_plan, resolved)
    if not plan.fits:
        message = f"{source}: {no_fit_message(plan)}"
        await _fail(op, body, reason=lifecycle.PLAN_DOES_NOT_FIT, message=message, plan=plan)
        raise kopf.PermanentError(message)

    choice: BackendChoice | None = None
    if job is None:
        try:
            choice = await jobs.choose_backend(
                op.kube, ns, body.get("spec") or {}, op.settings.enabled_backends
            )
        except BackendUnavailable as exc:
            message = f"{source}: {exc}"
            await _fail(op, body, reason=lifecycle.BACKEND_UNAVAILABLE, message=message, plan=plan)
            raise kopf.PermanentError(message) from None
    kind = job["kind"] if job is not None else choice.kind  # type: ignore[union-attr]

    cluster_runtime = None
    if kind == TRAINJOB and needs_own_runtime(effective):
        cluster_runtime = await _cluster_runtime(op, body)
    try:
        children = await asyncio.to_thread(render_children, resolved, plan, op.options, kind, cluster_runtime)
    except InvalidInput as exc:
        await _condition_only(op, body, JOB_CREATED, "RenderFailed", f"could not render the job: {exc}")
        raise kopf.PermanentError(f"could not render the children of {source}: {exc}") from None

    stored = await _apply_all(op, body, children, create_job=fresh)
    if stored is None:
        log.info("%s: namespace is being deleted; nothing created", source)
        return None
    kind = stored["kind"]
    if job is None or job["metadata"].get("uid") != stored["metadata"].get("uid"):
        metrics.job_created(kind)

    rejection = [
        condition(
            SPEC_CHANGE_REJECTED,
            True,
            "JobExists",
            f"spec changed while {kind} {stored['metadata']['name']} exists ({rejected}); the job keeps the "
            "spec it was created with, only spec.suspend applies: delete and re-create the run to change it",
            generation=gen,
        )
        if rejected
        else condition(SPEC_CHANGE_REJECTED, False, "SpecApplied", "", generation=gen)
    ]

    state = lifecycle.job_state(stored)
    created = f"{kind} {stored['metadata']['name']} created; waiting for its pods"
    why = (state.reason, state.message) if state else ("JobApplied", created)

    def change(current: dict[str, Any]) -> dict[str, Any]:
        st = current.get("status") or {}
        conditions = [
            condition(PLANNED, True, "PlanFits", _plan_summary(plan), generation=gen),
            condition(
                JOB_CREATED,
                True,
                "JobApplied",
                f"{kind} {stored['metadata']['name']} applied",
                generation=gen,
            ),
            *rejection,
        ]
        if choice is not None:
            conditions.append(
                condition(BACKEND_SELECTED, True, choice.reason, choice.message, generation=gen)
            )
        phase, message = None, None
        if lifecycle.phase_is_operator_owned(st):
            phase = state.phase if state else Phase.PLANNING.value
            message = state.message if state else created
            if state is not None:
                conditions.extend(lifecycle.job_conditions(state, gen))
            else:
                conditions.append(condition("Failed", False, "WaitingForPods", "", generation=gen))
        return _with(
            current,
            phase=phase,
            message=message,
            conditions=conditions,
            observedGeneration=gen,
            plan=plan.to_api(),
            backend=BACKEND_OF_KIND[kind],
            jobRef={
                "apiVersion": stored["apiVersion"],
                "kind": kind,
                "name": stored["metadata"]["name"],
                "namespace": ns,
                "uid": stored["metadata"].get("uid"),
            },
        )

    if defer is not None:
        defer(StatusChange(change, why))
        return None
    written = await write_status(op, ns, name, change, why=why, body=latest)
    if rejected:
        # Not an error of the operator: the condition says what to do; no retry would help.
        log.warning("%s: spec change rejected (%s)", source, rejected)
    return written


async def _cluster_runtime(op: Operator, body: dict[str, Any]) -> dict[str, Any]:
    """The ClusterTrainingRuntime a run with a priority class copies into its own TrainingRuntime;
    missing or unreadable: the run says so (Pending) and the operator retries."""
    name = op.options.trainjob_runtime
    why = "a TrainJob run with resources.priorityClassName runs on a copy of it"
    try:
        runtime = await op.kube.get(TRAINER_API_VERSION, CLUSTER_RUNTIME_KIND, None, name)
    except TransientError as exc:
        raise kopf.TemporaryError(f"reading ClusterTrainingRuntime {name}: {exc}", delay=RETRY_SOON) from exc
    except StatusError as exc:
        if status_code(exc) != 403:
            reading = f"reading ClusterTrainingRuntime {name}: {exc}"
            raise kopf.TemporaryError(reading, delay=RETRY_SOON) from exc
        message = (
            f"the operator may not read ClusterTrainingRuntime {name} ({why}): grant its ServiceAccount "
            "get on clustertrainingruntimes (the chart does, limited to its runtime's name, also for "
            "operator.watchNamespace), or remove resources.priorityClassName; retrying"
        )
        reason = "RuntimeForbidden"
    else:
        if runtime is not None:
            return runtime
        message = (
            f"ClusterTrainingRuntime {name} does not exist ({why}): install it (chart value "
            "trainJob.runtime.create, or manifests/trainer/), or point the operator setting "
            "TAC2SOL_TRAINJOB_RUNTIME at the cluster's runtime; retrying"
        )
        reason = "RuntimeMissing"
    await _condition_only(op, body, JOB_CREATED, reason, message, phase=Phase.PENDING.value)
    raise kopf.TemporaryError(message, delay=RETRY_LATER)


async def _existing_job(
    op: Operator, body: dict[str, Any], known: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """This run's job, if one exists (``known``: as the job watch saw it; else read by the
    status' jobRef kind, else the spec's backend)."""
    meta = body["metadata"]
    ref = (body.get("status") or {}).get("jobRef") or {}
    # None also when the kind is not installed: applying it then says so (JobKindMissing).
    job = known or await jobs.find_job(
        op.kube,
        meta["namespace"],
        child_names(meta["name"]).job,
        body.get("spec") or {},
        ref,
        op.settings.enabled_backends,
    )
    if job is None:
        return None
    kind = job["kind"]
    if not _owned_by(job, meta.get("uid")) or SPEC_ANNOTATION not in (
        job["metadata"].get("annotations") or {}
    ):
        message = (
            f"a {kind} named {job['metadata']['name']} already exists in {meta['namespace']} "
            "and does not belong to this run; delete it or rename the run"
        )
        await _condition_only(op, body, JOB_CREATED, "NameTaken", message, phase=Phase.PENDING.value)
        raise kopf.TemporaryError(message, delay=RETRY_LATER)
    return job


async def _condition_only(
    op: Operator, body: dict[str, Any], type_: str, reason: str, message: str, phase: str | None = None
) -> None:
    gen = body["metadata"].get("generation")
    await write_status(
        op,
        body["metadata"]["namespace"],
        body["metadata"]["name"],
        lambda run: _with(
            run,
            phase=phase if phase and lifecycle.phase_is_operator_owned(run.get("status") or {}) else None,
            message=message if phase else None,
            conditions=[condition(type_, False, reason, message, generation=gen)],
        ),
        why=(reason, message),
    )


async def _apply_all(
    op: Operator, body: dict[str, Any], children: list[dict[str, Any]], *, create_job: bool = False
) -> dict[str, Any] | None:
    """Apply the children in order; returns the last (the job), or None when the run's namespace
    is being deleted. Other errors become kopf retries. ``create_job``: create the job (the last
    child) instead of applying it; ``JobExists`` when one of its name exists."""
    stored: dict[str, Any] = {}
    for i, obj in enumerate(children):
        what = f"{obj['kind']} {obj['metadata']['name']}"
        try:
            if create_job and i == len(children) - 1:
                try:
                    stored = await op.kube.create(obj)
                except ApiError as exc:
                    if status_code(exc) == 409:
                        raise JobExists(what) from exc
                    raise
            else:
                stored = await op.kube.apply(obj)
        except TransientError as exc:
            raise kopf.TemporaryError(f"applying {what}: {exc}", delay=RETRY_SOON) from exc
        except StatusError as exc:
            if namespace_going_away(exc):
                return None
            code = status_code(exc)
            if code == 404 and obj["kind"] != "ConfigMap":
                message = missing_kind_message(obj["kind"])
                await _condition_only(
                    op, body, JOB_CREATED, "JobKindMissing", message, phase=Phase.PENDING.value
                )
                raise kopf.TemporaryError(message, delay=RETRY_LATER) from exc
            if code in (409, 429) or (code is not None and code >= 500):
                raise kopf.TemporaryError(f"applying {what}: {exc}", delay=RETRY_SOON) from exc
            message = f"could not create {what}: {exc}"
            await _condition_only(op, body, JOB_CREATED, "ApplyFailed", message)
            raise kopf.TemporaryError(message, delay=RETRY_LATER) from exc
    return stored


# --- the job's conditions -> the run ----------------------------------------------------------------


async def write_deferred(op: Operator, run: dict[str, Any], deferred: StatusChange) -> dict[str, Any] | None:
    meta = run["metadata"]
    return await write_status(
        op, meta["namespace"], meta["name"], deferred.change, why=deferred.why, body=run
    )


async def follow_job(
    op: Operator,
    job: dict[str, Any],
    event_type: str | None,
    known: dict[str, Any] | None = None,
    before: StatusChange | None = None,
) -> dict[str, Any] | None:
    """Mirror a job's conditions into its run; returns the run as stored when it wrote.

    ``known`` is the run as the operator last saw it: when the job's state would change nothing
    there, no API call is made (the training-operator rewrites a job's status often); else the
    write starts from it (a conflict reads the run again). ``before``: a status change of the
    reconcile not written yet; the two go in one write."""
    meta = job["metadata"]
    ns = meta["namespace"]
    run_name = (meta.get("labels") or {}).get(RUN_LABEL)
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    state = lifecycle.job_state(job) if event_type != "DELETED" else None
    if before is not None and (state is None or not run_name or owner is None or known is None):
        if known is not None:  # the deferred write first, on its own
            known = await write_deferred(op, known, before) or known
        before = None
    if not run_name or owner is None:
        return known
    if event_type == "DELETED":
        return await _job_deleted(op, ns, run_name, job, known)
    if state is None:
        return None
    if state.phase == Phase.FAILED.value:
        details = lifecycle.pod_failures(await job_pods(op, ns, pod_selector(job.get("kind"), meta["name"])))
        if details:
            state = lifecycle.JobState(
                state.phase, state.reason, f"{state.message.rstrip('.')}: {'; '.join(details)}",
                state.start_time, state.completion_time,
            )  # fmt: skip

    def change(run: dict[str, Any]) -> dict[str, Any] | None:
        if run["metadata"].get("uid") != owner.get("uid") or run["metadata"].get("deletionTimestamp"):
            return None  # a job of an older run of the same name, or the run is going away
        st = run.get("status") or {}
        gen = st.get("observedGeneration")
        conditions = lifecycle.job_conditions(state, gen)
        message = state.message
        on_pods = pods.pods_condition(st)
        if state.phase in (Phase.PLANNING.value, Phase.RUNNING.value) and pods.is_stuck(on_pods):
            message = st.get("message") or message  # why the pods do not run says more than the job
        if on_pods is not None and state.phase == Phase.SUSPENDED.value:
            conditions.append(
                condition(pods.PODS_READY, False, pods.JOB_SUSPENDED, "the job is suspended", generation=gen)
            )
        # A TrainJob's status.trainerStatus (Trainer's TrainJobStatus gate), when newer than /metrics.
        pushed = trainer_status_progress(job, st.get("progress")) if job.get("kind") == TRAINJOB else None
        return _with(
            run,
            phase=state.phase,
            message=message,
            conditions=conditions,
            startTime=state.start_time or st.get("startTime"),
            completionTime=state.completion_time or st.get("completionTime"),
            **({"progress": pushed} if pushed else {}),
        )

    update: StatusUpdate = change
    why = (state.reason, state.message)
    if before is not None:
        update = _then(before.change, change)
        if state.phase == Phase.PLANNING.value:  # the job waits for its pods: the Event says it was made
            why = before.why
    elif known is not None and state.phase != Phase.FAILED.value:
        unchanged = change(known)
        if unchanged is None or unchanged == (known.get("status") or {}):
            return None
    return await write_status(op, ns, run_name, update, why=why, body=known)


def _then(first: StatusUpdate, second: StatusUpdate) -> StatusUpdate:
    """One status change: ``first``, then ``second`` on its result."""

    def both(run: dict[str, Any]) -> dict[str, Any] | None:
        status = first(run)
        after = second(run if status is None else {**run, "status": status})
        return after if after is not None else status

    return both


async def _job_deleted(
    op: Operator, ns: str, run_name: str, job: dict[str, Any], known: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A job deleted under a run that has not finished fails the run (it is not re-created)."""
    uid = job["metadata"].get("uid")
    message = f"{job['kind']} {job['metadata']['name']} was deleted before it finished"

    def change(run: dict[str, Any]) -> dict[str, Any] | None:
        st = run.get("status") or {}
        if run["metadata"].get("deletionTimestamp") or st.get("phase") in lifecycle.TERMINAL:
            return None
        if (st.get("jobRef") or {}).get("uid") != uid:
            return None
        gen = st.get("observedGeneration")
        return _with(
            run,
            phase=Phase.FAILED.value,
            message=message,
            conditions=[condition("Failed", True, "JobDeleted", message, generation=gen),
                        condition("Running", False, "JobDeleted", "", generation=gen)],
        )  # fmt: skip

    return await write_status(op, ns, run_name, change, why=("JobDeleted", message), body=known)


# --- progress -------------------------------------------------------------------------------------


async def record_progress(op: Operator, body: dict[str, Any]) -> None:
    """Read the master pod's /metrics into ``status.progress`` (and ``status.evaluation``)."""
    ref = (body.get("status") or {}).get("jobRef") or {}
    if not ref.get("name"):
        return
    meta = body["metadata"]
    found = await read_progress(
        body,
        await job_pods(op, meta["namespace"], pod_selector(ref.get("kind"), ref["name"])),
        scrapes=op.scrapes,
        now=now(),
    )
    if found is None:
        return
    progress, evaluation = found
    patch: dict[str, Any] = {"progress": progress}
    if evaluation:
        patch["evaluation"] = evaluation
    await op.kube.patch_run_status(meta["namespace"], meta["name"], patch)


# --- pods ---------------------------------------------------------------------------------------


async def record_pods(op: Operator, body: dict[str, Any]) -> None:
    """The job's pods -> the run's ``PodsReady`` condition (polled while they may be stuck).

    Writes only when the condition changes. While the pods are stuck, ``status.message`` says
    why and each new reason posts one Warning Event; the phase stays (a node added or a Secret
    created lets the pods start by themselves: the condition turns True with a Normal Event). An
    OOMKilled pod the pod watch saw counts though it is gone, and the OOMKilled condition stays
    while the re-created pod runs again (``pods.keep_oom``)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    status = body.get("status") or {}
    ref = status.get("jobRef") or {}
    if not ref.get("name"):
        return
    selector = pod_selector(ref.get("kind"), ref["name"])
    listed = await job_pods(op, ns, selector)
    oom = op.pods.take_oom_killed(ns, selector) if op.pods is not None else None
    diagnosis = pods.diagnose(
        pods.with_oom_killed(listed, oom),
        pods.expected_pods(ref.get("kind"), (status.get("plan") or {}).get("nodes")),
    )
    if ref.get("kind") == TRAINJOB and diagnosis.reason == pods.NO_PODS:
        # No pods: Trainer v2.3 tells a JobSet it could not create only in Events on the TrainJob.
        events = await op.kube.list_events(ns, TRAINJOB, ref["name"], CREATION_FAILED)
        runtime = f"ClusterTrainingRuntime {op.options.trainjob_runtime}"
        diagnosis = creation_failure(ref, events, runtime) or diagnosis

    def change(run: dict[str, Any]) -> dict[str, Any] | None:
        st = run.get("status") or {}
        if run["metadata"].get("deletionTimestamp") or not lifecycle.pods_to_watch(run.get("spec") or {}, st):
            return None  # finished, suspended or going away since the pods were listed
        if (st.get("jobRef") or {}).get("uid") != ref.get("uid"):
            return None  # a newer job: its own pods will be looked at next time
        old = pods.pods_condition(st) or {}
        gen = st.get("observedGeneration")
        effective = pods.keep_oom(old, diagnosis, gen)
        # The message is the diagnosis while stuck, and follows it while it is still ours.
        ours = bool(old.get("message")) and st.get("message") == old.get("message")
        message = effective.message if effective.stuck or ours else None
        new = condition(
            pods.PODS_READY, effective.status, effective.reason, effective.message, generation=gen
        )
        return _with(run, message=message, conditions=[new])

    written = await op.kube.update_run_status(ns, name, change, body=body)
    if written is None:
        return
    before, stored = written
    st = before.get("status") or {}
    old = pods.pods_condition(st) or {}
    effective = pods.keep_oom(old, diagnosis, st.get("observedGeneration"))
    if effective.stuck and (old.get("status"), old.get("reason")) != ("False", effective.reason):
        op.kube.post_event(stored, type_="Warning", reason=effective.reason, message=effective.message)
        log.info("%s/%s: pods not running (%s): %s", ns, name, effective.reason, effective.message)
    elif effective.status == "True" and old.get("status") == "False":
        op.kube.post_event(stored, type_="Normal", reason=effective.reason, message=effective.message)
        log.info("%s/%s: %s", ns, name, effective.message)


def forget(body: dict[str, Any]) -> None:
    """The run is being deleted: its children go by garbage collection; drop it from the phase gauge."""
    meta = body["metadata"]
    metrics.forget_run(meta["namespace"], meta["name"])


def track_phase(body: dict[str, Any]) -> None:
    """Count an existing run's phase, and whether its pods are stuck (every event of the run)."""
    meta = body["metadata"]
    status = body.get("status") or {}
    phase = status.get("phase")
    if phase:
        metrics.set_run_phase(meta["namespace"], meta["name"], phase)
    stuck = pods.stuck_reason(status) if phase in lifecycle.PODS_PHASES else None
    metrics.set_run_stuck(meta["namespace"], meta["name"], stuck)


__all__ = [
    "Operator",
    "follow_job",
    "forget",
    "job_kind",
    "reconcile",
    "record_pods",
    "record_progress",
    "render_options",
]
