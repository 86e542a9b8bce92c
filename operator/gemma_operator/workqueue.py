"""A deduplicating work queue of GemmaDeployment keys, as in controller-runtime.

Many child events for one parent collapse into one pending pass; a key is never processed by two workers
at once, and a key marked dirty while it is processed is queued again when it is done.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from prometheus_client import Histogram

from . import metrics
from .kinds import Key

QUEUE_WAIT = Histogram(
    "gemma_operator_queue_wait_seconds",
    "Time a GemmaDeployment key waited in the work queue before a worker took it.",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class WorkQueue:
    def __init__(self) -> None:
        self._queue: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._added_at: dict[Key, float] = {}
        # Idle workers, each waiting on a future; add() wakes exactly one (no task, no lock per add).
        self._waiters: deque[asyncio.Future[None]] = deque()

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._added_at[key] = time.monotonic()
            metrics.QUEUE_DEPTH.set(len(self._queue))
            self._wake_one()

    def add_after(self, key: Key, delay: float) -> None:
        """Queue the key once `delay` seconds from now (an earlier timer for it wins)."""
        loop = asyncio.get_running_loop()
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= loop.time() + delay:
                return
            timer.cancel()

        def fire() -> None:
            self._timers.pop(key, None)
            self.add(key)

        self._timers[key] = loop.call_later(delay, fire)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self) -> Key:
        while not self._queue:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken and cancelled at once: pass the wake-up on
                raise
        key = self._queue.popleft()
        self._queued.discard(key)
        self._processing.add(key)
        QUEUE_WAIT.observe(time.monotonic() - self._added_at.pop(key, time.monotonic()))
        metrics.QUEUE_DEPTH.set(len(self._queue))
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queue)
