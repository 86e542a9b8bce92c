"""A fast OpenAI-compatible stand-in for one vLLM server, for bench/gateway.py (issue 13).

    .venv/bin/python -m bench.gateway_standin --port 9101 [--tokens 32] [--delay-ms 5] [--miss-ms 20] [--hit-ms 2]

It answers POST /v1/chat/completions and /v1/completions (streaming SSE or not) with `--tokens` tokens,
`--delay-ms` apart, after a simulated prefill. It keeps an LRU of the prompt prefixes it has seen (the first
256 characters of what the model reads first) standing for vLLM's prefix cache: a hit prefills in
`--hit-ms`, a miss in `--miss-ms`. The first chunk carries the prefill it simulated (`x_prefill_ms`) so the
load generator can subtract it and compare proxies on what they add. GET /stats gives the hit counts,
POST /reset empties the LRU and the counts (?counters=1: the counts only). Built to cost little CPU: the chunks are pre-encoded bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PREFIX_CHARS = 256


@dataclass
class Config:
    tokens: int = 32
    delay: float = 0.005
    miss: float = 0.020
    hit: float = 0.002
    capacity: int = 16
    model: str = "gemma"


@dataclass
class Stats:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    renders: int = 0  # /render and /tokenize calls (a router's, not the client's)
    unknown_paths: dict[str, int] = field(default_factory=dict)


def prefix_of(body: dict[str, Any]) -> str:
    """What a prefix cache would match on first: the messages in order (role and text), or the prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        text = "".join(f"{m.get('role', '')}:{m.get('content', '')}\n" for m in messages if isinstance(m, dict))
        return text[:PREFIX_CHARS]
    return str(body.get("prompt") or "")[:PREFIX_CHARS]


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class StandIn:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = Stats()
        self.lru: OrderedDict[bytes, None] = OrderedDict()
        self.words = [f"tok{i} " for i in range(config.tokens)]
        self.vocab: dict[str, int] = {}

    def seen(self, prefix: str) -> bool:
        """Look the prefix up in the LRU and insert it: True on a hit."""
        key = hashlib.blake2b(prefix.encode(), digest_size=8).digest()
        if key in self.lru:
            self.lru.move_to_end(key)
            self.stats.hits += 1
            return True
        self.stats.misses += 1
        self.lru[key] = None
        if len(self.lru) > self.config.capacity:
            self.lru.popitem(last=False)
        return False

    def chunk(self, chat: bool, i: int, prefill_ms: float | None = None, finish: str | None = None) -> bytes:
        word = self.words[i] if i < len(self.words) else ""
        if chat:
            delta: dict[str, Any] = {"content": word} if prefill_ms is None else {"role": "assistant", "content": word}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0,
                   "model": self.config.model, "choices": [choice]}
        else:
            obj = {"id": "cmpl-standin", "object": "text_completion", "created": 0, "model": self.config.model,
                   "choices": [{"index": 0, "text": word, "finish_reason": finish}]}
        if prefill_ms is not None:
            obj["x_prefill_ms"] = prefill_ms
        return sse(obj)

    async def complete(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        chat = request.path.endswith("/chat/completions")
        hit = self.seen(prefix_of(body))
        prefill = self.config.hit if hit else self.config.miss
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            await asyncio.sleep(prefill)
            if body.get("stream"):
                return await self.stream(request, chat, prefill * 1000)
            await asyncio.sleep(self.config.delay * (self.config.tokens - 1))
            return web.json_response(self.whole(chat))
        finally:
            self.stats.in_flight -= 1

    async def stream(self, request: web.Request, chat: bool, prefill_ms: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        n = self.config.tokens
        for i in range(n):
            if i:
                await asyncio.sleep(self.config.delay)
            last = i == n - 1
            await response.write(self.chunk(chat, i, prefill_ms if i == 0 else None, "stop" if last else None))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def whole(self, chat: bool) -> dict[str, Any]:
        text = "".join(self.words)
        usage = {"prompt_tokens": 0, "completion_tokens": self.config.tokens, "total_tokens": self.config.tokens}
        if chat:
            return {"id": "chatcmpl-standin", "object": "chat.completion", "created": 0, "model": self.config.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}], "usage": usage}
        return {"id": "cmpl-standin", "object": "text_completion", "created": 0, "model": self.config.model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}

    def token_ids(self, text: str) -> list[int]:
        """A stand-in tokenizer: one id per whitespace-separated word, the same in every stand-in (the
        replicas of a model share its tokenizer; a router may compare ids from one with another's)."""
        vocab = self.vocab
        ids = []
        for word in text.split():
            token = vocab.get(word)
            if token is None:
                token = vocab[word] = zlib.crc32(word.encode()) % 262144
            ids.append(token)
        return ids

    async def render(self, request: web.Request) -> web.Response:
        """vLLM's POST /v1/chat/completions/render and /v1/completions/render: the prompt's token ids.
        vllm-router's cache_aware policy asks a worker for them to match prefixes; without this endpoint
        it routes without the prefix (it logs "render_unavailable")."""
        self.stats.renders += 1
        body = await request.json()
        text = "".join(f"<{m.get('role', '')}> {m.get('content', '')} " for m in body.get("messages") or []
                       if isinstance(m, dict)) or str(body.get("prompt") or "")
        return web.json_response({"token_ids": self.token_ids(text), "features": None})

    async def tokenize(self, request: web.Request) -> web.Response:
        self.stats.renders += 1
        body = await request.json()
        ids = self.token_ids(str(body.get("prompt") or ""))
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": 4096})

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.config.model, "object": "model", "owned_by": "standin", "max_model_len": 4096}]})

    async def get_stats(self, _: web.Request) -> web.Response:
        s = self.stats
        return web.json_response({"requests": s.requests, "hits": s.hits, "misses": s.misses,
                                  "in_flight": s.in_flight, "max_in_flight": s.max_in_flight,
                                  "cached_prefixes": len(self.lru), "renders": s.renders, "unknown_paths": s.unknown_paths})

    async def reset(self, request: web.Request) -> web.Response:
        """Zero the counts; also empty the LRU unless ?counters=1 (after a warm-up that filled it)."""
        if request.query.get("counters") != "1":
            self.lru.clear()
        self.stats = Stats(in_flight=self.stats.in_flight)
        return web.json_response({"ok": True})

    async def unknown(self, request: web.Request) -> web.Response:
        # Counted, so the benchmark can tell what a router asks the servers for besides the model routes.
        key = f"{request.method} {request.path}"
        self.stats.unknown_paths[key] = self.stats.unknown_paths.get(key, 0) + 1
        return web.json_response({"error": {"message": f"not found: {key}"}}, status=404)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions/render", self.render)
        app.router.add_post("/v1/completions/render", self.render)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/reset", self.reset)
        app.router.add_route("*", "/{path:.*}", self.unknown)
        return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.gateway_standin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--miss-ms", type=float, default=20.0)
    p.add_argument("--hit-ms", type=float, default=2.0)
    p.add_argument("--cache", type=int, default=16, help="prefixes the LRU holds")
    p.add_argument("--model", default="gemma")
    args = p.parse_args(argv)
    config = Config(tokens=args.tokens, delay=args.delay_ms / 1000, miss=args.miss_ms / 1000,
                    hit=args.hit_ms / 1000, capacity=args.cache, model=args.model)
    print(f"stand-in on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    web.run_app(StandIn(config).app(), host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=4096)


if __name__ == "__main__":
    main()
