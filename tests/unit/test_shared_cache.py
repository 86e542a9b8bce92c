"""Issue 15, one download per model: GemmaDeployments of one model revision share one cache claim and one
download Job, owned by all of them (docs/model-cache.md)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from gemma_operator import builders
from gemma_operator.reconciler import Reconciler
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment
from gemma_operator.store import Store


def body_of(gemma_body: dict[str, Any], name: str, uid: str, **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(gemma_body)
    body["metadata"] |= {"name": name, "uid": uid}
    body["spec"] |= spec
    return body


def shared(body: dict[str, Any], settings: Settings) -> GemmaDeployment:
    return builders.with_shared_cache(GemmaDeployment.from_body(body), settings)


def test_the_cache_is_named_by_the_model_and_the_volume_not_by_the_deployment(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    a = shared(body_of(gemma_body, "a", "uid-a"), settings)
    b = shared(body_of(gemma_body, "b", "uid-b"), settings)
    assert a.shared_cache == b.shared_cache and a.shared_cache.startswith("cache-gemma-3-4b-it-")
    assert a.cache_claim_name == a.shared_cache
    assert builders.download_job_name(a, settings) == builders.download_job_name(b, settings) == f"{a.shared_cache}-download"
    assert len(builders.download_job_name(a, settings)) <= 63
    model = gemma_body["spec"]["model"]
    for spec in ({"model": model | {"revision": "v2"}}, {"model": model | {"endpoint": "http://127.0.0.1:1"}},
                 {"cache": {"size": "30Gi"}}, {"cache": {"storageClassName": "fast"}},
                 {"cache": {"accessModes": ["ReadWriteMany"]}}):
        assert shared(body_of(gemma_body, "c", "uid-c", **spec), settings).shared_cache != a.shared_cache, spec
    # One pod at a time: nothing to share.
    rwop = {"cache": {"accessModes": ["ReadWriteOncePod"]}}
    assert shared(body_of(gemma_body, "a", "uid-a", **rwop), settings).shared_cache != \
        shared(body_of(gemma_body, "b", "uid-b", **rwop), settings).shared_cache
    # existingClaim and source pvc stay as they are.
    mine = shared(body_of(gemma_body, "d", "uid-d", cache={"existingClaim": "mine"}), settings)
    assert mine.shared_cache == "" and mine.cache_claim_name == "mine"
    pvc = shared(body_of(gemma_body, "e", "uid-e", model=model | {"source": "pvc"}), settings)
    assert pvc.shared_cache == ""


def test_shared_objects_are_owned_by_every_user_and_labelled_with_the_cache(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    a = shared(body_of(gemma_body, "a", "uid-a"), settings)
    owners = [builders.shared_owner_reference("a", "uid-a"), builders.shared_owner_reference("b", "uid-b")]
    pvc = builders.build_cache_pvc(a, owners)
    job = builders.build_download_job(a, settings, owners)
    assert pvc is not None and job is not None
    for obj in (pvc, job):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == owners and not any(r.get("controller") for r in owners)
        assert meta["labels"][builders.CACHE_LABEL] == a.shared_cache
        assert meta["labels"][builders.INSTANCE_LABEL] == a.shared_cache
        assert meta["annotations"]["gemma.ai/model-id"] == "LLM-Research/gemma-3-4b-it"
    assert job["spec"]["template"]["metadata"]["labels"][builders.INSTANCE_LABEL] == a.shared_cache
    volume = job["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["claimName"] == a.shared_cache
    # Kept: no owner, so the garbage collector never deletes it.
    kept = builders.build_cache_pvc(a, [])
    assert kept is not None and "ownerReferences" not in kept["metadata"]


def test_servers_on_a_read_write_once_shared_cache_go_where_the_other_users_servers_are(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    a = shared(body_of(gemma_body, "a", "uid-a"), settings)
    template = builders.build_server_deployment(a, settings)["spec"]["template"]
    assert template["metadata"]["labels"][builders.CACHE_LABEL] == a.shared_cache
    (term,) = template["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {"labelSelector": {"matchLabels": {builders.CACHE_LABEL: a.shared_cache}},
                    "topologyKey": "kubernetes.io/hostname"}
    spread = shared(body_of(gemma_body, "b", "uid-b", cache={"accessModes": ["ReadWriteMany"]}), settings)
    assert "affinity" not in builders.build_server_deployment(spread, settings)["spec"]["template"]["spec"]


class FakeClient:
    """Server-side apply and merge patches into a dict; records the writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.version = 0

    def _store(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        meta = obj["metadata"]
        meta |= {"resourceVersion": str(self.version), "uid": meta.get("uid") or f"uid-{kind}-{meta['name']}"}
        self.objects[(kind, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        return self._store(manifest["kind"], copy.deepcopy(manifest))

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("patch", kind, name))
        obj = copy.deepcopy(self.objects[(kind, namespace, name)])
        refs = patch["metadata"]["ownerReferences"]
        if refs is None:
            obj["metadata"].pop("ownerReferences", None)
        else:
            obj["metadata"]["ownerReferences"] = refs
        return self._store(kind, obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None


def owners_of(client: FakeClient, kind: str, name: str) -> list[str]:
    return [r["name"] for r in client.objects[(kind, "ml", name)]["metadata"].get("ownerReferences") or []]


def test_two_deployments_share_one_claim_and_one_job_and_neither_removes_the_other(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    client, store = FakeClient(), Store()
    reconciler = Reconciler(client, store, settings)  # type: ignore[arg-type]
    bodies = [body_of(gemma_body, name, f"uid-{name}") for name in ("a", "b")]
    for body in bodies:
        store.upsert("GemmaDeployment", body)

    def run(body: dict[str, Any]) -> GemmaDeployment:
        gd = reconciler.caches.with_cache(GemmaDeployment.from_body(body))
        asyncio.run(reconciler._apply_children(gd, {}))
        return gd

    a = run(bodies[0])
    claim, job = a.shared_cache, f"{a.shared_cache}-download"
    assert owners_of(client, "PersistentVolumeClaim", claim) == ["a"] and owners_of(client, "Job", job) == ["a"]
    b = run(bodies[1])
    assert b.cache_claim_name == claim
    assert [k for k in client.objects if k[0] in ("PersistentVolumeClaim", "Job")] == [
        ("PersistentVolumeClaim", "ml", claim), ("Job", "ml", job)]
    assert owners_of(client, "PersistentVolumeClaim", claim) == ["a", "b"]
    assert owners_of(client, "Job", job) == ["a", "b"]
    # A's next pass keeps B.
    client.writes.clear()
    run(bodies[0])
    assert owners_of(client, "Job", job) == ["a", "b"] and not [w for w in client.writes if w[0] == "patch"]

    # After a restart, a pass of A alone (B not looked at yet) does not remove B.
    restarted = Reconciler(client, store, settings)  # type: ignore[arg-type]
    gd = restarted.caches.with_cache(GemmaDeployment.from_body(bodies[0]))
    asyncio.run(restarted._apply_children(gd, {}))
    assert owners_of(client, "Job", job) == ["a", "b"]

    # B is deleted: the next pass of A leaves it out (the garbage collector does the same).
    store.remove("GemmaDeployment", bodies[1])
    asyncio.run(reconciler.reconcile(("ml", "b")))
    run(bodies[0])
    assert owners_of(client, "PersistentVolumeClaim", claim) == ["a"] and owners_of(client, "Job", job) == ["a"]


def test_a_kept_cache_has_no_owner_while_a_user_retains_it(gemma_body: dict[str, Any], settings: Settings) -> None:
    client, store = FakeClient(), Store()
    reconciler = Reconciler(client, store, settings)  # type: ignore[arg-type]
    keep = body_of(gemma_body, "a", "uid-a", cache={"retainOnDelete": True})
    other = body_of(gemma_body, "b", "uid-b")
    for body in (keep, other):
        store.upsert("GemmaDeployment", body)
        gd = reconciler.caches.with_cache(GemmaDeployment.from_body(body))
        asyncio.run(reconciler._apply_children(gd, {}))
    claim = gd.shared_cache
    assert owners_of(client, "PersistentVolumeClaim", claim) == []
    assert owners_of(client, "Job", f"{claim}-download") == ["a", "b"]
