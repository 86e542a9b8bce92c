"""A small async Kubernetes API client: exactly the calls the operator makes, nothing more.

kopf watches; this client writes (server-side apply, status, events, deletes) and reads the few things
that are not watched (a download pod's log tail, the leader Lease). It authenticates with the same
credentials kopf logs in with.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kopf
from prometheus_client import Histogram

from . import metrics
from .settings import FIELD_MANAGER, USER_AGENT

Manifest = dict[str, Any]

API_SECONDS = Histogram(
    "gemma_operator_api_request_duration_seconds",
    "Duration of the operator client's requests to the API server, including waiting for a free connection.",
    ["verb", "resource"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# kind -> (API prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "GemmaDeployment": ("/apis/gemma.ai/v1alpha1", "gemmadeployments"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
}


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


class KubeClient:
    def __init__(self, info: kopf.ConnectionInfo, timeout: float = 30.0) -> None:
        self._server = info.server.rstrip("/")
        self._headers = info.as_http_headers() | {"User-Agent": USER_AGENT}
        ctx: ssl.SSLContext | bool = False if info.insecure else info.as_ssl_context()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, verb: str, method: str, path: str, resource: str, *,
        body: Any = None, content_type: str = "application/json", params: dict[str, str] | None = None,
    ) -> Any:
        url = self._server + path + (("?" + urlencode(params)) if params else "")
        data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        headers = self._headers | ({"Content-Type": content_type} if data is not None else {})
        metrics.API_REQUESTS.labels(verb=verb, resource=resource).inc()
        started = time.perf_counter()
        try:
            async with self._session.request(method, url, data=data, headers=headers) as resp:
                text = await resp.text()
        finally:
            API_SECONDS.labels(verb=verb, resource=resource).observe(time.perf_counter() - started)
        if resp.status >= 400:
            raise _api_error(resp.status, text)
        if resp.content_type == "application/json" and text:
            return json.loads(text)
        return text

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

    async def get(self, kind: str, namespace: str | None, name: str) -> Manifest | None:
        try:
            result: Manifest = await self._request("get", "GET", resource_path(kind, namespace, name), RESOURCES[kind][1])
            return result
        except ApiError as err:
            if err.status == 404:
                return None
            raise

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


def _api_error(status: int, text: str) -> ApiError:
    try:
        payload = json.loads(text)
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", text)))
    except ValueError:
        return ApiError(status, "", text[:500])
