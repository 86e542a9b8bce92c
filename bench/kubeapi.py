"""A small asyncio Kubernetes client for the benchmark: apply, create, patch, list, watch.

Credentials come from the kubeconfig the way the operator's own come (kopf's login), but the User-Agent is
the benchmark's, so that the API server's audit log tells the benchmark's requests from the operator's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any, Self
from urllib.parse import quote, urlencode

import aiohttp
import kopf
from gemma_operator import kube as operator_kube

Manifest = dict[str, Any]

# kind -> (API prefix, plural): the operator's own table, plus the kinds only the benchmark touches.
RESOURCES: dict[str, tuple[str, str]] = operator_kube.RESOURCES | {
    "Namespace": ("/api/v1", "namespaces"),
    "Node": ("/api/v1", "nodes"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
}
FIELD_MANAGER = "gemma-bench"


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:300]}")
        self.status = status


def path_of(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    path = prefix + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


class Client:
    """One aiohttp session; `limit` bounds the concurrent connections (and so the requests in flight)."""

    def __init__(self, user_agent: str, limit: int = 32, timeout: float = 60.0) -> None:
        settings = kopf.OperatorSettings()
        info = kopf.login_with_kubeconfig(settings=settings)
        if info is None:
            raise SystemExit("no kubeconfig: set KUBECONFIG (eval \"$(hack/cluster.sh env)\")")
        self.server = info.server.rstrip("/")
        self.headers = info.as_http_headers() | {"User-Agent": user_agent}
        ctx = False if info.insecure else info.as_ssl_context()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        self.requests = 0

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json",
        params: dict[str, str] | None = None, ok404: bool = False,
    ) -> Any:
        url = self.server + path + (("?" + urlencode(params)) if params else "")
        data = None if body is None else json.dumps(body)
        headers = self.headers | ({"Content-Type": content_type} if data is not None else {})
        self.requests += 1
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status == 404 and ok404:
                return None
            if resp.status >= 400:
                raise ApiError(resp.status, text)
            return json.loads(text) if text and resp.content_type == "application/json" else text

    async def apply(self, manifest: Manifest, manager: str = FIELD_MANAGER) -> Manifest:
        meta = manifest["metadata"]
        path = path_of(manifest["kind"], meta.get("namespace"), meta["name"])
        result: Manifest = await self.request(
            "PATCH", path, manifest, "application/apply-patch+yaml", {"fieldManager": manager, "force": "true"}
        )
        return result

    async def merge_patch(self, kind: str, namespace: str | None, name: str, patch: Manifest) -> Manifest:
        result: Manifest = await self.request(
            "PATCH", path_of(kind, namespace, name), patch, "application/merge-patch+json"
        )
        return result

    async def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        result: Manifest | None = await self.request("GET", path_of(kind, namespace, name), ok404=True)
        return result

    async def delete(self, kind: str, namespace: str | None, name: str) -> None:
        await self.request("DELETE", path_of(kind, namespace, name), ok404=True,
                           body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})

    async def list(self, kind: str, namespace: str | None = None, params: dict[str, str] | None = None) -> Manifest:
        result: Manifest = await self.request("GET", path_of(kind, namespace), params=params)
        return result

    async def watch(
        self, kind: str, namespace: str | None, resource_version: str, timeout_seconds: int = 1800,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[Manifest]:
        """Watch events from resource_version, until the server ends the watch."""
        query = {"watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds)} | (params or {})
        url = self.server + path_of(kind, namespace) + "?" + urlencode(query)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 60)
        async with self.session.get(url, headers=self.headers, timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


async def gather_bounded(coros: list[Any], limit: int) -> list[Any]:
    """Run coroutines with at most `limit` at once; returns results (exceptions are raised)."""
    sem = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with sem:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


def kubeconfig() -> str:
    path = os.environ.get("KUBECONFIG")
    if not path:
        raise SystemExit("KUBECONFIG is not set")
    return path
