"""A deduplicating work queue of GemmaDeployment keys, as in controller-runtime.

Many child events for one parent collapse into one pending pass; a key is never processed by two workers
at once, and a key marked dirty while it is processed is queued again when it is done.
"""

from __future__ import annotations

import asyncio
from collections import deque

from . import metrics

Key = tuple[str, str]


class WorkQueue:
    def __init__(self) -> None:
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._ready = asyncio.Condition()

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            metrics.QUEUE_DEPTH.set(len(self._queue))
            asyncio.get_running_loop().create_task(self._notify())

    def add_after(self, key: Key, delay: float) -> None:
        """Queue the key once `delay` seconds from now (an earlier timer for it wins)."""
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = loop.call_later(delay, fire)

    async def _notify(self) -> None:
        async with self._ready:
            self._ready.notify()

    async def get(self) -> Key:
        async with self._ready:
            await self._ready.wait_for(lambda: bool(self._queue))
            key = self._queue.popleft()
            self._queued.discard(key)
            self._processing.add(key)
            metrics.QUEUE_DEPTH.set(len(self._queue))
            return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queue)
