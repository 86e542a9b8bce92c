"""Ties the watch cache, the work queue and the reconciler together; kopf's handlers feed it events."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from . import metrics
from .builders import INSTANCE_LABEL
from .kube import ApiError, KubeClient
from .reconciler import Reconciler
from .settings import Settings
from .spec import KIND
from .store import Store, key_of
from .workqueue import Key, WorkQueue

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
MAX_BACKOFF_SECONDS = 60.0


class Runtime:
    def __init__(self, client: KubeClient, settings: Settings) -> None:
        self.store = Store()
        self.queue = WorkQueue()
        self.reconciler = Reconciler(client, self.store, settings)
        self.settings = settings
        self._failures: dict[Key, int] = {}
        self.last_pass = time.monotonic()

    def on_event(self, kind: str, event: dict[str, Any]) -> None:
        """A watch event of a GemmaDeployment or of one of its children: update the cache, queue the parent."""
        obj = event.get("object") or {}
        if event.get("type") == "DELETED":
            self.store.remove(kind, obj)
        else:
            self.store.upsert(kind, obj)
        if kind == KIND:
            metrics.MANAGED.set(self.store.count(KIND))
            self.queue.add(key_of(obj))
            return
        instance = ((obj.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL)
        if instance:
            self.queue.add((key_of(obj)[0], instance))

    async def worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._run_pass(key)
            finally:
                self.queue.done(key)
                self.last_pass = time.monotonic()

    async def _run_pass(self, key: Key) -> None:
        started = time.perf_counter()
        try:
            again = await self.reconciler.reconcile(key)
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as err:
            # The API server is away or refused a write: try again later, with backoff, without a traceback.
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** failures)
            log.warning("reconcile of %s/%s failed (%s); retrying in %.1fs", *key, err, delay)
            metrics.RECONCILES.labels(kind=KIND, result="error").inc()
            self.queue.add_after(key, delay)
            return
        except Exception:
            log.exception("unexpected error reconciling %s/%s", *key)
            metrics.RECONCILES.labels(kind=KIND, result="error").inc()
            self.queue.add_after(key, MAX_BACKOFF_SECONDS)
            return
        self._failures.pop(key, None)
        metrics.RECONCILES.labels(kind=KIND, result="ok").inc()
        metrics.RECONCILE_SECONDS.labels(kind=KIND).observe(time.perf_counter() - started)
        if again is not None:
            self.queue.add_after(key, again)

    def start_workers(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.worker(), name=f"worker-{i}") for i in range(self.settings.workers)]
