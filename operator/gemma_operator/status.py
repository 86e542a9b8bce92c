"""The pure status function: what the cluster reports about the children in, phase and conditions out."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from . import builders
from .crashlog import root_cause
from .download.errors import EXIT_ADAPTER_RANK
from .kinds import Manifest
from .spec import GemmaDeployment

CONDITION_TYPES = ("ModelReady", "Available", "Progressing", "Degraded")
MAX_MESSAGE = 600


@dataclass(frozen=True)
class Progress:
    bytes_done: int
    bytes_total: int

    @property
    def percent(self) -> int:
        if self.bytes_total <= 0:
            return 0
        return min(100, self.bytes_done * 100 // self.bytes_total)


@dataclass(frozen=True)
class Observed:
    """What one reconcile pass saw of the children of a GemmaDeployment."""

    pvc: Manifest | None = None
    job: Manifest | None = None
    job_pods: list[Manifest] = field(default_factory=list)
    deployment: Manifest | None = None
    server_pods: list[Manifest] = field(default_factory=list)
    progress: Progress | None = None
    # The download of this model revision already finished in an earlier pass (its Job may be gone).
    download_done_before: bool = False
    # A failure of the pass itself (e.g. the API server refused a child), shown as Degraded.
    apply_error: str | None = None
    # How long the cache claim has existed: a claim is Pending for a moment before it binds, and only a
    # claim that stays Pending is worth a warning.
    pvc_age_seconds: float = 0.0
    # The log of each crashed server container (pod name -> the tail of its previous run's log): the
    # termination message alone often holds only vLLM's "see root cause above" (crashlog.py).
    server_logs: dict[str, str] = field(default_factory=dict)
    # The time of the pass (RFC3339, UTC), for how long a pod has waited for its volumes; "" = unknown.
    now: str = ""
    # The GemmaDeployments that use the shared model cache of this one (itself included); () = not shared.
    cache_users: tuple[str, ...] = ()
    # The Job that downloads spec.adapters (builders.build_adapter_job) and its pods; whether it finished in
    # an earlier pass (the same Job name in status.adapters).
    adapter_job: Manifest | None = None
    adapter_job_pods: list[Manifest] = field(default_factory=list)
    adapters_done_before: bool = False


PVC_PENDING_GRACE_SECONDS = 5.0
# A scheduled pod whose containers are still ContainerCreating with no pod sandbox (the kubelet makes the
# sandbox only after every volume is attached and mounted) for this long is stuck on a volume: a
# ReadWriteOnce cache attached to another node (FailedAttachVolume Multi-Attach) never comes. Attaching a
# cloud disk normally takes well under a minute.
VOLUME_WAIT_GRACE_SECONDS = 90.0
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Finding:
    """One condition's verdict, before timestamps."""

    status: bool
    reason: str
    message: str


# ---------------------------------------------------------------- model / download


def job_state(job: Manifest | None) -> str:
    if job is None:
        return "Pending"
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    status = job.get("status") or {}
    return "Running" if status.get("active") or status.get("failed") else "Pending"


def _terminated_messages(pod: Manifest) -> list[str]:
    messages = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            term = state.get("terminated") or {}
            if term.get("exitCode") not in (None, 0) and term.get("message"):
                messages.append(_last_lines(term["message"]))
    return messages


def _last_lines(text: str, lines: int = 3) -> str:
    tail = " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())
    return tail[-MAX_MESSAGE:]


def download_failure_message(gd: GemmaDeployment, job: Manifest | None, pods: list[Manifest]) -> str:
    for pod in sorted(pods, key=_creation, reverse=True):
        messages = _terminated_messages(pod)
        if messages:
            return messages[0]
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            detail = cond.get("message") or cond.get("reason") or "the Job failed"
            return f"download of {gd.spec.model.id} from {gd.spec.model.source} failed: {detail}"
    return f"download of {gd.spec.model.id} from {gd.spec.model.source} failed"


def _creation(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("creationTimestamp") or "")


def model_ready(gd: GemmaDeployment, obs: Observed) -> bool:
    """The model and its adapters (spec.adapters) are on the volume: the servers can start."""
    return model_downloaded(gd, obs) and adapters_ready(gd, obs)


def model_downloaded(gd: GemmaDeployment, obs: Observed) -> bool:
    return not gd.needs_download or obs.download_done_before or job_state(obs.job) == "Succeeded"


def adapters_ready(gd: GemmaDeployment, obs: Observed) -> bool:
    return not gd.spec.adapters or obs.adapters_done_before or job_state(obs.adapter_job) == "Succeeded"


def _adapter_failure(gd: GemmaDeployment, obs: Observed) -> tuple[str, str]:
    """(reason, message) of a failed adapters Job: AdapterRankTooLarge when the downloader found an adapter
    the servers cannot load (its exit code), else AdapterDownloadFailed; the message is the downloader's,
    which names the spec.adapters[i] entry and the fix."""
    for pod in sorted(obs.adapter_job_pods, key=_creation, reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") not in (None, 0):
                reason = "AdapterRankTooLarge" if term.get("exitCode") == EXIT_ADAPTER_RANK else "AdapterDownloadFailed"
                message = _last_lines(term.get("message") or "") or f"exit code {term.get('exitCode')}"
                return reason, message
    names = ", ".join(a.name for a in gd.spec.adapters)
    return "AdapterDownloadFailed", download_failure_message(gd, obs.adapter_job, []).replace(
        f"download of {gd.spec.model.id}", f"download of the adapters {names}")


def adapters_finding(gd: GemmaDeployment, obs: Observed) -> Finding | None:
    """ModelReady while the model is on the volume but spec.adapters are not (yet): None when they are."""
    if adapters_ready(gd, obs):
        return None
    names = ", ".join(f"{a.name} ({a.id})" for a in gd.spec.adapters)
    if job_state(obs.adapter_job) == "Failed":
        return Finding(False, *_adapter_failure(gd, obs))
    blocked = pod_problems(obs.adapter_job_pods, gd=gd, now=obs.now)
    if blocked:
        return Finding(False, "DownloadBlocked", f"the download of the adapters {names} cannot run: {_problems_text(blocked)[1]}")
    return Finding(False, "AdaptersDownloading", f"the model is on the volume; downloading the adapters {names}")


def adapters_block(gd: GemmaDeployment, obs: Observed) -> Manifest | None:
    """status.adapters: the adapters' download state and Job, and the names clients can pass as model."""
    if not gd.spec.adapters:
        return None
    state = "Succeeded" if obs.adapters_done_before else job_state(obs.adapter_job)
    block: Manifest = {"state": state, "names": [a.name for a in gd.spec.adapters]}
    if obs.adapter_job is not None:
        block["jobName"] = obs.adapter_job["metadata"]["name"]
    return block


def pvc_bound(pvc: Manifest | None) -> bool:
    return pvc is not None and (pvc.get("status") or {}).get("phase") == "Bound"


def pvc_pending_message(gd: GemmaDeployment, pvc: Manifest | None, age_seconds: float) -> str | None:
    if gd.spec.cache.existing_claim or pvc is None or pvc_bound(pvc) or age_seconds < PVC_PENDING_GRACE_SECONDS:
        return None
    phase = (pvc.get("status") or {}).get("phase")
    cls = (pvc.get("spec") or {}).get("storageClassName") or "the default class"
    return (
        f"cache volume {gd.cache_claim_name} is {phase or 'Pending'}: waiting for a PersistentVolume of storage class "
        f"{cls}; check that the class exists and has a provisioner (kubectl describe pvc {gd.cache_claim_name})"
    )


def model_finding(gd: GemmaDeployment, obs: Observed) -> Finding:
    if not gd.needs_download:
        adapters = adapters_finding(gd, obs)
        if adapters is not None:
            return adapters
        return Finding(True, "ModelOnVolume", f"serving {gd.model_dir} from volume {gd.cache_claim_name}")
    state = "Succeeded" if obs.download_done_before else job_state(obs.job)
    model = f"{gd.spec.model.id}@{gd.spec.model.effective_revision} from {gd.spec.model.source}"
    if state != "Failed" and gd.spec.adapters and job_state(obs.adapter_job) == "Failed":
        # The adapters run alongside the model's download: a bad adapter is told now, not once the model is in.
        return Finding(False, *_adapter_failure(gd, obs))
    if state == "Succeeded":
        adapters = adapters_finding(gd, obs)
        if adapters is not None:
            return adapters
        with_adapters = f"; adapters {', '.join(a.name for a in gd.spec.adapters)} too" if gd.spec.adapters else ""
        return Finding(True, "Downloaded",
                       f"{model} is on volume {gd.cache_claim_name}{_shared_text(gd, obs)}{with_adapters}")
    if state == "Failed":
        return Finding(False, "DownloadFailed", download_failure_message(gd, obs.job, obs.job_pods))
    pending = pvc_pending_message(gd, obs.pvc, obs.pvc_age_seconds)
    if pending:
        return Finding(False, "CacheVolumePending", pending)
    blocked = pod_problems(obs.job_pods, gd=gd, now=obs.now)
    if blocked:
        _, text = _problems_text(blocked)
        return Finding(False, "DownloadBlocked", f"the download of {model} cannot run: {text}")
    retrying = _retry_text(gd, obs)
    if state == "Running" and retrying:
        return Finding(False, "DownloadRetrying", f"downloading {model}{_progress_text(obs.progress)}; {retrying}")
    if state == "Running":
        return Finding(False, "Downloading", f"downloading {model}{_progress_text(obs.progress)}")
    return Finding(False, "DownloadPending", f"waiting for the download Job of {model} to start")


def _shared_text(gd: GemmaDeployment, obs: Observed) -> str:
    """', shared with GemmaDeployments a, b' when other GemmaDeployments use the same cache, else ''."""
    others = [name for name in obs.cache_users if name != gd.name]
    if not others:
        return ""
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    return f", shared with GemmaDeployment{'s' if len(others) > 1 else ''} {shown}"


def cache_block(gd: GemmaDeployment, obs: Observed) -> Manifest:
    """status.cache: the claim the model is on and, for a shared cache, how many GemmaDeployments use it."""
    block: Manifest = {"claimName": gd.cache_claim_name, "shared": bool(gd.shared_cache)}
    if gd.shared_cache:
        block["users"] = max(1, len(obs.cache_users))
    return block


def _retry_text(gd: GemmaDeployment, obs: Observed) -> str:
    """'attempt 3 of 5, the last one failed: ...' while the Job retries after failed pods, else ''."""
    failed = int(((obs.job or {}).get("status") or {}).get("failed") or 0)
    if failed == 0:
        return ""
    attempts = gd.spec.download.backoff_limit + 1
    last = next((m[0] for p in sorted(obs.job_pods, key=_creation, reverse=True) if (m := _terminated_messages(p))),
                "")
    return f"attempt {failed + 1} of {attempts}" + (f", the last one failed: {last}" if last else "")


def _progress_text(progress: Progress | None) -> str:
    if progress is None or progress.bytes_total <= 0:
        return ""
    return f": {progress.percent}% ({progress.bytes_done}/{progress.bytes_total} bytes)"


def download_block(gd: GemmaDeployment, obs: Observed) -> Manifest:
    if not gd.needs_download:
        return {"state": "NotRequired"}
    state = "Succeeded" if obs.download_done_before else job_state(obs.job)
    block: Manifest = {"state": state}
    if obs.job is not None:
        block["jobName"] = obs.job["metadata"]["name"]
    progress = obs.progress
    if state == "Succeeded" and progress is None:
        return block | {"percent": 100}
    if progress is not None:
        percent = 100 if state == "Succeeded" else progress.percent
        block |= {"bytesDone": progress.bytes_done, "bytesTotal": progress.bytes_total, "percent": percent}
    return block


# ---------------------------------------------------------------- servers


def pod_problems(pods: list[Manifest], logs: dict[str, str] | None = None, gd: GemmaDeployment | None = None,
                 now: str = "") -> dict[str, list[str]]:
    """Why pods are not ready, grouped by reason: {reason: [messages]}; `logs` are crashed containers' logs,
    `gd` words the cache hints, `now` (RFC3339) times a wait for volumes."""
    problems: dict[str, list[str]] = {}
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        reason, message = _pod_problem(pod, (logs or {}).get((pod.get("metadata") or {}).get("name", ""), ""), gd, now)
        if reason:
            problems.setdefault(reason, []).append(message)
    return problems


def crash_detail(termination: Manifest, log: str) -> str:
    """What a crashed container said: the root cause in its log or its termination message, else the end of
    the termination message, else the exit code."""
    message = termination.get("message") or ""
    cause = root_cause(log) or root_cause(message)
    return cause or _last_lines(message) or f"exit code {termination.get('exitCode', '?')}"


def _parse_time(text: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text or "", TIME_FORMAT)
    except ValueError:
        return None


def volume_wait_seconds(pod: Manifest, now: str) -> float | None:
    """How long a scheduled pod has waited for its volumes, or None when it is not waiting for them: every
    container ContainerCreating and no pod sandbox yet (PodReadyToStartContainers False). An image pull also
    shows ContainerCreating but comes after the sandbox; a kubelet that does not report the condition (older
    than 1.29) tells nothing here, so a long pull of the vLLM image is never taken for a stuck volume."""
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") not in (None, "Pending"):
        return None
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conds.get("PodScheduled") or {}
    if scheduled.get("status") != "True" or (conds.get("PodReadyToStartContainers") or {}).get("status") != "False":
        return None
    statuses = status.get("containerStatuses") or []
    if not statuses or any(((cs.get("state") or {}).get("waiting") or {}).get("reason") != "ContainerCreating"
                           for cs in statuses):
        return None
    since = _parse_time(scheduled.get("lastTransitionTime")) or _parse_time(_creation(pod))
    at = _parse_time(now)
    if since is None or at is None:
        return None
    return max(0.0, (at - since).total_seconds())


def next_volume_check(pods: list[Manifest], now: str) -> float | None:
    """Seconds until the first pod now waiting for its volumes has waited VOLUME_WAIT_GRACE_SECONDS (a pass
    then tells it: no watch event comes from a pod that only waits), or None."""
    waits = [w for p in pods if (w := volume_wait_seconds(p, now)) is not None and w < VOLUME_WAIT_GRACE_SECONDS]
    return VOLUME_WAIT_GRACE_SECONDS - max(waits) + 1.0 if waits else None


def _cache_fix(gd: GemmaDeployment | None) -> str:
    """How to make the cache mountable by every replica, for the message of a pod stuck on it."""
    if gd is None:
        return "check the pod's events (kubectl describe pod) for FailedAttachVolume or FailedMount"
    claim = gd.cache_claim_name
    modes = set(gd.spec.cache.access_modes)
    if gd.spec.cache.existing_claim:
        return (f"if claim {claim} is ReadWriteOnce it is attached to another node (Multi-Attach): use a ReadWriteMany "
                f"claim, or keep the replicas on one node (spec.nodeSelector or spec.affinity podAffinity)")
    if modes & {"ReadWriteMany", "ReadOnlyMany"}:
        return (f"cache claim {claim} is {'/'.join(sorted(modes))}: check the pod's events (kubectl describe pod) "
                f"for FailedAttachVolume or FailedMount")
    shared = (" and shared with other GemmaDeployments of this model, whose servers must then run on that node too"
              if gd.shared_cache else "")
    return (f"cache claim {claim} is ReadWriteOnce{shared} and attached to another node (Multi-Attach): set "
            f"spec.cache.accessModes to [ReadWriteMany] where the storage class supports it, or keep the replicas "
            f"on one node (the operator's default podAffinity does that unless spec.affinity sets its own)")


VOLUME_SCHEDULING = ("volume node affinity conflict", "ReadWriteOncePod")


def _pod_problem(pod: Manifest, log: str = "", gd: GemmaDeployment | None = None, now: str = "") -> tuple[str, str]:
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name", "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            message = cond.get("message") or "no node fits the pod"
            if any(words in message for words in VOLUME_SCHEDULING):
                return "CacheVolumeUnavailable", f"pod {name} fits no node that can mount its volumes: {message}; {_cache_fix(gd)}"
            if "pod affinity" in message and gd is not None and builders.keeps_servers_on_one_node(gd) and gd.shared_cache:
                message += (f"; the servers of every GemmaDeployment that shares the ReadWriteOnce cache {gd.cache_claim_name} "
                            f"run on the one node that has it, and that node has no room for this one: use "
                            f"spec.cache.accessModes [ReadWriteMany] to let them spread over nodes (a new shared cache)")
            elif "pod affinity" in message and gd is not None and builders.keeps_servers_on_one_node(gd):
                message += ("; the servers share one node because the cache is ReadWriteOnce: with "
                            "spec.cache.accessModes [ReadWriteMany] they may spread over nodes")
            return "PodsUnschedulable", message
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return "ImagePullFailed", f"cannot pull image {cs.get('image', '')}: {waiting.get('message') or waiting['reason']}"
        if last.get("reason") == "OOMKilled":
            return "OOMKilled", "the server was killed for using more memory than its limit (OOMKilled); raise spec.resources.limits.memory"
        if waiting.get("reason") == "CrashLoopBackOff":
            return "CrashLoopBackOff", f"the server exits: {crash_detail(last, log)}"
        if last and cs.get("restartCount", 0) > 0 and not cs.get("ready"):
            # Restarted once or more but not (yet) backing off: a crash, a kill or a failed liveness probe.
            return "ServerRestarting", (f"the server restarted (restart {cs['restartCount']}) after it exited: "
                                        f"{crash_detail(last, log)}; waiting for it to be ready again")
        if waiting.get("reason") in ("CreateContainerConfigError", "CreateContainerError"):
            return "ContainerConfigError", waiting.get("message") or waiting["reason"]
    waited = volume_wait_seconds(pod, now) if now else None
    if waited is not None and waited >= VOLUME_WAIT_GRACE_SECONDS:
        # No running count of seconds in the message: it would change the status on every pass.
        node = (pod.get("spec") or {}).get("nodeName") or "its node"
        since = next((c.get("lastTransitionTime") for c in status.get("conditions") or []
                      if c.get("type") == "PodScheduled"), None) or _creation(pod)
        return "CacheVolumeUnavailable", (f"pod {name} on {node} has waited for its volumes to mount since {since} "
                                          f"(ContainerCreating for more than {int(VOLUME_WAIT_GRACE_SECONDS)}s): "
                                          f"{_cache_fix(gd)}")
    return "", ""


def _problems_text(problems: dict[str, list[str]]) -> tuple[str, str]:
    """The most important reason and a message that counts the pods behind each."""
    order = ["CrashLoopBackOff", "OOMKilled", "ImagePullFailed", "ContainerConfigError", "CacheVolumeUnavailable",
             "ServerRestarting", "PodsUnschedulable"]
    reasons = sorted(problems, key=lambda r: order.index(r) if r in order else len(order))
    labels = {
        "PodsUnschedulable": "unschedulable",
        "CrashLoopBackOff": "crash-looping",
        "OOMKilled": "out of memory",
        "ImagePullFailed": "failing to pull the image",
        "ContainerConfigError": "with a bad container configuration",
        "ServerRestarting": "restarting",
        "CacheVolumeUnavailable": "waiting for the cache volume",
    }
    parts = []
    for reason in reasons:
        msgs = problems[reason]
        parts.append(f"{len(msgs)} pod{'s' if len(msgs) != 1 else ''} {labels.get(reason, reason)}: {msgs[0]}")
    return reasons[0], "; ".join(parts)


def rollout_done(deployment: Manifest, desired: int) -> bool:
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation", 0)
    return bool(
        status.get("observedGeneration", 0) >= generation
        and status.get("updatedReplicas", 0) >= desired
        and status.get("replicas", 0) == desired
        and status.get("readyReplicas", 0) >= desired
    )


# ---------------------------------------------------------------- the whole status


# ModelReady reasons that need a change of the spec: phase Failed.
FAILED_REASONS = ("DownloadFailed", "AdapterDownloadFailed", "AdapterRankTooLarge")


@dataclass(frozen=True)
class Verdict:
    phase: str
    findings: dict[str, Finding]


def verdict(gd: GemmaDeployment, obs: Observed) -> Verdict:
    model = model_finding(gd, obs)
    if not model.status:
        failed = model.reason in FAILED_REASONS
        stuck = model.reason in ("CacheVolumePending", "DownloadBlocked")
        phase = "Failed" if failed else ("Pending" if stuck else "Downloading")
        waiting = Finding(False, "WaitingForModel", "servers start once the model is on the cache volume")
        degraded = Finding(True, model.reason, model.message) if failed or stuck else Finding(False, "AsExpected", "")
        if obs.apply_error:
            degraded = Finding(True, "ApplyFailed", obs.apply_error)
        progressing = Finding(not failed, "Downloading" if not failed else model.reason, model.message)
        return Verdict(phase, {"ModelReady": model, "Available": waiting, "Progressing": progressing, "Degraded": degraded})
    return _servers_verdict(gd, obs, model)


def _servers_verdict(gd: GemmaDeployment, obs: Observed, model: Finding) -> Verdict:
    desired = gd.spec.replicas
    dep_status = (obs.deployment or {}).get("status") or {}
    ready = int(dep_status.get("readyReplicas") or 0)
    problems = pod_problems(obs.server_pods, obs.server_logs, gd=gd, now=obs.now)
    done = obs.deployment is not None and rollout_done(obs.deployment, desired)
    count = f"{ready}/{desired} ready"

    if desired == 0:
        available = Finding(False, "ScaledToZero", "spec.replicas is 0: no server runs")
    elif ready > 0:
        available = Finding(True, "MinimumReplicasAvailable", f"{count}; serving at {gd.endpoint}")
    else:
        available = Finding(False, "NoReplicasReady", f"{count}")

    if problems:
        reason, text = _problems_text(problems)
        degraded = Finding(True, reason, f"{count}: {text}")
    elif obs.apply_error:
        degraded = Finding(True, "ApplyFailed", obs.apply_error)
    else:
        degraded = Finding(False, "AsExpected", count)

    if done:
        progressing = Finding(False, "RolloutComplete", f"{count}; rollout complete")
    elif obs.deployment is None:
        progressing = Finding(True, "CreatingServers", "creating the vLLM Deployment")
    else:
        progressing = Finding(True, "RollingOut", f"{count}; servers are starting or being replaced")

    if degraded.status:
        phase = "Degraded"
    elif done or (desired == 0 and obs.deployment is not None):
        phase = "Ready"
    else:
        phase = "Starting"
    findings = {"ModelReady": model, "Available": available, "Progressing": progressing, "Degraded": degraded}
    return Verdict(phase, findings)


def conditions(findings: dict[str, Finding], previous: list[Manifest], generation: int, now: str) -> list[Manifest]:
    """Kubernetes-style conditions; lastTransitionTime moves only when a condition's status flips."""
    before = {c.get("type"): c for c in previous}
    result = []
    for ctype in CONDITION_TYPES:
        f = findings[ctype]
        status = "True" if f.status else "False"
        old = before.get(ctype) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        result.append({
            "type": ctype,
            "status": status,
            "reason": f.reason,
            "message": f.message[:MAX_MESSAGE],
            "observedGeneration": generation,
            "lastTransitionTime": since or now,
        })
    return result


def compute_status(gd: GemmaDeployment, obs: Observed, previous: Manifest, now: str, gateway_url: str = "") -> Manifest:
    """The whole status of a GemmaDeployment from what its children report; gateway_url: the gateway's
    base URL, when the chart installs one."""
    v = verdict(gd, obs)
    dep_status = (obs.deployment or {}).get("status") or {}
    ready = int(dep_status.get("readyReplicas") or 0)
    download = download_block(gd, obs)
    status: Manifest = {
        "phase": v.phase,
        "observedGeneration": gd.generation,
        "replicas": int(dep_status.get("replicas") or 0),
        "readyReplicas": ready,
        "ready": f"{ready}/{gd.spec.replicas}",
        "selector": f"app.kubernetes.io/instance={gd.name},app.kubernetes.io/component=server",
        "endpoint": gd.endpoint,
        "servedModelName": gd.served_model_name,
        "download": download,
        "cache": cache_block(gd, obs),
        **({"adapters": adapters} if (adapters := adapters_block(gd, obs)) else {}),
        **({"gateway": {"url": gateway_url, "model": gd.served_model_name}} if gateway_url else {}),
        "progress": f"{download['percent']}%" if "percent" in download else "-",
        "conditions": conditions(v.findings, list(previous.get("conditions") or []), gd.generation, now),
    }
    return status


def invalid_spec_status(gd_generation: int, message: str, previous: Manifest, now: str) -> Manifest:
    """The status of a resource the operator cannot parse: Failed, with the reason, and nothing else."""
    finding = Finding(False, "InvalidSpec", message)
    findings = {
        "ModelReady": finding,
        "Available": Finding(False, "InvalidSpec", message),
        "Progressing": Finding(False, "InvalidSpec", message),
        "Degraded": Finding(True, "InvalidSpec", message),
    }
    return dict(previous) | {
        "phase": "Failed",
        "observedGeneration": gd_generation,
        "conditions": conditions(findings, list(previous.get("conditions") or []), gd_generation, now),
    }
