"""The server pod, production-ready (issue 15): the compile cache on the cache volume, the PodDisruptionBudget,
topology spread and priority class."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from gemma_operator import builders
from gemma_operator.reconciler import Reconciler
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment
from gemma_operator.store import Store


def variant(body: dict[str, Any], **spec: Any) -> GemmaDeployment:
    return GemmaDeployment.from_body(body | {"spec": body["spec"] | spec})


def pod_spec(gd: GemmaDeployment, settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = builders.build_server_deployment(gd, settings)["spec"]["template"]["spec"]
    return spec


def container(gd: GemmaDeployment, settings: Settings) -> dict[str, Any]:
    c: dict[str, Any] = pod_spec(gd, settings)["containers"][0]
    return c


def env_of(gd: GemmaDeployment, settings: Settings) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container(gd, settings)["env"]}


# ------------------------------------------------------------------------------------------- compile cache


def test_compile_cache_is_a_writable_subpath_of_the_cache_volume(gd: GemmaDeployment, settings: Settings) -> None:
    c = container(gd, settings)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cache = mounts[builders.COMPILE_CACHE_MOUNT]
    key = builders.compile_cache_key(gd, settings)
    assert len(key) == 16
    assert cache == {"name": "model-cache", "mountPath": "/var/cache/vllm", "subPath": f".vllm-compile-cache/{key}"}
    assert mounts["/models"]["readOnly"] is True  # the weights stay read-only
    assert env_of(gd, settings)["VLLM_CACHE_ROOT"] == "/var/cache/vllm"
    volume = {v["name"]: v for v in pod_spec(gd, settings)["volumes"]}["model-cache"]
    # Writable (no readOnly: a false one is dropped by the API server, so it is not written either).
    assert "readOnly" not in volume["persistentVolumeClaim"]
    annotations = builders.build_server_deployment(gd, settings)["spec"]["template"]["metadata"]["annotations"]
    assert annotations[builders.COMPILE_CACHE_ANNOTATION] == f".vllm-compile-cache/{key}"


def test_compile_cache_key_changes_with_image_flags_and_env(gemma_body: dict[str, Any], settings: Settings) -> None:
    base = builders.compile_cache_key(GemmaDeployment.from_body(gemma_body), settings)
    changed = [
        variant(gemma_body, vllm={"image": "vllm/vllm-openai:v9.9.9"}),
        variant(gemma_body, vllm={"extraArgs": ["--enable-prefix-caching"]}),
        variant(gemma_body, vllm={"env": [{"name": "VLLM_ATTENTION_BACKEND", "value": "FLASHINFER"}]}),
        variant(gemma_body, maxModelLen=4096),
        variant(gemma_body, gpu={"count": 2}),
        variant(gemma_body, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H200"}),
    ]
    keys = [builders.compile_cache_key(gd, settings) for gd in changed]
    assert base not in keys and len(set(keys)) == len(keys)
    # The operator's default image is part of the key too: an operator upgrade with a new pinned vLLM.
    assert builders.compile_cache_key(GemmaDeployment.from_body(gemma_body), Settings(vllm_image="other:1")) != base


def test_compile_cache_key_ignores_what_compiles_nothing(gemma_body: dict[str, Any], settings: Settings) -> None:
    """Scaling, placement and annotations share one entry (a scaled-up replica loads what the first compiled)."""
    base = builders.compile_cache_key(GemmaDeployment.from_body(gemma_body), settings)
    same = [
        variant(gemma_body, replicas=5),
        variant(gemma_body, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}]),
        variant(gemma_body, podAnnotations={"a": "b"}),
        variant(gemma_body, priorityClassName="inference"),
        variant(gemma_body, vllm={"startupTimeoutSeconds": 600}),
    ]
    assert {builders.compile_cache_key(gd, settings) for gd in same} == {base}


def test_compile_cache_off_keeps_an_emptydir(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, vllm={"compileCache": {"enabled": False}})
    c = container(gd, settings)
    assert all(m["mountPath"] != builders.COMPILE_CACHE_MOUNT for m in c["volumeMounts"])
    assert all("subPath" not in m for m in c["volumeMounts"])
    assert env_of(gd, settings)["VLLM_CACHE_ROOT"] == "/tmp/vllm"
    volume = {v["name"]: v for v in pod_spec(gd, settings)["volumes"]}["model-cache"]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    annotations = builders.build_server_deployment(gd, settings)["spec"]["template"]["metadata"]["annotations"]
    assert builders.COMPILE_CACHE_ANNOTATION not in annotations


def test_compile_cache_on_a_users_volume_is_opt_in(gemma_body: dict[str, Any], settings: Settings) -> None:
    pvc = {"id": "LLM-Research/gemma-3-4b-it", "source": "pvc", "path": "gemma"}
    theirs = variant(gemma_body, model=pvc, cache={"existingClaim": "weights"})
    assert not builders.compile_cache_enabled(theirs)
    assert env_of(theirs, settings)["VLLM_CACHE_ROOT"] == "/tmp/vllm"
    opted = variant(gemma_body, model=pvc, cache={"existingClaim": "weights"}, vllm={"compileCache": {"enabled": True}})
    assert env_of(opted, settings)["VLLM_CACHE_ROOT"] == "/var/cache/vllm"
    # An existingClaim the operator downloads into is written by the download Job already: on by default.
    downloaded = variant(gemma_body, cache={"existingClaim": "weights"})
    assert builders.compile_cache_enabled(downloaded)


# --------------------------------------------------------------------------------------- disruption budget


def test_disruption_budget_only_for_more_than_one_replica(gemma_body: dict[str, Any], settings: Settings) -> None:
    assert builders.build_disruption_budget(variant(gemma_body, replicas=1)) is None
    assert builders.build_disruption_budget(variant(gemma_body, replicas=0)) is None
    gd = variant(gemma_body, replicas=3)
    pdb = builders.build_disruption_budget(gd)
    assert pdb is not None
    assert pdb["apiVersion"] == "policy/v1" and pdb["kind"] == "PodDisruptionBudget"
    assert pdb["metadata"]["name"] == gd.name and pdb["metadata"]["namespace"] == gd.namespace
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == gd.uid
    assert pdb["metadata"]["labels"][builders.MANAGED_BY_LABEL] == builders.MANAGED_BY
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # It selects exactly the server pods.
    pod_labels = builders.build_server_deployment(gd, settings)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    custom = builders.build_disruption_budget(variant(gemma_body, replicas=4, disruptionBudget={"maxUnavailable": "50%"}))
    assert custom is not None and custom["spec"]["maxUnavailable"] == "50%"


class BudgetClient:
    """Server-side apply and delete into a dict, recording both."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str, str | None]] = []

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.applied.append((manifest["kind"], meta["name"]))
        obj = copy.deepcopy(manifest)
        obj["metadata"] |= {"resourceVersion": str(len(self.applied)), "uid": f"uid-{meta['name']}-{len(self.applied)}"}
        self.objects[(manifest["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.deleted.append((kind, name, uid))
        self.objects.pop((kind, namespace, name), None)


def _no_download(gemma_body: dict[str, Any], replicas: int) -> GemmaDeployment:
    # Weights already on a claim: the servers (and so their budget) are wanted at once.
    spec = gemma_body["spec"] | {"model": gemma_body["spec"]["model"] | {"source": "pvc"},
                                 "cache": {"existingClaim": "weights"}, "replicas": replicas}
    return GemmaDeployment.from_body(gemma_body | {"spec": spec})


def test_the_reconciler_makes_the_budget_above_one_replica_and_deletes_its_own_at_one(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    client, store = BudgetClient(), Store()
    reconciler = Reconciler(client, store, settings)  # type: ignore[arg-type]
    asyncio.run(reconciler._apply_children(_no_download(gemma_body, 2), {}))
    assert ("PodDisruptionBudget", "gemma") in client.applied
    made = client.objects[("PodDisruptionBudget", "ml", "gemma")]
    store.upsert("PodDisruptionBudget", made)  # as the watch delivers it

    client.applied.clear()
    asyncio.run(reconciler._apply_children(_no_download(gemma_body, 3), {}))
    assert ("PodDisruptionBudget", "gemma") not in client.applied, "an unchanged budget is not written again"

    asyncio.run(reconciler._apply_children(_no_download(gemma_body, 1), {}))
    assert client.deleted == [("PodDisruptionBudget", "gemma", made["metadata"]["uid"])]
    store.remove("PodDisruptionBudget", made)
    asyncio.run(reconciler._apply_children(_no_download(gemma_body, 0), {}))
    assert len(client.deleted) == 1, "nothing left to delete"


def test_a_budget_the_operator_did_not_make_is_never_deleted(gemma_body: dict[str, Any], settings: Settings) -> None:
    client, store = BudgetClient(), Store()
    gd = _no_download(gemma_body, 1)
    ours = builders.build_disruption_budget(_no_download(gemma_body, 2))
    assert ours is not None
    # Our name and labels, but made by someone else (another owner, or none: e.g. copied from ours).
    for owners in ([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "x", "uid": "someone-else"}], []):
        theirs = copy.deepcopy(ours)
        theirs["metadata"] |= {"uid": "pdb-uid", "resourceVersion": "1", "ownerReferences": owners}
        store.upsert("PodDisruptionBudget", theirs)
        asyncio.run(Reconciler(client, store, settings)._apply_children(gd, {}))  # type: ignore[arg-type]
        assert client.deleted == [], owners


# ------------------------------------------------------------------------------ spread and priority class


def test_topology_spread_and_priority_class_reach_the_pod(gemma_body: dict[str, Any], settings: Settings) -> None:
    plain = pod_spec(GemmaDeployment.from_body(gemma_body), settings)
    assert "topologySpreadConstraints" not in plain and "priorityClassName" not in plain
    gd = variant(gemma_body, cache={"accessModes": ["ReadWriteMany"]}, topologySpread={},
                 priorityClassName="gpu-inference")
    pod = pod_spec(gd, settings)
    assert pod["priorityClassName"] == "gpu-inference"
    assert pod["topologySpreadConstraints"] == [{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": builders.selector_labels(gd)},
        "matchLabelKeys": ["pod-template-hash"],
    }]
    zones = variant(gemma_body, cache={"accessModes": ["ReadWriteMany"]}, topologySpread={
        "topologyKey": "topology.kubernetes.io/zone", "maxSkew": 2, "whenUnsatisfiable": "ScheduleAnyway"})
    spread = pod_spec(zones, settings)["topologySpreadConstraints"][0]
    assert (spread["topologyKey"], spread["maxSkew"], spread["whenUnsatisfiable"]) == (
        "topology.kubernetes.io/zone", 2, "ScheduleAnyway")
    # On a ReadWriteMany cache no one-node podAffinity fights the spread.
    assert "podAffinity" not in (pod.get("affinity") or {})
