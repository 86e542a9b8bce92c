"""List-then-watch of one kind into the store, as client-go's reflector does.

The list and the watch carry the kind's server-side label selector, so others' objects never reach the
operator. A watch that ends is resumed from the last resourceVersion seen (bookmarks keep it fresh); one
that expired (410 Gone) is replaced by a new list, and the cache of that kind then holds exactly what the
list returned: objects deleted while the watch was away do not stay behind as ghosts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from . import metrics
from .kinds import Kind, Manifest
from .kube import ApiError, KubeClient, WatchExpired

log = logging.getLogger(__name__)

OnEvent = Callable[[str, str, Manifest], None]  # (kind, event type, object)
OnList = Callable[[str, "str | None", list[Manifest]], None]  # (kind, namespace or None, objects)

WATCH_TIMEOUT_SECONDS = 300
MAX_BACKOFF_SECONDS = 30.0


class Reflector:
    def __init__(self, client: KubeClient, kind: Kind, namespace: str | None,
                 on_event: OnEvent, on_list: OnList) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.on_event = on_event
        self.on_list = on_list
        self.listed = asyncio.Event()  # set once the first list is in the store

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                failures = 0
            except WatchExpired:
                log.info("watch of %s expired; listing again", self._what())
                version = None
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
                # The API server is away or refused: keep the version (the watch resumes where it was;
                # if that is too old by then, the 410 leads to a new list).
                failures += 1
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** failures)
                log.warning("watch of %s failed (%s); again in %.1fs", self._what(), err, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        objects, version = await self.client.list(self.kind.name, self.namespace, self.kind.label_selector)
        metrics.WATCH_EVENTS.labels(kind=self.kind.name, type="LISTED").inc(len(objects))
        self.on_list(self.kind.name, self.namespace, objects)
        self.listed.set()
        return version

    async def _watch(self, version: str) -> str:
        """Events until the server ends the stream; returns the last resourceVersion seen."""
        async for event in self.client.watch(self.kind.name, self.namespace, version, self.kind.label_selector,
                                             WATCH_TIMEOUT_SECONDS):
            obj: Manifest = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            event_type = str(event.get("type") or "")
            metrics.WATCH_EVENTS.labels(kind=self.kind.name, type=event_type).inc()
            if event_type in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(self.kind.name, event_type, obj)
        return version

    def _what(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace else "all namespaces"
        return f"{self.kind.plural} in {where}"
