"""The model cache that the GemmaDeployments of a namespace naming the same model revision share
(docs/model-cache.md): one claim and one download Job, made by the first user, owned by all of them.

`CacheUsers` is which GemmaDeployment uses which shared cache, as the passes of this process saw them (in
memory only: the owner references on the claim and the Job are the record in the cluster). The owner
references a pass writes are the users known here, plus the owners already on the objects that this process
has not looked at yet (after a restart): a user is removed only once it is known to have gone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from . import builders
from .kinds import Key, Manifest
from .kube import KubeClient
from .settings import Settings
from .spec import KIND, GemmaDeployment
from .store import Store

log = logging.getLogger(__name__)

# The reconciler's create-or-apply of one child (desired, create_only).
Ensure = Callable[[GemmaDeployment, Manifest, bool], Awaitable[None]]


class ForeignObjectError(Exception):
    """A child's name is taken by an object the operator did not create; it is never taken over."""


def is_shared_cache_of(obj: Manifest, gd: GemmaDeployment) -> bool:
    """obj is the operator's shared cache (claim or Job) of gd's model, made by whichever user came first."""
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(gd.shared_cache and obj_labels.get(builders.CACHE_LABEL) == gd.shared_cache
                and obj_labels.get(builders.MANAGED_BY_LABEL) == builders.MANAGED_BY)


def _own_claim(pvc: Manifest, gd: GemmaDeployment) -> bool:
    """pvc is gd's claim <name>-cache of its own: owned by it, or kept from an earlier one of that name."""
    meta = pvc.get("metadata") or {}
    if any(ref.get("uid") == gd.uid for ref in meta.get("ownerReferences") or []):
        return True
    pvc_labels = meta.get("labels") or {}
    return bool(pvc_labels.get(builders.MANAGED_BY_LABEL) == builders.MANAGED_BY
                and pvc_labels.get(builders.INSTANCE_LABEL) == gd.name and not meta.get("ownerReferences"))


class CacheUsers:
    def __init__(self) -> None:
        self._cache_of: dict[Key, str] = {}  # (namespace, GemmaDeployment) -> its shared claim, "" = none
        self._users: dict[Key, set[str]] = {}  # (namespace, claim) -> GemmaDeployment names
        self._keep: set[Key] = set()  # GemmaDeployments with spec.cache.retainOnDelete

    def use(self, key: Key, claim: str, keep: bool = False) -> None:
        """`key` uses the shared claim `claim` ("" = none) from now on; `keep`: its retainOnDelete."""
        if keep:
            self._keep.add(key)
        else:
            self._keep.discard(key)
        before = self._cache_of.get(key)
        if before == claim:
            return
        if before:
            self._forget(key[0], before, key[1])
        self._cache_of[key] = claim
        if claim:
            self._users.setdefault((key[0], claim), set()).add(key[1])

    def drop(self, key: Key) -> None:
        """`key` is gone."""
        self._keep.discard(key)
        before = self._cache_of.pop(key, None)
        if before:
            self._forget(key[0], before, key[1])

    def _forget(self, namespace: str, claim: str, name: str) -> None:
        users = self._users.get((namespace, claim))
        if users is not None:
            users.discard(name)
            if not users:
                del self._users[(namespace, claim)]

    def known(self, key: Key) -> bool:
        return key in self._cache_of

    def users(self, namespace: str, claim: str) -> list[str]:
        return sorted(self._users.get((namespace, claim), ()))

    def keeps(self, namespace: str, claim: str) -> bool:
        """A user of the claim asks to keep it after its deletion (retainOnDelete)."""
        return any((namespace, name) in self._keep for name in self._users.get((namespace, claim), ()))


class SharedCaches:
    def __init__(self, client: KubeClient, store: Store, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.users = CacheUsers()

    def with_cache(self, gd: GemmaDeployment) -> GemmaDeployment:
        """gd with the shared cache it uses, recorded in cache_users. A claim <name>-cache of its own, made
        before caches were shared (or kept by retainOnDelete), stays in use: nothing is downloaded again."""
        shared = builders.with_shared_cache(gd, self.settings)
        own = self.store.get("PersistentVolumeClaim", gd.namespace, f"{gd.name}-cache")
        if shared.shared_cache and own is not None and _own_claim(own, gd):
            shared = gd
        self.users.use((gd.namespace, gd.name), shared.shared_cache, gd.spec.cache.retain_on_delete)
        return shared

    def _cache_owners(self, namespace: str, claim: str, objects: list[Manifest | None]) -> tuple[list[Manifest], bool]:
        """The owner references of a shared cache: its users known here, plus the owners already on its objects
        that this process has not looked at yet (after a restart); True when there are such."""
        names = set(self.users.users(namespace, claim))
        unknown = set()
        for obj in objects:
            for ref in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []:
                name = str(ref.get("name") or "")
                if ref.get("kind") == KIND and not self.users.known((namespace, name)):
                    unknown.add(name)
        refs, unseen = [], False
        for name in sorted(names | unknown):
            meta = (self.store.get(KIND, namespace, name) or {}).get("metadata") or {}
            if meta and not meta.get("deletionTimestamp"):
                refs.append(builders.shared_owner_reference(name, str(meta.get("uid") or "")))
                unseen = unseen or name in unknown
        return refs, unseen

    def _keeps(self, namespace: str, claim: str, pvc: Manifest | None, unseen: bool) -> bool:
        """Whether the cache claim outlives its last user: a user's retainOnDelete, the claim's gemma.ai/keep
        annotation, or a kept claim (no owner) with users this process has not looked at yet."""
        meta = (pvc or {}).get("metadata") or {}
        return (self.users.keeps(namespace, claim)
                or (meta.get("annotations") or {}).get(builders.KEEP_ANNOTATION) == "true"
                or bool(pvc is not None and unseen and not meta.get("ownerReferences")))

    async def ensure(self, gd: GemmaDeployment, apply: Ensure) -> None:
        """The claim and download Job shared by every GemmaDeployment of this model revision: made once (by
        the first), then only their owner references change (a merge patch of the whole list, written from
        the one list of users this process keeps, so two users never remove each other)."""
        ns, claim = gd.namespace, gd.shared_cache
        job_name = builders.download_job_name(gd, self.settings)
        live_pvc = self.store.get("PersistentVolumeClaim", ns, claim)
        live_job = self.store.get("Job", ns, job_name)
        owners, unseen = self._cache_owners(ns, claim, [live_pvc, live_job])
        pvc_owners = [] if self._keeps(ns, claim, live_pvc, unseen) else owners
        pvc = builders.build_cache_pvc(gd, pvc_owners)
        job = builders.build_download_job(gd, self.settings, owners)
        for kind, desired, refs in (("PersistentVolumeClaim", pvc, pvc_owners), ("Job", job, owners)):
            if desired is None:
                continue
            live = self.store.get(kind, ns, desired["metadata"]["name"])
            if live is None:
                await apply(gd, desired, True)
            elif not is_shared_cache_of(live, gd):
                raise ForeignObjectError(
                    f"a {kind} named {desired['metadata']['name']} already exists and was not created by "
                    f"gemma-operator; remove it, or set spec.cache.existingClaim"
                )
            else:
                await self._set_owners(kind, live, refs)

    async def _set_owners(self, kind: str, obj: Manifest, refs: list[Manifest]) -> None:
        meta = obj["metadata"]
        if [r.get("uid") for r in meta.get("ownerReferences") or []] == [r["uid"] for r in refs]:
            return
        log.info("%s %s/%s is used by %s", kind, meta["namespace"], meta["name"],
                 ", ".join(r["name"] for r in refs) or "none (kept)")
        patch = {"metadata": {"ownerReferences": refs or None}}
        self.store.record_write(kind, await self.client.patch(kind, meta["namespace"], meta["name"], patch))

    def mounted_claim(self, gd: GemmaDeployment) -> str | None:
        """The cache claim the live server Deployment mounts, if any."""
        dep = self.store.get("Deployment", gd.namespace, gd.name)
        for volume in (((dep or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []:
            if volume.get("name") == "model-cache":
                return str((volume.get("persistentVolumeClaim") or {}).get("claimName") or "") or None
        return None

    async def release(self, gd: GemmaDeployment, claim: str) -> None:
        """gd no longer uses the shared cache `claim`: when others do, it leaves its owners; when none does,
        its download Job goes and the claim stays owned by gd, to go with it (the operator never deletes a
        claim: RBAC gives it no such right), or with the first other user that takes it up and is deleted."""
        ns = gd.namespace
        pvc = self.store.get("PersistentVolumeClaim", ns, claim)
        pvc_labels = ((pvc or {}).get("metadata") or {}).get("labels") or {}
        if pvc is None or pvc_labels.get(builders.CACHE_LABEL) != claim or \
                pvc_labels.get(builders.MANAGED_BY_LABEL) != builders.MANAGED_BY:
            return  # not a shared cache of the operator
        job = self.store.get("Job", ns, f"{claim}-download")
        owners, unseen = self._cache_owners(ns, claim, [pvc, job])
        owners = [r for r in owners if r["name"] != gd.name]
        if not owners:
            if job is not None and not job["metadata"].get("deletionTimestamp"):
                log.info("deleting download Job %s/%s of an earlier model", ns, job["metadata"]["name"])
                await self.client.delete("Job", ns, job["metadata"]["name"], uid=job["metadata"].get("uid"))
            return
        if job is not None:
            await self._set_owners("Job", job, owners)
        kept = self._keeps(ns, claim, pvc, unseen) or not pvc["metadata"].get("ownerReferences")
        await self._set_owners("PersistentVolumeClaim", pvc, [] if kept else owners)
