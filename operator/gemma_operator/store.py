"""The operator's view of the cluster: the objects kopf's watches delivered, kept in memory.

A reconcile pass reads children from here instead of asking the API server, so a pass over an unchanged
object costs no request at all.
"""

from __future__ import annotations

from typing import Any

from .builders import INSTANCE_LABEL

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Manifest) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _resource_version(obj: Manifest) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # resourceVersions are opaque; ours are etcd revisions, but never crash on one
        return 0


class Store:
    def __init__(self) -> None:
        self._objects: dict[str, dict[Key, Manifest]] = {}

    def upsert(self, kind: str, obj: Manifest) -> None:
        """Keep the newest version: a watch event may arrive after the response of our own write."""
        bucket = self._objects.setdefault(kind, {})
        key = key_of(obj)
        old = bucket.get(key)
        if old is None or _resource_version(obj) >= _resource_version(old) or _uid(old) != _uid(obj):
            bucket[key] = obj

    def remove(self, kind: str, obj: Manifest) -> None:
        bucket = self._objects.get(kind, {})
        current = bucket.get(key_of(obj))
        if current is not None and _uid(current) == _uid(obj):
            del bucket[key_of(obj)]

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def children(self, kind: str, namespace: str, instance: str, component: str | None = None) -> list[Manifest]:
        found = []
        for (ns, _), obj in self._objects.get(kind, {}).items():
            obj_labels = (obj.get("metadata") or {}).get("labels") or {}
            if ns != namespace or obj_labels.get(INSTANCE_LABEL) != instance:
                continue
            if component is None or obj_labels.get("app.kubernetes.io/component") == component:
                found.append(obj)
        return found

    def count(self, kind: str) -> int:
        return len(self._objects.get(kind, {}))


def _uid(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")
