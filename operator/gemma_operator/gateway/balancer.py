"""Which replica of a model gets a request.

PrefixHash is consistent hashing with bounded load (Mirrokni et al., as KubeAI's proxy does): requests that
share a prompt prefix hash to the same point on a ring of virtual nodes and go to the first replica
clockwise whose in-flight count is within `load_factor` times the mean, so a hot prefix stays on the replica
that holds it in its prefix cache until that replica is overloaded, and then spills to the next one.
LeastLoaded takes the replica with the fewest requests in flight (ties: the one tried longest ago).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from typing import Any

from .routes import LEAST_LOADED, Backend

VIRTUAL_NODES = 100
LOAD_FACTOR = 1.25
PREFIX_CHARS = 256  # the first characters of the prompt that choose the replica


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def prefix_key(body: dict[str, Any]) -> str:
    """The start of what the model will see first: the chat messages in order, or the completion prompt.
    Requests with one system prompt and shared few-shot turns get one key."""
    if isinstance(body.get("messages"), list):
        parts: list[str] = []
        for message in body["messages"]:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):  # content parts: the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"{message.get('role', '')}:{content if isinstance(content, str) else ''}\n")
            if sum(map(len, parts)) >= PREFIX_CHARS:
                break
        return "".join(parts)[:PREFIX_CHARS]
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else str(prompt[:PREFIX_CHARS])
    return str(prompt or "")[:PREFIX_CHARS]


class Ring:
    """The hash ring of one model's replicas; rebuilt only when the set of replicas changes."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        points = sorted((_hash(f"{b.pod}#{i}"), b.pod) for b in backends for i in range(VIRTUAL_NODES))
        self.hashes = [h for h, _ in points]
        self.pods = [p for _, p in points]


class Balancer:
    """In-flight counts per replica and the rings of the models; one per gateway process."""

    def __init__(self, load_factor: float = LOAD_FACTOR) -> None:
        self.load_factor = load_factor
        self.in_flight: dict[str, int] = {}  # backend URL -> requests in flight
        self._rings: dict[tuple[str, ...], Ring] = {}
        self._turn = 0

    def pick(self, backends: Sequence[Backend], policy: str, key: str,
             excluded: frozenset[str] = frozenset()) -> Backend | None:
        candidates = [b for b in backends if b.url not in excluded]
        if not candidates:
            return None
        if policy == LEAST_LOADED or len(candidates) == 1:
            return self._least_loaded(candidates)
        return self._bounded_hash(candidates, key)

    def _least_loaded(self, candidates: Sequence[Backend]) -> Backend:
        self._turn += 1
        start = self._turn % len(candidates)
        rotated = [*candidates[start:], *candidates[:start]]
        return min(rotated, key=lambda b: self.in_flight.get(b.url, 0))

    def _bounded_hash(self, candidates: Sequence[Backend], key: str) -> Backend:
        ring = self._ring(candidates)
        by_pod = {b.pod: b for b in candidates}
        total = sum(self.in_flight.get(b.url, 0) for b in candidates)
        bound = math.ceil(self.load_factor * (total + 1) / len(candidates))
        start = bisect.bisect(ring.hashes, _hash(key)) % len(ring.hashes)
        seen: set[str] = set()
        for i in range(len(ring.pods)):
            pod = ring.pods[(start + i) % len(ring.pods)]
            if pod in seen:
                continue
            seen.add(pod)
            if self.in_flight.get(by_pod[pod].url, 0) < bound:
                return by_pod[pod]
        return self._least_loaded(candidates)  # unreachable while bound > mean; kept for safety

    def _ring(self, candidates: Sequence[Backend]) -> Ring:
        pods = tuple(sorted(b.pod for b in candidates))
        ring = self._rings.get(pods)
        if ring is None:
            if len(self._rings) > 1024:  # replica sets come and go: keep the cache bounded
                self._rings.clear()
            ring = self._rings[pods] = Ring(candidates)
        return ring

    def started(self, backend: Backend) -> None:
        self.in_flight[backend.url] = self.in_flight.get(backend.url, 0) + 1

    def finished(self, backend: Backend) -> None:
        left = self.in_flight.get(backend.url, 0) - 1
        if left > 0:
            self.in_flight[backend.url] = left
        else:
            self.in_flight.pop(backend.url, None)
