"""One reconcile pass of a GemmaDeployment: desired children from the builders, applied only where the
cluster differs; status from the pure status function, written only when it changed."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
from typing import Any

from pydantic import ValidationError

from . import builders, status, transitions
from .download.progress import last_event
from .events import Recorder, now
from .kinds import Key, Manifest
from .kube import ApiError, KubeClient
from .settings import Settings
from .shared_cache import ForeignObjectError, SharedCaches, is_shared_cache_of
from .spec import KIND, GemmaDeployment
from .store import Store

log = logging.getLogger(__name__)


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field the operator sets already has that value (the server adds defaults)."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(actual, list) and len(desired) == len(actual) and all(
            is_subset(d, a) for d, a in zip(desired, actual)
        )
    return bool(desired == actual)


SPEC_HASH = "gemma.ai/spec-hash"


def with_spec_hash(desired: Manifest) -> Manifest:
    """The desired child with a hash of itself: a field dropped from the spec changes the hash, which the
    subset check alone would not notice (an absent field is a subset of anything)."""
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    meta = desired["metadata"]
    return desired | {"metadata": meta | {"annotations": dict(meta.get("annotations") or {}) | {SPEC_HASH: digest}}}


def is_ours(obj: Manifest, gd: GemmaDeployment) -> bool:
    meta = obj.get("metadata") or {}
    if any(ref.get("uid") == gd.uid for ref in meta.get("ownerReferences") or []):
        return True
    obj_labels = meta.get("labels") or {}
    if is_shared_cache_of(obj, gd):
        return True
    # A cache kept from an earlier GemmaDeployment of the same name (retainOnDelete) carries our labels.
    return bool(
        obj_labels.get(builders.MANAGED_BY_LABEL) == builders.MANAGED_BY
        and obj_labels.get(builders.INSTANCE_LABEL) == gd.name
        and not meta.get("ownerReferences")
    )


def age_seconds(obj: Manifest | None, now_text: str) -> float:
    created = ((obj or {}).get("metadata") or {}).get("creationTimestamp")
    if not created:
        return 0.0
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.datetime.strptime(now_text, fmt) - datetime.datetime.strptime(created, fmt)).total_seconds()


def parse_progress(log_tail: str) -> status.Progress | None:
    """The downloader's newest progress, from the tail of its log (its stdout is JSON event lines)."""
    event = last_event(log_tail)
    if event is None or "bytesTotal" not in event:
        return None
    return status.Progress(int(event.get("bytesDone") or 0), int(event["bytesTotal"]))


def crashed_server(pod: Manifest) -> tuple[str, int] | None:
    """(pod uid, restart count) when the server container's last run ended in an error, else None."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if cs.get("name") == builders.SERVER_CONTAINER and last.get("exitCode") not in (None, 0):
            return (str(pod["metadata"].get("uid") or ""), int(cs.get("restartCount") or 0))
    return None


class Reconciler:
    def __init__(self, client: KubeClient, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.recorder = Recorder(client)
        self._progress: dict[Key, status.Progress] = {}
        # Per GemmaDeployment: pod name -> ((uid, restart count) of the crash, that run's log tail).
        self._crash_logs: dict[Key, dict[str, tuple[tuple[str, int], str]]] = {}
        # The model caches shared by the GemmaDeployments of one model revision (docs/model-cache.md); the
        # runtime routes the events of a cache to its users by cache_users.
        self.caches = SharedCaches(client, store, settings)
        self.cache_users = self.caches.users

    async def reconcile(self, key: Key) -> float | None:
        """One pass; returns seconds after which to look again (a running download), or None."""
        body = self.store.get(KIND, *key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self._progress.pop(key, None)
            self._crash_logs.pop(key, None)
            self.cache_users.drop(key)
            return None  # the children go with their owner through garbage collection
        previous = dict(body.get("status") or {})
        try:
            gd = GemmaDeployment.from_body(body)
        except ValidationError as err:
            message = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            new = status.invalid_spec_status(int(body["metadata"].get("generation") or 0), message, previous, now())
            await self._write_status(body, previous, new)
            return None
        gd = self.caches.with_cache(gd)
        observed = await self._converge(gd, previous)
        new = status.compute_status(gd, observed, previous, now(), self.settings.gateway_url)
        await self._write_status(body, previous, new)
        return self._look_again_in(gd, observed)

    def _look_again_in(self, gd: GemmaDeployment, observed: status.Observed) -> float | None:
        """Progress, a claim stuck Pending and a pod waiting for its volumes show in no watch event: look
        again while they matter."""
        volume_check = status.next_volume_check(observed.server_pods + observed.job_pods, observed.now)
        other = self._look_again_for_the_model(gd, observed)
        return min((t for t in (volume_check, other) if t is not None), default=None)

    def _look_again_for_the_model(self, gd: GemmaDeployment, observed: status.Observed) -> float | None:
        if status.model_ready(gd, observed):
            return None
        if observed.pvc is not None and not status.pvc_bound(observed.pvc):
            return status.PVC_PENDING_GRACE_SECONDS
        if status.job_state(observed.job) in ("Running", "Pending"):
            return self.settings.progress_interval_seconds
        return None

    async def _converge(self, gd: GemmaDeployment, previous: Manifest) -> status.Observed:
        error = None
        try:
            await self._apply_children(gd, previous)
        except ApiError as err:
            error = f"the API server refused a child: {err.message}"
        except ForeignObjectError as err:
            error = str(err)
        return await self._observe(gd, previous, error)

    async def _apply_children(self, gd: GemmaDeployment, previous: Manifest) -> None:
        if gd.shared_cache:
            await self.caches.ensure(gd, self._ensure)
        pvc = None if gd.shared_cache else builders.build_cache_pvc(gd)
        if pvc is not None:
            await self._ensure(gd, pvc)
        job = None if gd.shared_cache else builders.build_download_job(gd, self.settings)
        if job is not None:
            # A Job's template is immutable: it is created once; a new model gets a Job of a new name.
            await self._ensure(gd, job, create_only=True)
            await self._delete_stale_jobs(gd, job["metadata"]["name"])
        adapters = builders.build_adapter_job(gd, self.settings)
        # Alongside the model's download (other directories, other locks); other adapters get a new Job.
        if adapters is not None:
            await self._ensure(gd, adapters, create_only=True)
        await self._delete_stale_jobs(gd, adapters["metadata"]["name"] if adapters else "", "adapters")
        auth = builders.build_auth_configmap(gd)
        if auth is not None:
            # Before the Deployment: its pods mount it (without it they wait in ContainerCreating). Like the
            # Service it is kept while the GemmaDeployment lives; it goes with it (garbage collection).
            await self._ensure(gd, auth)
        wanted = [builders.build_service(gd)]
        budget = builders.build_disruption_budget(gd)
        if budget is not None:
            wanted.append(budget)
        else:
            await self._delete_owned("PodDisruptionBudget", gd, "replicas <= 1")
        pool = builders.build_inference_pool(gd, self.settings)
        if pool is not None:
            wanted.append(pool)
        policy = builders.build_server_network_policy(gd, self.settings)
        if policy is not None:
            wanted.append(policy)
        else:
            await self._delete_owned("NetworkPolicy", gd, "no gateway")
        observed = await self._observe(gd, previous, None, read_progress=False)
        mounted = None
        if status.model_ready(gd, observed):
            mounted = self.caches.mounted_claim(gd)
            wanted.insert(0, builders.build_server_deployment(gd, self.settings))
        # Together, not one after the other: a Service create is the slowest write of a burst (the API
        # server allocates its IP), and the Deployment, which takes the longest to become ready, should not
        # wait behind it (docs/benchmarks.md).
        results = await asyncio.gather(*(self._ensure(gd, child) for child in wanted), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if mounted and mounted != gd.cache_claim_name:
            # The servers have moved to the new model's cache: leave the one they mounted until now.
            await self.caches.release(gd, mounted)
        before = (previous.get("cache") or {}).get("claimName")
        if before and before != gd.cache_claim_name and before != self.caches.mounted_claim(gd):
            # A cache of an earlier model that no server mounts (its download failed, or never finished).
            await self.caches.release(gd, before)

    async def _ensure(self, gd: GemmaDeployment, desired: Manifest, create_only: bool = False) -> None:
        desired = with_spec_hash(desired)
        kind, meta = desired["kind"], desired["metadata"]
        actual = self.store.get(kind, meta["namespace"], meta["name"])
        if actual is not None and (create_only or is_subset(desired, actual)):
            return
        if actual is None:
            # Not in our watch cache: either new, or a namesake someone else made. Look once.
            existing = await self.client.get(kind, meta["namespace"], meta["name"])
            if existing is not None and not is_ours(existing, gd):
                raise ForeignObjectError(
                    f"a {kind} named {meta['name']} already exists and was not created by gemma-operator; "
                    f"rename the GemmaDeployment or remove that {kind}"
                )
            if existing is not None and (create_only or is_subset(desired, existing)):
                # Already as wanted (e.g. a kind the operator does not watch, after a restart): no write.
                self.store.upsert(kind, existing)
                return
        log.info("applying %s %s/%s", kind, meta["namespace"], meta["name"])
        self.store.record_write(kind, await self.client.apply(desired))

    async def _delete_owned(self, kind: str, gd: GemmaDeployment, why: str) -> None:
        """A child that exists only under a condition (the budget with replicas > 1, the NetworkPolicy with
        a gateway), deleted when the condition ends. Only when this GemmaDeployment made it (its owner
        reference), not on labels alone: a budget or policy someone else made under that name protects
        their pods, and is none of ours to remove."""
        child = self.store.get(kind, gd.namespace, gd.name)
        if child is None or child["metadata"].get("deletionTimestamp"):
            return
        if any(ref.get("uid") == gd.uid for ref in child["metadata"].get("ownerReferences") or []):
            log.info("deleting %s %s/%s (%s)", kind, gd.namespace, gd.name, why)
            await self.client.delete(kind, gd.namespace, gd.name, uid=child["metadata"].get("uid"))

    async def _delete_stale_jobs(self, gd: GemmaDeployment, current: str, component: str = "download") -> None:
        for job in self.store.children("Job", gd.namespace, gd.name, component):
            meta = job["metadata"]
            if meta["name"] != current and is_ours(job, gd) and not meta.get("deletionTimestamp"):
                log.info("deleting %s Job %s/%s of an earlier spec", component, gd.namespace, meta["name"])
                await self.client.delete("Job", gd.namespace, meta["name"], uid=meta.get("uid"))

    async def _observe(
        self, gd: GemmaDeployment, previous: Manifest, error: str | None, read_progress: bool = True
    ) -> status.Observed:
        ns = gd.namespace
        job_name = builders.download_job_name(gd, self.settings) if gd.needs_download else ""
        job = self.store.get("Job", ns, job_name) if job_name else None
        job_pods = [
            p for p in self.store.children("Pod", ns, builders.download_instance(gd), "download")
            if (p["metadata"].get("labels") or {}).get("job-name") == job_name
        ]
        before = previous.get("download") or {}
        done_before = before.get("state") == "Succeeded" and before.get("jobName") == job_name
        progress = None
        if read_progress and status.job_state(job) == "Running":
            progress = await self._read_progress((ns, gd.name), job_pods)
        adapter_job_name = builders.adapter_job_name(gd, self.settings) if gd.spec.adapters else ""
        adapter_job = self.store.get("Job", ns, adapter_job_name) if adapter_job_name else None
        adapter_pods = [
            p for p in self.store.children("Pod", ns, gd.name, "adapters")
            if adapter_job_name and (p["metadata"].get("labels") or {}).get("job-name") == adapter_job_name
        ]
        adapters_before = previous.get("adapters") or {}
        adapters_done = adapters_before.get("state") == "Succeeded" and adapters_before.get("jobName") == adapter_job_name
        pvc = self.store.get("PersistentVolumeClaim", ns, gd.cache_claim_name)
        server_pods = self.store.children("Pod", ns, gd.name, "server")
        server_logs = await self._read_crash_logs((ns, gd.name), server_pods) if read_progress else {}
        return status.Observed(
            pvc=pvc,
            job=job,
            job_pods=job_pods,
            deployment=self.store.get("Deployment", ns, gd.name),
            server_pods=server_pods,
            server_logs=server_logs,
            progress=progress,
            download_done_before=done_before,
            apply_error=error,
            pvc_age_seconds=age_seconds(pvc, now()),
            cache_users=tuple(self.cache_users.users(ns, gd.shared_cache)) if gd.shared_cache else (),
            adapter_job=adapter_job,
            adapter_job_pods=adapter_pods,
            adapters_done_before=adapters_done,
            now=now(),
        )

    async def _read_progress(self, key: Key, pods: list[Manifest]) -> status.Progress | None:
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running:
            pod = running[-1]["metadata"]["name"]
            try:
                found = parse_progress(await self.client.pod_log_tail(key[0], pod, builders.DOWNLOAD_CONTAINER))
            except (ApiError, OSError) as err:
                log.debug("no progress from %s/%s yet: %s", key[0], pod, err)
                found = None
            if found is not None:
                self._progress[key] = found
        return self._progress.get(key)

    async def _read_crash_logs(self, key: Key, pods: list[Manifest]) -> dict[str, str]:
        """The previous run's log of each crashed server container, read once per crash (a restart count)."""
        known = self._crash_logs.get(key, {})
        current: dict[str, tuple[tuple[str, int], str]] = {}
        for pod in pods:
            crash = crashed_server(pod)
            if crash is None:
                continue
            name = pod["metadata"]["name"]
            if name in known and known[name][0] == crash:
                current[name] = known[name]
                continue
            try:
                text = await self.client.pod_log_tail(key[0], name, builders.SERVER_CONTAINER, lines=200, previous=True)
            except (ApiError, OSError) as err:
                log.debug("no log of the crashed server %s/%s: %s", key[0], name, err)
                text = ""
            current[name] = (crash, text)
        self._crash_logs[key] = current
        return {name: text for name, (_, text) in current.items()}

    async def _write_status(self, body: Manifest, previous: Manifest, new: Manifest) -> None:
        patch = transitions.merge_patch(previous, new)
        if not patch:
            return
        meta = body["metadata"]
        result = await self.client.patch_status(KIND, meta["namespace"], meta["name"], patch)
        self.store.record_write(KIND, result)
        for type_, reason, message in transitions.events_between(previous, new):
            await self.recorder.emit(body, type_, reason, message)
