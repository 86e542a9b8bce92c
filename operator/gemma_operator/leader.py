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
from typing import Any

from . import metrics
from .kube import ApiError, KubeClient

log = logging.getLogger(__name__)
Manifest = dict[str, Any]


class LeadershipLost(Exception):
    pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.strptime(value.replace("Z", ""), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.UTC)


RETRY_SECONDS = 2


def expired(lease: Manifest, now: datetime.datetime) -> bool:
    """True when nobody holds `lease` any more: released (no holder) or not renewed within its duration."""
    spec = lease.get("spec") or {}
    if not spec.get("holderIdentity"):
        return True
    renewed = _parse(spec.get("renewTime"))
    duration = spec.get("leaseDurationSeconds") or 15
    return renewed is None or renewed + datetime.timedelta(seconds=duration) < now


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, identity: str, duration: int = 15) -> None:
        self.client, self.namespace, self.name, self.identity, self.duration = client, namespace, name, identity, duration

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
            if holder != self.identity and not expired(lease, _now()):
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
        last_ok = _now()
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                if await self.try_acquire():
                    last_ok = _now()
                    continue
            except Exception as err:  # noqa: BLE001 - any failure to renew counts against the Lease
                log.warning("could not renew the leader Lease: %s", err)
            if (_now() - last_ok).total_seconds() > self.duration * 2 / 3:
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
