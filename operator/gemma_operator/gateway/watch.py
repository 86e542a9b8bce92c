"""The gateway's view of the cluster: the operator's reflectors and store, fed by its own watches of
GemmaDeployments, their server pods and the gateway's key Secrets; every change rebuilds the table (a pure
function of the store) and swaps it in whole, so a request never sees half of an update."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import logging

from ..builders import COMPONENT_LABEL
from ..kinds import KINDS, MANAGED_BY_SELECTOR, Kind, Manifest
from ..kube import ApiError, KubeClient
from ..reflector import Reflector
from ..store import Store
from .keys import KEY_SELECTOR, grants_of
from .proxy import State
from .routes import ServerKey, routing_table

log = logging.getLogger(__name__)

SERVER_PODS = f"{MANAGED_BY_SELECTOR},{COMPONENT_LABEL}=server"


def gateway_kinds() -> list[Kind]:
    return [KINDS["GemmaDeployment"], dataclasses.replace(KINDS["Pod"], label_selector=SERVER_PODS)]


class ClusterView:
    def __init__(self, client: KubeClient, state: State, namespaces: list[str], key_namespace: str) -> None:
        self.client, self.state = client, state
        self.store = Store()
        scopes: list[str | None] = list(namespaces) or [None]
        self.reflectors = [Reflector(client, kind, ns, self._on_event, self._on_list)
                           for kind in gateway_kinds() for ns in scopes]
        keys = dataclasses.replace(KINDS["Secret"], label_selector=KEY_SELECTOR)
        self.reflectors.append(Reflector(client, keys, key_namespace, self._on_event, self._on_list))
        self._changed = asyncio.Event()

    def _on_event(self, kind: str, event_type: str, obj: Manifest) -> None:
        if event_type == "DELETED":
            self.store.remove(kind, obj)
        else:
            self.store.upsert(kind, obj)
        self._changed.set()

    def _on_list(self, kind: str, namespace: str | None, objects: list[Manifest]) -> None:
        self.store.replace(kind, namespace, objects)
        self._changed.set()

    def _objects(self, kind: str) -> list[Manifest]:
        return self.store.all(kind)

    async def run(self) -> None:
        tasks = [asyncio.create_task(r.run(), name=f"gateway-{r.kind.plural}-{r.namespace or 'all'}")
                 for r in self.reflectors]
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                await self.rebuild()
        finally:
            for task in tasks:
                task.cancel()

    async def rebuild(self) -> None:
        table = routing_table(self._objects("GemmaDeployment"), self._objects("Pod"))
        wanted = {r.server_key for r in table.routes.values() if r.server_key is not None}
        server_keys = {ref: await self._server_key(ref) for ref in wanted}
        self.state.table, self.state.grants = table, grants_of(self._objects("Secret"))
        self.state.server_keys = {ref: key for ref, key in server_keys.items() if key is not None}
        for model, others in table.conflicts.items():
            log.warning("model %s is served by %s/%s; also asked for by %s", model,
                        table.routes[model].namespace, table.routes[model].deployment, ", ".join(others))

    async def _server_key(self, ref: ServerKey) -> str | None:
        """The key a model's servers want: read when its route appears (the servers re-read it only when
        they restart, so the gateway's copy is as fresh as theirs until then)."""
        known = self.state.server_keys.get(ref)
        if known is not None:
            return known
        try:
            secret = await self.client.get("Secret", ref.namespace, ref.name)
        except ApiError as err:
            log.warning("cannot read the servers' key %s/%s: %s", ref.namespace, ref.name, err.reason)
            return None
        raw = ((secret or {}).get("data") or {}).get(ref.key)
        try:
            return base64.b64decode(raw).decode() if raw else None
        except (binascii.Error, UnicodeDecodeError):
            return None

    async def synced(self) -> None:
        await asyncio.gather(*(r.listed.wait() for r in self.reflectors))
