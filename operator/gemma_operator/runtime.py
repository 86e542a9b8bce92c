"""Ties the reflectors, the watch cache, the work queue and the reconciler together."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from . import metrics
from .builders import INSTANCE_LABEL
from .kinds import Key, Manifest, watched_kinds
from .kube import ApiError, KubeClient
from .reconciler import Reconciler
from .reflector import Reflector
from .settings import Settings
from .spec import KIND
from .store import Store, key_of
from .workqueue import WorkQueue

log = logging.getLogger(__name__)
MAX_BACKOFF_SECONDS = 60.0


class Runtime:
    def __init__(self, client: KubeClient, settings: Settings) -> None:
        self.client = client
        self.store = Store()
        self.queue = WorkQueue()
        self.reconciler = Reconciler(client, self.store, settings)
        self.settings = settings
        self._failures: dict[Key, int] = {}
        self.last_pass = time.monotonic()
        self._reflectors: list[Reflector] = []

    def on_event(self, kind: str, event_type: str, obj: Manifest) -> None:
        """A watch event of a GemmaDeployment or of one of its children: update the cache, queue the parent."""
        if event_type == "DELETED":
            self.store.remove(kind, obj)
        else:
            self.store.upsert(kind, obj)
        self._changed(kind, obj)

    def on_list(self, kind: str, namespace: str | None, objects: list[Manifest]) -> None:
        """A (re-)list: the cache of the kind becomes the list; every owner listed or gone is looked at."""
        gone = self.store.replace(kind, namespace, objects)
        for obj in objects + gone:
            self._changed(kind, obj)

    def _changed(self, kind: str, obj: Manifest) -> None:
        metrics.CACHED.labels(kind=kind).set(self.store.count(kind))
        if kind == KIND:
            metrics.MANAGED.set(self.store.count(KIND))
            self.queue.add(key_of(obj))
            return
        instance = ((obj.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL)
        if instance:
            self.queue.add((key_of(obj)[0], instance))
            # A shared model cache's claim, Job and download pods: every GemmaDeployment that uses it.
            for user in self.reconciler.cache_users.users(key_of(obj)[0], instance):
                self.queue.add((key_of(obj)[0], user))

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

    def start_reflectors(self, namespaces: list[str]) -> list[asyncio.Task[None]]:
        """One list-then-watch per watched kind and namespace (one cluster-wide watch without namespaces)."""
        scopes: list[str | None] = list(namespaces) or [None]
        self._reflectors = [Reflector(self.client, kind, ns, self.on_event, self.on_list)
                            for kind in watched_kinds(self.settings.available_kinds) for ns in scopes]
        return [asyncio.create_task(r.run(), name=f"reflector-{r.kind.plural}-{r.namespace or 'all'}")
                for r in self._reflectors]

    async def caches_synced(self) -> None:
        """Until every reflector has listed once: a pass before that would take a child not yet listed for
        a missing one."""
        await asyncio.gather(*(r.listed.wait() for r in self._reflectors))
