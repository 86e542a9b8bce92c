"""The API-key guard of the vLLM server pods (issue 12), shipped to them in a ConfigMap.

vLLM's own check of VLLM_API_KEY guards only paths under /v1, /v2, /inference and /cohere: every other
route (POST /invocations, the SageMaker route, serves completions; /tokenize, /detokenize, /pooling,
/scale_elastic_ep, ...) answers without a key. This middleware denies by default instead: with it, a
request gets past only with `Authorization: Bearer <VLLM_API_KEY>`, except the few read-only probes in
ALLOWED, which serve no inference:

- GET /health: the kubelet's startup, readiness and liveness probes (they send no key); answers 200 with
  an empty body once the engine is up;
- GET /ping: the same health check under its SageMaker name (vLLM answers it with the /health handler);
- GET /metrics: Prometheus text (vllm:* counters and latencies by served model name) for the chart's
  PodMonitor, which scrapes without a key. It reveals load, not prompts or outputs.

HEAD of those paths is allowed as well (the same handler without a body). Anything else, whatever the
method (OPTIONS included), path or protocol (WebSocket as well as HTTP), needs the key: a new route in a
later vLLM is guarded from the day it appears. A server whose VLLM_API_KEY is empty refuses every
guarded request (it fails closed: the key was asked for).

vLLM loads it with `--middleware gemma_auth_middleware.RequireApiKey` (a class: vLLM calls
`app.add_middleware(RequireApiKey)`; added after vLLM's own middlewares, it is the outer one, so it runs
first). The ConfigMap carries this file's text as `gemma_auth_middleware.py`; it must therefore import
nothing but the standard library (the operator's image has no Starlette, the server image has no
gemma_operator).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALLOWED_PATHS = frozenset({"/health", "/ping", "/metrics"})
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
KEY_ENV = "VLLM_API_KEY"
# WebSocket close code "policy violation"; closed before accept, the server answers the upgrade with 403.
WS_POLICY_VIOLATION = 1008
UNAUTHORIZED_BODY = json.dumps({"error": {"message": "Unauthorized: a valid API key is required",
                                          "type": "Unauthorized", "code": 401}}).encode()


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class RequireApiKey:
    """Pure ASGI middleware: `Authorization: Bearer <VLLM_API_KEY>` on every route but ALLOWED_PATHS."""

    def __init__(self, app: ASGIApp, key: str | None = None) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV, "") if key is None else key
        # Compared as digests of equal length in constant time: the time taken says nothing of the key.
        self._key_digest = _digest(key.encode("utf-8")) if key else None

    def allowed_without_key(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") not in ALLOWED_METHODS:
            return False
        path = scope.get("path") or ""
        root = scope.get("root_path") or ""
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        return path in ALLOWED_PATHS

    def authorized(self, scope: Scope) -> bool:
        if self._key_digest is None:
            return False
        # The first Authorization header, as vLLM's own check reads it; ASGI header names are lower case.
        value = next((v for k, v in scope.get("headers") or () if k == b"authorization"), None)
        if value is None:
            return False
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(_digest(token), self._key_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed_without_key(scope) or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
            return
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
                (b"www-authenticate", b'Bearer realm="gemma"'),
            ],
        })
        await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
