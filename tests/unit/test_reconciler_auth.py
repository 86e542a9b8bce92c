"""Issue 12: the reconciler applies the API-key guard's ConfigMap before the Deployment whose pods mount it,
and writes nothing when it is already as wanted (also after a restart, from a cold cache)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from gemma_operator import builders
from gemma_operator.reconciler import Reconciler
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment
from gemma_operator.store import Store


class FakeClient:
    """Server-side apply into a dict; records the writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []
        self.version = 0

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.applied.append((manifest["kind"], meta["name"]))
        self.version += 1
        obj = copy.deepcopy(manifest)
        obj["metadata"] |= {"resourceVersion": str(self.version), "uid": f"uid-{self.version}"}
        self.objects[(manifest["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None


def keyed(gemma_body: dict[str, Any]) -> GemmaDeployment:
    # Weights already on a claim: no download, so the servers are wanted at once.
    spec = gemma_body["spec"] | {"model": gemma_body["spec"]["model"] | {"source": "pvc"},
                                 "cache": {"existingClaim": "weights"},
                                 "apiKeySecretRef": {"name": "keys", "key": "openai"}}
    return GemmaDeployment.from_body(gemma_body | {"spec": spec})


def test_the_guard_is_applied_before_the_deployment_and_only_once(
    gemma_body: dict[str, Any], settings: Settings
) -> None:
    gd, client = keyed(gemma_body), FakeClient()
    reconciler = Reconciler(client, Store(), settings)  # type: ignore[arg-type]
    asyncio.run(reconciler._apply_children(gd, {}))
    kinds = [kind for kind, _ in client.applied]
    assert ("ConfigMap", "gemma-auth") in client.applied
    assert kinds.index("ConfigMap") < kinds.index("Deployment")
    cm = client.objects[("ConfigMap", "ml", "gemma-auth")]
    assert cm["data"] == builders.build_auth_configmap(gd)["data"]  # type: ignore[index]
    assert cm["metadata"]["ownerReferences"] == [builders.owner_reference(gd)]

    client.applied.clear()
    asyncio.run(reconciler._apply_children(gd, {}))
    assert client.applied == [], "a pass over an unchanged object writes nothing"

    # After a restart the cache is empty (the operator may not watch ConfigMaps): a look, no write.
    restarted = Reconciler(client, Store(), settings)  # type: ignore[arg-type]
    asyncio.run(restarted._apply_children(gd, {}))
    assert client.applied == []


def test_without_a_key_there_is_no_configmap(gemma_body: dict[str, Any], settings: Settings) -> None:
    body = copy.deepcopy(gemma_body)
    body["spec"] |= {"model": body["spec"]["model"] | {"source": "pvc"}, "cache": {"existingClaim": "weights"}}
    client = FakeClient()
    asyncio.run(Reconciler(client, Store(), settings)._apply_children(  # type: ignore[arg-type]
        GemmaDeployment.from_body(body), {}))
    assert "ConfigMap" not in [kind for kind, _ in client.applied]
    assert "Deployment" in [kind for kind, _ in client.applied]
