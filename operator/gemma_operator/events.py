"""Kubernetes Events on a GemmaDeployment, for the transitions a user wants to see in kubectl describe."""

from __future__ import annotations

import datetime
import logging
import uuid
from typing import Any

from .kube import ApiError, KubeClient
from .spec import API_VERSION, KIND

log = logging.getLogger(__name__)
Manifest = dict[str, Any]


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


class Recorder:
    def __init__(self, client: KubeClient) -> None:
        self._client = client

    async def emit(self, body: Manifest, type_: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be written must not fail the pass."""
        try:
            await self._client.create("Event", body["metadata"]["namespace"], build_event(body, type_, reason, message, now()))
        except (ApiError, OSError) as err:
            log.warning("could not record event %s on %s: %s", reason, body["metadata"]["name"], err)
