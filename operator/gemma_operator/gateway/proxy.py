"""The gateway's data path: authenticate, read `model`, pick a replica, stream the answer back.

The table, grants and server keys are replaced whole by the watch (watch.py); a request reads the ones in
place when it arrives. A replica that fails to connect, or breaks off mid-answer, is taken out of rotation
at once for EJECT_SECONDS (its pod's readiness takes it out for good when the kubelet sees it); a request
whose replica failed before any byte was sent is tried once more on another replica.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from . import errors
from . import metrics as m
from .balancer import Balancer, prefix_key
from .keys import Grant, bearer, grant_for
from .routes import Backend, Route, ServerKey, Table

EJECT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 10
# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the gateway sets itself.
DROPPED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                     "transfer-encoding", "upgrade", "host", "authorization", "content-length"})
MODEL_ROUTES = ("/v1/", "/tokenize", "/detokenize")


@dataclass
class State:
    table: Table = field(default_factory=Table)
    grants: dict[bytes, Grant] = field(default_factory=dict)
    server_keys: dict[ServerKey, str] = field(default_factory=dict)
    auth_required: bool = True
    ejected: dict[str, float] = field(default_factory=dict)  # backend URL -> monotonic time it may return


class Gateway:
    def __init__(self, state: State, balancer: Balancer | None = None) -> None:
        self.state = state
        self.balancer = balancer or Balancer()
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # No limit: the servers bound their own concurrency; keep-alive connections are reused.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                                             auto_decompress=False, skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("*", "/{path:.*}", self.handle)
        app.on_startup.append(lambda _: self.start())
        app.on_cleanup.append(lambda _: self.close())
        return app

    def _caller(self, request: web.Request) -> Grant | None | errors.GatewayError:
        if not self.state.auth_required:
            return None
        key = bearer(request.headers.get("Authorization"))
        if key is None:
            return errors.missing_key()
        return grant_for(self.state.grants, key) or errors.wrong_key()

    async def models(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        if isinstance(caller, errors.GatewayError):
            return _counted("", _error(caller))
        data = [{"id": r.model, "object": "model", "owned_by": "gemma-operator", "root": r.parent or r.model,
                 "parent": r.parent, "ready": r.ready}
                for r in sorted(self.state.table.routes.values(), key=lambda r: r.model)
                if caller is None or caller.allows(r.model)]
        return web.json_response({"object": "list", "data": data})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        label, response = await self._answer(request)
        return _counted(label, response)

    async def _answer(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        """The model label of the metrics (known names only) and the answer."""
        received = time.perf_counter()
        caller = self._caller(request)
        if isinstance(caller, errors.GatewayError):
            return "", _error(caller)
        if request.method != "POST" or not request.path.startswith(MODEL_ROUTES):
            return "", _error(errors.not_found(request.path))
        raw = await request.read()
        body = _json(raw)
        model = body.get("model") if body else None
        if not isinstance(model, str) or not model:
            return "", _error(errors.no_model(request.path))
        route = self.state.table.routes.get(model)
        label = model if route is not None else m.UNKNOWN
        if caller is not None and not caller.allows(model):
            return label, _error(errors.model_not_allowed(model, self._allowed(caller)), label)
        if route is None:
            return label, _error(errors.unknown_model(model, self._allowed(caller)), label)
        in_flight = m.IN_FLIGHT.labels(model)
        in_flight.inc()
        try:
            return label, await self._forward(request, route, raw, prefix_key(body or {}), received)
        finally:
            in_flight.dec()

    def _allowed(self, caller: Grant | None) -> list[str]:
        """The models the caller may use, for an error that lists them (never on the way of a request)."""
        return sorted(name for name in self.state.table.routes if caller is None or caller.allows(name))

    def _ejected(self) -> frozenset[str]:
        now = time.monotonic()
        for url in [u for u, until in self.state.ejected.items() if until <= now]:
            del self.state.ejected[url]
        return frozenset(self.state.ejected)

    async def _forward(self, request: web.Request, route: Route, raw: bytes, key: str,
                       received: float) -> web.StreamResponse:
        tried: set[str] = set()
        detail = "no ready replica"
        for _ in range(2):
            backend = self.balancer.pick(route.backends, route.policy, key, self._ejected() | tried)
            if backend is None:
                break
            tried.add(backend.url)
            self.balancer.started(backend)
            try:
                response = await self._stream(request, route, backend, raw, received)
            except (aiohttp.ClientConnectionError, TimeoutError) as err:
                self.state.ejected[backend.url] = time.monotonic() + EJECT_SECONDS
                m.UPSTREAM_FAILURES.labels(route.model, "connect").inc()
                detail = f"{backend.pod}: {type(err).__name__}"
                continue
            finally:
                self.balancer.finished(backend)
            return response
        if not route.backends:
            return _error(errors.not_ready(route, RETRY_AFTER_SECONDS), route.model)
        return _error(errors.upstream_failed(route, detail), route.model)

    def _headers(self, request: web.Request, route: Route) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        if route.server_key is not None:
            headers["Authorization"] = f"Bearer {self.state.server_keys.get(route.server_key, '')}"
        return headers

    async def _stream(self, request: web.Request, route: Route, backend: Backend, raw: bytes,
                      received: float) -> web.StreamResponse:
        """Connection failures before the answer starts raise (the caller tries another replica). A break
        of the replica's answer after it started ejects the replica and cuts the client's connection; a
        client that leaves is not the replica's fault: the answer ends there and the replica stays."""
        assert self.session is not None
        url = backend.url + request.path_qs
        sending = time.perf_counter()
        async with self.session.post(url, data=raw, headers=self._headers(request, route)) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in DROPPED})
            if upstream.content_length is not None and "chunked" not in upstream.headers.get("Transfer-Encoding", ""):
                response.content_length = upstream.content_length
            try:
                await response.prepare(request)
                first = True
                while chunk := await self._read(upstream, request, route, backend):
                    read = time.perf_counter()
                    await response.write(chunk)
                    if first:
                        # The gateway's own share of the first token's way: before the request left, and
                        # from the replica's first bytes to the client's socket.
                        m.ADDED_SECONDS.labels(route.model).observe((sending - received) + (time.perf_counter() - read))
                        first = False
                await response.write_eof()
            except _CutByReplica:
                pass
            except ConnectionResetError:
                # The client left (aiohttp raises ClientConnectionResetError, a ConnectionResetError):
                # leaving `async with` closes the replica's connection, so vLLM stops generating.
                m.CLIENT_GONE.labels(route.model).inc()
            return response

    async def _read(self, upstream: aiohttp.ClientResponse, request: web.Request, route: Route,
                    backend: Backend) -> bytes:
        try:
            return await upstream.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            self.state.ejected[backend.url] = time.monotonic() + EJECT_SECONDS
            m.UPSTREAM_FAILURES.labels(route.model, "mid-answer").inc()
            # Cut the client's connection too, without the last chunk: a clean end would pass a cut
            # answer off as a whole one (the client's HTTP library raises on it instead).
            if request.transport is not None:
                request.transport.abort()
            raise _CutByReplica from None


class _CutByReplica(Exception):
    """The replica broke off its answer (it is ejected; the client's connection is cut)."""


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _error(error: errors.GatewayError, model: str = "") -> web.Response:
    m.ERRORS.labels(model, error.code).inc()
    return web.Response(status=error.status, body=error.body(), headers=error.headers())


def _counted(model: str, response: web.StreamResponse) -> web.StreamResponse:
    m.REQUESTS.labels(model, str(response.status)).inc()
    return response
