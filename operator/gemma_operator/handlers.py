"""Thin kopf handlers: every watch event goes to the Runtime, which does the work."""

from __future__ import annotations

from typing import Any

import kopf

from . import kube
from .builders import MANAGED_BY, MANAGED_BY_LABEL
from .spec import GROUP, KIND, PLURAL, VERSION

# Children are watched only when they carry our label, so the operator never reacts to others' objects.
CHILDREN = {
    "PersistentVolumeClaim": ("", "v1", "persistentvolumeclaims"),
    "Job": ("batch", "v1", "jobs"),
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "Pod": ("", "v1", "pods"),
}
OURS = {MANAGED_BY_LABEL: MANAGED_BY}


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    return kube.login()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Events are written by the operator itself, only on transitions; kopf's own would be noise.
    settings.posting.enabled = False
    # Reconnect a stalled watch within minutes rather than waiting for TCP to notice.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0


@kopf.on.event(GROUP, VERSION, PLURAL)
async def gemma_deployment_event(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    memo.runtime.on_event(KIND, event)


def _child_handler(kind: str) -> Any:
    async def handler(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
        memo.runtime.on_event(kind, event)

    handler.__name__ = f"{kind.lower()}_event"
    return handler


for _kind, (_group, _version, _plural) in CHILDREN.items():
    kopf.on.event(_group, _version, _plural, labels=OURS, id=f"{_kind.lower()}-event")(_child_handler(_kind))
