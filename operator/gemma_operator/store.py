"""The operator's view of the cluster: the objects kopf's watches delivered, kept in memory.

A reconcile pass reads children from here instead of asking the API server, so a pass over an unchanged
object costs no request at all.
"""

from __future__ import annotations

from typing import Any

from .builders import COMPONENT_LABEL, INSTANCE_LABEL

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
    """Objects by kind and (namespace, name), with an index by (namespace, instance label) so that finding
    the children of one GemmaDeployment costs the same with 5 or 5000 objects in the cache."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[Key, Manifest]] = {}
        # kind -> (namespace, instance) -> {(namespace, name): object}
        self._by_instance: dict[str, dict[Key, dict[Key, Manifest]]] = {}

    def upsert(self, kind: str, obj: Manifest) -> None:
        """Keep the newest version: a watch event may arrive after the response of our own write."""
        bucket = self._objects.setdefault(kind, {})
        key = key_of(obj)
        old = bucket.get(key)
        if old is None or _resource_version(obj) >= _resource_version(old) or _uid(old) != _uid(obj):
            instance = _instance(obj)
            if old is not None and _instance(old) != instance:
                self._unindex(kind, key, old)
            bucket[key] = obj
            if instance:  # an update keeps its place (children come in the order they were first seen)
                self._by_instance.setdefault(kind, {}).setdefault((key[0], instance), {})[key] = obj

    def remove(self, kind: str, obj: Manifest) -> None:
        bucket = self._objects.get(kind, {})
        key = key_of(obj)
        current = bucket.get(key)
        if current is not None and _uid(current) == _uid(obj):
            del bucket[key]
            self._unindex(kind, key, current)

    def _unindex(self, kind: str, key: Key, obj: Manifest) -> None:
        instance = _instance(obj)
        if not instance:
            return
        index = self._by_instance.get(kind, {})
        members = index.get((key[0], instance))
        if members is not None:
            members.pop(key, None)
            if not members:
                del index[(key[0], instance)]

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        return self._objects.get(kind, {}).get((namespace, name))

    def children(self, kind: str, namespace: str, instance: str, component: str | None = None) -> list[Manifest]:
        members = self._by_instance.get(kind, {}).get((namespace, instance), {})
        return [
            obj for obj in members.values()
            if component is None or ((obj.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) == component
        ]

    def count(self, kind: str) -> int:
        return len(self._objects.get(kind, {}))


def _instance(obj: Manifest) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL) or "")


def _uid(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")
