"""Kubernetes Events on a GemmaDeployment, for the transitions a user wants to see in kubectl describe."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from .kinds import Manifest
from .kube import ApiError, KubeClient, resource_path
from .spec import API_VERSION, KIND

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_event(body: Manifest, type_: str, reason: str, message: str, timestamp: str) -> Manifest:
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "namespace": meta["namespace"],
            "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1000],
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
        "source": {"component": "gemma-operator"},
        "reportingComponent": "gemma-operator",
        "reportingInstance": "gemma-operator",
    }


# client-go's EventCorrelator keeps this many recently written events (maxLruCacheEntries).
MAX_CACHED_EVENTS = 4096

EventKey = tuple[str, ...]


def event_key(event: Manifest) -> EventKey:
    """What makes two events "the same" for client-go's event logger (getEventKey): source, involved object,
    type, reason and message. The object's resourceVersion is not part of it."""
    obj = event.get("involvedObject") or {}
    source = event.get("source") or {}
    return (
        str(source.get("component") or ""), str(source.get("host") or ""),
        str(obj.get("apiVersion") or ""), str(obj.get("kind") or ""), str(obj.get("namespace") or ""),
        str(obj.get("name") or ""), str(obj.get("uid") or ""), str(obj.get("fieldPath") or ""),
        str(event.get("type") or ""), str(event.get("reason") or ""), str(event.get("message") or ""),
    )


@dataclass
class _Written:
    namespace: str
    name: str
    count: int


async def patch_event(client: KubeClient, namespace: str, name: str, patch: Manifest) -> Manifest:
    """A JSON merge patch of one Event (KubeClient has no generic patch)."""
    result: Manifest = await client._request(
        "patch", "PATCH", resource_path("Event", namespace, name), "events",
        body=patch, content_type="application/merge-patch+json",
    )
    return result


class Recorder:
    """Writes Events the way client-go's recorder does: an event equal to one written recently (same
    event_key) is not a new object; the existing Event's count grows and its lastTimestamp moves, so
    kubectl describe shows "(x3 over 5m)" instead of three lines. The cache of written events is in memory
    and bounded (least recently used first out); after a restart, or once the API server has expired the
    Event (its TTL, one hour by default), a new Event object starts at count 1."""

    def __init__(self, client: KubeClient, max_cached: int = MAX_CACHED_EVENTS) -> None:
        self._client = client
        self._max_cached = max_cached
        self._written: OrderedDict[EventKey, _Written] = OrderedDict()

    async def emit(self, body: Manifest, type_: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be written must not fail the pass."""
        try:
            await self._record(build_event(body, type_, reason, message, now()))
        except (ApiError, OSError) as err:
            log.warning("could not record event %s on %s: %s", reason, body["metadata"]["name"], err)

    async def _record(self, event: Manifest) -> None:
        key = event_key(event)
        seen = self._written.get(key)
        if seen is not None:
            count = seen.count + 1
            try:
                await patch_event(self._client, seen.namespace, seen.name,
                                  {"count": count, "lastTimestamp": event["lastTimestamp"]})
            except ApiError as err:
                if err.status != 404:
                    raise
                self._written.pop(key, None)  # expired or deleted: write a new one
            else:
                seen.count = count
                self._written.move_to_end(key)
                return
        namespace = event["metadata"]["namespace"]
        created = await self._client.create("Event", namespace, event)
        name = ((created or {}).get("metadata") or {}).get("name") or event["metadata"]["name"]
        self._written[key] = _Written(namespace, name, int((created or {}).get("count") or 1))
        while len(self._written) > self._max_cached:
            self._written.popitem(last=False)
