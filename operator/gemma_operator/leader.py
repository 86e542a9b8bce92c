"""Leader election on a coordination.k8s.io Lease: with several operator replicas, only the holder acts.

A standby replica waits for the Lease to expire or to be released; a leader that cannot renew within the
Lease's duration exits, so two replicas never reconcile at once. A leader that stops on purpose (SIGTERM:
a rollout, a drained node, a deleted pod) releases the Lease once it has stopped acting, as client-go's
ReleaseOnCancel does, so that the standby takes over within its retry period instead of the Lease's
duration.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

from . import metrics
from .kinds import Manifest
from .kube import ApiError, KubeClient

log = logging.getLogger(__name__)


class LeadershipLost(Exception):
    pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


RETRY_SECONDS = 2


class LeaseObserver:
    """Whether another replica's Lease is free, judged on this replica's own clock.

    Nodes' clocks differ, so the holder's renewTime is never compared with the local time. As client-go's
    leader election does, the observer remembers when (on its monotonic clock) it last saw the Lease's
    record change; a holder that has not renewed for the Lease's duration since then has lost it. A
    standby that has just started therefore waits one full duration before taking an unrenewed Lease.
    """

    def __init__(self) -> None:
        self._record: tuple[str, str] | None = None
        self._seen_at = 0.0

    def free(self, lease: Manifest, now: float) -> bool:
        """`now`: time.monotonic(). True when released (no holder) or not renewed for its duration."""
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if not holder:
            return True
        # Every renewal is a write, so a new resourceVersion (compared for equality only: it is opaque).
        record = (holder, str((lease.get("metadata") or {}).get("resourceVersion") or ""))
        if record != self._record:
            self._record, self._seen_at = record, now
            return False
        return now - self._seen_at > float(spec.get("leaseDurationSeconds") or 15)


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, duration: int = 15) -> None:
        self.client, self.namespace, self.name, self.identity, self.duration = client, namespace, name, identity, duration
        self._observer = LeaseObserver()

    def _spec(self, lease: Manifest | None) -> Manifest:
        spec = dict((lease or {}).get("spec") or {})
        now = _micro(_now())
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        return spec | {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration, "renewTime": now}

    async def try_acquire(self) -> bool:
        lease = await self.client.get("Lease", self.namespace, self.name)
        try:
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(None)}
                await self.client.create("Lease", self.namespace, body)
                return True
            holder = (lease.get("spec") or {}).get("holderIdentity")
            if holder != self.identity and not self._observer.free(lease, time.monotonic()):
                return False
            await self.client.replace("Lease", self.namespace, self.name, lease | {"spec": self._spec(lease)})
            return True
        except ApiError as err:
            if err.status == 409:  # another replica won the race
                return False
            raise

    async def acquire(self) -> None:
        log.info("waiting for the leader Lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not await self.try_acquire():
            await asyncio.sleep(RETRY_SECONDS)
        metrics.IS_LEADER.set(1)
        log.info("acquired the leader Lease %s/%s", self.namespace, self.name)

    async def keep(self) -> None:
        """Renew until renewal fails for longer than the Lease lasts; then raise LeadershipLost."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                if await self.try_acquire():
                    last_ok = time.monotonic()
                    continue
            except Exception as err:  # noqa: BLE001 - any failure to renew counts against the Lease
                log.warning("could not renew the leader Lease: %s", err)
            if time.monotonic() - last_ok > self.duration * 2 / 3:
                metrics.IS_LEADER.set(0)
                raise LeadershipLost(f"lost the leader Lease {self.namespace}/{self.name}")

    async def release(self) -> None:
        """Give the Lease up if this replica still holds it (the replace carries the Lease's resourceVersion,
        so a Lease another replica took meanwhile is left alone)."""
        try:
            lease = await self.client.get("Lease", self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = (lease.get("spec") or {}) | {"holderIdentity": "", "leaseDurationSeconds": 1,
                                                 "renewTime": _micro(_now())}
            await self.client.replace("Lease", self.namespace, self.name, lease | {"spec": spec})
            metrics.IS_LEADER.set(0)
            log.info("released the leader Lease %s/%s", self.namespace, self.name)
        except (ApiError, OSError) as err:
            log.warning("could not release the leader Lease (it expires by itself): %s", err)
