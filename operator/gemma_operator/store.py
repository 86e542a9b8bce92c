"""The operator's view of the cluster: the objects the reflectors listed and watched, kept in memory.

A reconcile pass reads children from here instead of asking the API server, so a pass over an unchanged
object costs no request at all.

resourceVersions are opaque: the store never orders them. It relies on the watch delivering one object's
versions in order, and compares versions only for equality, to hold the response of its own write until
the watch has caught up with it (an older event still in flight must not undo the write in the cache).
"""

from __future__ import annotations

import time

from .builders import COMPONENT_LABEL, INSTANCE_LABEL
from .kinds import Key, Manifest

# A write whose watch event never comes (the object was re-listed, or changed by a write we did not see
# the answer of) stops holding back the watch after this long.
WRITE_HOLD_SECONDS = 30.0
# The versions of an object the watch delivered last: our write's answer that the watch delivered before
# the answer reached us is old news (the cache may hold a newer version already).
SEEN_VERSIONS = 8


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(obj: Manifest) -> Manifest:
    """What the cache keeps of an object: all of it but managedFields and kubectl's last-applied copy,
    which no pass reads and which are most of a Deployment's bytes (client-go's informers strip
    managedFields with a transform for the same reason). The object is fresh from JSON, so in place."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            del annotations[LAST_APPLIED]
    return obj


def key_of(obj: Manifest) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _resource_version(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Store:
    """Objects by kind and (namespace, name), with an index by (namespace, instance label) so that finding
    the children of one GemmaDeployment costs the same with 5 or 5000 objects in the cache."""

    def __init__(self) -> None:
        self._objects: dict[str, dict[Key, Manifest]] = {}
        # kind -> (namespace, instance) -> {(namespace, name): object}
        self._by_instance: dict[str, dict[Key, dict[Key, Manifest]]] = {}
        # kind -> key -> (resourceVersion of our write, when) until the watch delivers that version
        self._written: dict[str, dict[Key, tuple[str, float]]] = {}
        # kind -> key -> the last SEEN_VERSIONS versions the watch (or a list) delivered, newest last
        self._seen: dict[str, dict[Key, tuple[str, ...]]] = {}

    def upsert(self, kind: str, obj: Manifest) -> None:
        """A watch event: the newest version, unless it is older than our own write still on its way."""
        key = key_of(obj)
        held = self._written.get(kind, {}).get(key)
        if held is not None:
            version, since = held
            if _resource_version(obj) == version or time.monotonic() - since > WRITE_HOLD_SECONDS:
                del self._written[kind][key]
            else:
                return  # an event from before our write: the cache already holds something newer
        self._saw(kind, key, obj)
        self._put(kind, key, obj)

    def _saw(self, kind: str, key: Key, obj: Manifest) -> None:
        seen = self._seen.setdefault(kind, {})
        seen[key] = (*seen.get(key, ())[-(SEEN_VERSIONS - 1):], _resource_version(obj))

    def record_write(self, kind: str, obj: Manifest) -> None:
        """The API server's answer to our write: newer than any event of the object seen so far."""
        key = key_of(obj)
        if _resource_version(obj) in self._seen.get(kind, {}).get(key, ()):
            return  # the watch was quicker than the answer: the cache holds this version or a newer one
        old = self._objects.get(kind, {}).get(key)
        if old is None or _resource_version(old) != _resource_version(obj):  # a no-op write makes no event
            self._written.setdefault(kind, {})[key] = (_resource_version(obj), time.monotonic())
        self._put(kind, key, obj)

    def replace(self, kind: str, namespace: str | None, objects: list[Manifest]) -> list[Manifest]:
        """A (re-)list: the cache of `kind` in `namespace` (None: all) becomes exactly `objects`.
        Returns the objects that are gone, so their owners can be looked at again."""
        bucket = self._objects.get(kind, {})
        listed = {key_of(obj) for obj in objects}
        gone = [obj for key, obj in list(bucket.items())
                if key not in listed and (namespace is None or key[0] == namespace)]
        for obj in gone:
            self.remove(kind, obj)
        written = self._written.get(kind, {})
        for key in [k for k in written if namespace is None or k[0] == namespace]:
            del written[key]  # the list is newer than any write made before it
        for obj in objects:
            self._saw(kind, key_of(obj), obj)
            self._put(kind, key_of(obj), obj)
        return gone

    def _put(self, kind: str, key: Key, obj: Manifest) -> None:
        slim(obj)
        bucket = self._objects.setdefault(kind, {})
        old = bucket.get(key)
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
            self._written.get(kind, {}).pop(key, None)
            self._seen.get(kind, {}).pop(key, None)

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

    def all(self, kind: str) -> list[Manifest]:
        return list(self._objects.get(kind, {}).values())

    def count(self, kind: str) -> int:
        return len(self._objects.get(kind, {}))


def _instance(obj: Manifest) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(INSTANCE_LABEL) or "")


def _uid(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")
