"""The operator's one async Kubernetes API client: exactly the calls the operator makes, nothing more.

It lists and watches (for the reflectors), writes (server-side apply, status, events, deletes) and reads
the few things that are not watched (a download pod's log tail, the leader Lease). Credentials come from
kopf's login helpers; on a 401 the client logs in again once and repeats the request, because projected
service-account tokens rotate under a running process.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf
from prometheus_client import Histogram

from . import metrics
from .kinds import KINDS, Manifest
from .settings import FIELD_MANAGER, USER_AGENT

log = logging.getLogger(__name__)

API_SECONDS = Histogram(
    "gemma_operator_api_request_duration_seconds",
    "Duration of the operator client's requests to the API server, including waiting for a free connection.",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# kind -> (API prefix, plural), from the one registry of kinds
RESOURCES: dict[str, tuple[str, str]] = {k.name: (k.api, k.plural) for k in KINDS.values()}


class ApiError(Exception):
    """The API server refused a request; `message` is its own explanation."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def login() -> kopf.ConnectionInfo:
    """In-cluster service account first, then the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no credentials: not in a cluster and no kubeconfig (set KUBECONFIG)")
    return info


def resource_path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    prefix, plural = RESOURCES[kind]
    path = prefix + (f"/namespaces/{quote(namespace)}" if namespace else "") + f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    if sub:
        path += f"/{sub}"
    return path


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): only a new list can continue."""


class KubeClient:
    def __init__(self, info: kopf.ConnectionInfo, timeout: float = 30.0,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None, connections: int = 64) -> None:
        self._server = info.server.rstrip("/")
        self._headers = self._headers_of(info)
        self._relogin = relogin
        ctx: ssl.SSLContext | bool = False if info.insecure else info.as_ssl_context()
        self._session = aiohttp.ClientSession(
            # HTTP/1.1: one connection per request in flight; a watch holds one for as long as it lasts.
            connector=aiohttp.TCPConnector(ssl=ctx, limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    @staticmethod
    def _headers_of(info: kopf.ConnectionInfo) -> dict[str, str]:
        return info.as_http_headers() | {"User-Agent": USER_AGENT}

    def _login_again(self) -> bool:
        """New credentials after a 401 (a rotated token file); False when there is nothing to reload."""
        if self._relogin is None:
            return False
        headers = self._headers_of(self._relogin())
        if headers == self._headers:
            return False
        log.info("the API server refused the credentials (401); logged in again with new ones")
        self._headers = headers
        return True

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, verb: str, method: str, path: str, resource: str, *,
        body: Any = None, content_type: str = "application/json", params: dict[str, str] | None = None,
    ) -> Any:
        url = self._server + path + (("?" + urlencode(params)) if params else "")
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        status, text, json_type = await self._send(verb, method, url, resource, data, content_type)
        if status == 401 and self._login_again():
            status, text, json_type = await self._send(verb, method, url, resource, data, content_type)
        if status >= 400:
            raise _api_error(status, text)
        if json_type and text:
            return json.loads(text)
        return text

    async def _send(self, verb: str, method: str, url: str, resource: str, data: str | None,
                    content_type: str) -> tuple[int, str, bool]:
        headers = self._headers | ({"Content-Type": content_type} if data is not None else {})
        metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
        started = time.perf_counter()
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                return resp.status, await resp.text(), resp.content_type == "application/json"
        finally:
            API_SECONDS.labels(verb=verb, resource=resource).observe(time.perf_counter() - started)

    async def list(self, kind: str, namespace: str | None, label_selector: str = "",
                   page_size: int = 500) -> tuple[list[Manifest], str]:
        """Every object of a kind (in pages), and the list's resourceVersion to watch from."""
        items: list[Manifest] = []
        params = {"limit": str(page_size)} | ({"labelSelector": label_selector} if label_selector else {})
        while True:
            page: Manifest = await self._request("list", "GET", resource_path(kind, namespace), RESOURCES[kind][1],
                                                 params=params)
            # Items of a list carry no kind or apiVersion; the cache keeps whole objects, as a watch gives them.
            items += [{"apiVersion": page.get("apiVersion", ""), "kind": kind} | item for item in page.get("items") or []]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items, str((page.get("metadata") or {}).get("resourceVersion") or "")
            params = params | {"continue": token}

    async def watch(self, kind: str, namespace: str | None, resource_version: str, label_selector: str = "",
                    timeout_seconds: int = 300) -> AsyncIterator[Manifest]:
        """Watch events from `resource_version` until the server ends the stream; bookmarks included.
        Raises WatchExpired when the version is too old."""
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)} | ({"labelSelector": label_selector} if label_selector else {})
        url = self._server + resource_path(kind, namespace) + "?" + urlencode(params)
        metrics.API_REQUESTS.labels(verb="watch", resource=RESOURCES[kind][1]).inc()
        # No total limit: the stream lasts timeoutSeconds; a silent one is cut after a margin.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout_seconds + 30)
        for attempt in range(2):
            async with self._session.get(url, headers=self._headers, timeout=timeout) as resp:
                if resp.status == 401 and attempt == 0 and self._login_again():
                    continue
                if resp.status == 410:
                    raise WatchExpired(await resp.text())
                if resp.status >= 400:
                    raise _api_error(resp.status, await resp.text())
                async for event in _json_lines(resp.content):
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        if status.get("code") == 410:
                            raise WatchExpired(str(status.get("message") or ""))
                        raise ApiError(int(status.get("code") or 500), str(status.get("reason") or ""),
                                       str(status.get("message") or ""))
                    yield event
                return

    async def apply(self, manifest: Manifest, force: bool = True) -> Manifest:
        """Server-side apply with the operator's one field manager."""
        meta = manifest["metadata"]
        path = resource_path(manifest["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        result: Manifest = await self._request(
            "apply", "PATCH", path, RESOURCES[manifest["kind"]][1],
            body=manifest, content_type="application/apply-patch+yaml", params=params,
        )
        return result

    async def patch_status(self, kind: str, namespace: str, name: str, status: Manifest) -> Manifest:
        path = resource_path(kind, namespace, name, "status")
        result: Manifest = await self._request(
            "patch", "PATCH", path, RESOURCES[kind][1] + "/status",
            body={"status": status}, content_type="application/merge-patch+json",
        )
        return result

    async def patch(self, kind: str, namespace: str, name: str, patch: Manifest) -> Manifest:
        """A JSON merge patch (lists are replaced whole), e.g. the owner references of a shared model cache."""
        result: Manifest = await self._request(
            "patch", "PATCH", resource_path(kind, namespace, name), RESOURCES[kind][1],
            body=patch, content_type="application/merge-patch+json",
        )
        return result

    async def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            result: Manifest = await self._request("get", "GET", resource_path(kind, namespace, name), RESOURCES[kind][1])
            return result
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def serves(self, kind: str) -> bool:
        """Whether the API server serves `kind` (its group-version's discovery document lists it): for the
        kinds of CRDs that may not be installed."""
        prefix, plural = RESOURCES[kind]
        try:
            found: Manifest = await self._request("discover", "GET", prefix, plural)
        except ApiError as err:
            if err.status in (403, 404):
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    async def create(self, kind: str, namespace: str | None, body: Manifest) -> Manifest:
        result: Manifest = await self._request("create", "POST", resource_path(kind, namespace), RESOURCES[kind][1], body=body)
        return result

    async def replace(self, kind: str, namespace: str | None, name: str, body: Manifest) -> Manifest:
        path = resource_path(kind, namespace, name)
        result: Manifest = await self._request("update", "PUT", path, RESOURCES[kind][1], body=body)
        return result

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete one object; with uid, only that very object (never a namesake made since)."""
        body: Manifest = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("delete", "DELETE", resource_path(kind, namespace, name), RESOURCES[kind][1], body=body)
        except ApiError as err:
            if err.status not in (404, 409):
                raise

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int = 5,
                           previous: bool = False) -> str:
        """The last `lines` lines of a container's log; with `previous`, of its run before the last restart."""
        path = resource_path("Pod", namespace, pod, "log")
        params = {"container": container, "tailLines": str(lines)} | ({"previous": "true"} if previous else {})
        text: str = await self._request("get", "GET", path, "pods/log", params=params)
        return text


async def _json_lines(stream: aiohttp.StreamReader) -> AsyncIterator[Manifest]:
    """One JSON document per line; lines of any length (aiohttp's own line reader stops at 64 KiB)."""
    buffer = b""
    async for chunk in stream.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _api_error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", text)))
    except ValueError:
        return ApiError(status, "", text[:500])
