"""The gateway's data path in one process, against stand-in OpenAI servers on 127.0.0.1: routing by model
under mixed concurrent traffic, streaming passed through, keys, errors, and a replica that dies mid-answer
taken out of rotation. (The gateway on the real node, in front of vLLM, is an e2e test of its own.)"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
from aiohttp import web

from gemma_operator.gateway.keys import grants_of
from gemma_operator.gateway.proxy import Gateway, State
from gemma_operator.gateway.routes import Backend, Route, ServerKey, Table


def secret(name: str, key: str, models: str | None = None) -> dict[str, Any]:
    data = {"key": key} | ({"models": models} if models else {})
    return {"metadata": {"name": name, "namespace": "gemma-system"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def stand_in(name: str, seen: list[dict[str, Any]], die_after: int | None = None,
             delay: float = 0.0) -> web.Application:
    """An OpenAI server that answers as `name`; streams 5 chunks `delay` s apart; dies mid-stream after
    `die_after` chunks."""
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"server": name, "model": body["model"], "auth": request.headers.get("Authorization")})
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": name}}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(5):
            if die_after is not None and i == die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": f"{name}{i} "}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(delay)
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def route(model: str, urls: list[str], **kw: Any) -> Route:
    return Route(model, "ml", model.lower(), tuple(Backend(f"{model}-{i}", u) for i, u in enumerate(urls)),
                 "Ready", "", "", **kw)


Scenario = Callable[[str, State, list[dict[str, Any]], list[str]], Awaitable[None]]


def run(scenario: Scenario, servers: int = 3, die_after: dict[int, int] | None = None,
        auth: bool = False, delay: float = 0.0) -> None:
    async def main() -> None:
        seen: list[dict[str, Any]] = []
        async with serving(stand_in("s0", seen, (die_after or {}).get(0), delay)) as s0, \
                serving(stand_in("s1", seen, (die_after or {}).get(1), delay)) as s1, \
                serving(stand_in("s2", seen, (die_after or {}).get(2), delay)) as s2:
            urls = [s0, s1, s2][:servers]
            state = State(auth_required=auth)
            async with serving(Gateway(state).app()) as gateway:
                await scenario(gateway, state, seen, urls)
    asyncio.run(main())


def test_mixed_concurrent_traffic_reaches_only_the_servers_of_each_model() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        state.table = Table({"Gemma3-4b": route("Gemma3-4b", urls[:2]), "Other": route("Other", urls[2:])})
        client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused")
        models = ["Gemma3-4b", "Other"] * 100
        answers = await asyncio.gather(*(client.chat.completions.create(
            model=m, messages=[{"role": "user", "content": f"q{i}"}]) for i, m in enumerate(models)))
        by_model = collections.defaultdict(set)
        for model, answer in zip(models, answers):
            by_model[model].add(answer.choices[0].message.content)
        assert by_model == {"Gemma3-4b": {"s0", "s1"}, "Other": {"s2"}}, "misrouted requests"
        listed = await client.models.list()
        assert [m.id for m in listed.data] == ["Gemma3-4b", "Other"]
        await client.close()
    run(scenario)


def test_a_stream_passes_through_whole_and_the_servers_key_is_sent_not_the_callers() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        ref = ServerKey("ml", "vllm-key", "key")
        state.table = Table({"Gemma3-4b": route("Gemma3-4b", urls[:1], server_key=ref)})
        state.server_keys = {ref: "sk-server"}
        state.grants = grants_of([secret("caller", "sk-caller", "Gemma3-4b")])
        state.auth_required = True
        client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="sk-caller")
        stream = await client.chat.completions.create(model="Gemma3-4b", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text == "s00 s01 s02 s03 s04 "
        assert seen[-1]["auth"] == "Bearer sk-server"
        await client.close()
    run(scenario, servers=1)


async def _post(gateway: str, body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.post(f"{gateway}/v1/chat/completions", json=body,
                                                    headers=headers) as r:
        return r.status, dict(r.headers), await r.json()


def test_errors_say_what_is_wrong_in_openai_json() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        down = Route("Starting", "ml", "starting", (), "Downloading 42%", "Downloading", "2 of 5 files")
        state.table = Table({"Gemma3-4b": route("Gemma3-4b", urls[:1]), "Starting": down})
        state.grants = grants_of([secret("caller", "sk-caller", "Gemma3-4b,Starting")])
        state.auth_required = True
        msg = {"messages": [{"role": "user", "content": "hi"}]}
        status, _, body = await _post(gateway, {"model": "Gemma3-4b", **msg})
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        status, _, body = await _post(gateway, {"model": "Gemma3-4b", **msg}, key="sk-wrong")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        state.grants = grants_of([secret("caller", "sk-caller", "Starting")])
        status, _, body = await _post(gateway, {"model": "Gemma3-4b", **msg}, key="sk-caller")
        assert status == 403 and "Starting" in body["error"]["message"]
        state.grants = grants_of([secret("caller", "sk-caller")])
        status, _, body = await _post(gateway, {"model": "Gema3", **msg}, key="sk-caller")
        assert status == 404 and "Gemma3-4b, Starting" in body["error"]["message"]
        status, headers, body = await _post(gateway, {"model": "Starting", **msg}, key="sk-caller")
        assert status == 503 and headers["Retry-After"] == "10"
        assert "Downloading 42%: Downloading 2 of 5 files" in body["error"]["message"]
        assert seen == [], "no refused request reached a server"
    run(scenario, servers=1)


def test_a_replica_that_dies_mid_answer_is_taken_out_of_rotation_at_once() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        state.table = Table({"Gemma3-4b": route("Gemma3-4b", urls[:2])})
        client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
        broken = 0
        for i in range(6):  # s0 breaks every stream after 2 chunks; after the first break it gets none
            stream = await client.chat.completions.create(model="Gemma3-4b", stream=True,
                                                          messages=[{"role": "user", "content": f"q{i}"}])
            try:
                _ = [c async for c in stream]
            except openai.APIError:
                broken += 1
        servers = [s["server"] for s in seen]
        assert broken == 1, "the cut answer reaches the client as an error, not as a short answer"
        assert servers.count("s0") == 1, servers
        assert servers.count("s1") >= 5
        assert list(state.ejected) == [urls[0]]
        await client.close()
    run(scenario, servers=2, die_after={0: 2})


def test_a_replica_that_refuses_connections_is_skipped_and_the_request_retried_on_another() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        dead = "http://127.0.0.1:9"  # nothing listens on the discard port
        state.table = Table({"Gemma3-4b": Route("Gemma3-4b", "ml", "g", (Backend("dead", dead),
                                                Backend("live", urls[0])), "Ready", "", "")})
        statuses = [(await _post(gateway, {"model": "Gemma3-4b", "messages": []}))[0] for _ in range(10)]
        assert statuses == [200] * 10 and len(seen) == 10
    run(scenario, servers=1)


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_requests_errors_and_the_added_latency_per_model() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        state.table = Table({"Metered": route("Metered", urls[:1])})
        before = {"ok": _sample("gemma_gateway_requests_total", model="Metered", code="200"),
                  "unknown": _sample("gemma_gateway_errors_total", model="-", error="model_not_found"),
                  "timed": _sample("gemma_gateway_added_latency_seconds_count", model="Metered")}
        for i in range(3):
            assert (await _post(gateway, {"model": "Metered", "messages": [{"role": "user", "content": str(i)}]}))[0] == 200
        assert (await _post(gateway, {"model": f"nonsense-{id(state)}", "messages": []}))[0] == 404
        assert _sample("gemma_gateway_requests_total", model="Metered", code="200") - before["ok"] == 3
        assert _sample("gemma_gateway_added_latency_seconds_count", model="Metered") - before["timed"] == 3
        # An unknown model counts under "-": callers cannot grow the label set.
        assert _sample("gemma_gateway_errors_total", model="-", error="model_not_found") - before["unknown"] == 1
        assert _sample("gemma_gateway_in_flight_requests", model="Metered") == 0
    run(scenario, servers=1)


def test_a_client_that_leaves_mid_stream_does_not_take_the_replica_out_of_rotation() -> None:
    async def scenario(gateway: str, state: State, seen: list[dict[str, Any]], urls: list[str]) -> None:
        state.table = Table({"Gemma3-4b": route("Gemma3-4b", urls[:2])})
        body = {"model": "Gemma3-4b", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        gone = _sample("gemma_gateway_client_disconnects_total", model="Gemma3-4b")
        for _ in range(3):  # each reads the first chunk, then hangs up
            async with aiohttp.ClientSession() as s, s.post(f"{gateway}/v1/chat/completions", json=body) as r:
                assert (await r.content.readline()).startswith(b"data: ")
        await asyncio.sleep(0.3)  # the stand-in's next chunks meet the closed client (0.05 s apart)
        assert state.ejected == {}, "a client hanging up is not the replica's failure"
        assert _sample("gemma_gateway_client_disconnects_total", model="Gemma3-4b") - gone >= 1
        statuses = [(await _post(gateway, {"model": "Gemma3-4b", "messages": []}))[0] for _ in range(6)]
        assert statuses == [200] * 6 and state.ejected == {}
    run(scenario, servers=2, delay=0.05)
