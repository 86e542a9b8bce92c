"""The load generator of bench/gateway.py: streaming chat requests at a fixed concurrency, one process.

    .venv/bin/python -m bench.gateway_load --url http://127.0.0.1:8000 --concurrency 64 --requests 1024 \
        --max-seconds 45 --out run.json

With several --url, requests go round-robin over them (the "direct" target: the client balancing itself).
Each request is recorded: time to the first content chunk (TTFT), the simulated prefill the stand-in
reports in that chunk, total time, tokens, and an error if it failed (non-200, broken stream, no [DONE],
fewer tokens than --expect-tokens). Plain aiohttp, not the openai library, so the client costs little CPU;
one session with keep-alive connections; with --cancels, some clients go away mid-answer first. Warmed by one wave of --concurrency requests first. Bounded: at
most --requests, and none started after --max-seconds (per phase).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import aiohttp

WORDS = ("cluster", "replica", "prefix", "cache", "token", "stream", "gateway", "router", "model", "server",
         "request", "latency", "budget", "kernel", "tensor", "shard", "batch", "queue", "policy", "hash", "ring")
TEAMS = ("billing", "search", "support", "legal", "ads", "maps", "mail", "docs", "photos", "travel")


def system_prompt(k: int) -> str:
    """Prompt k: a distinct opening (so prefix keys differ in the first 256 characters) and ~1.5 KB of text."""
    rng = random.Random(1000 + k)
    head = f"You are assistant number {k} of the {TEAMS[k % len(TEAMS)]} team. Follow policy {k * 7919 % 1000}. "
    body = " ".join(rng.choice(WORDS) for _ in range(220))
    return head + body


def bodies(n: int, prompts: int, model: str, seed: int, max_tokens: int = 64, base: int = 0) -> list[bytes]:
    """n request bodies: a uniformly drawn shared system prompt and a distinct user turn each. `base` picks
    another set of prompts (prompts base..base+prompts-1), so that a run finds none of an earlier run's in a cache."""
    systems = [system_prompt(base + k) for k in range(prompts)]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": systems[rng.randrange(prompts)]},
                    {"role": "user", "content": f"Question {i}: " + " ".join(rng.choice(WORDS) for _ in range(12))}]
        out.append(json.dumps({"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens}).encode())
    return out


@dataclass
class Record:
    ttft_ms: float | None = None
    prefill_ms: float | None = None
    total_ms: float = 0.0
    tokens: int = 0
    error: str | None = None


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    started: int = 0


def first_prefill(line: bytes) -> float | None:
    """The stand-in's simulated prefill from the first chunk (None when a proxy dropped the field)."""
    try:
        value = json.loads(line[6:]).get("x_prefill_ms")
    except ValueError:
        return None
    return float(value) if isinstance(value, (int, float)) else None


async def one(session: aiohttp.ClientSession, url: str, body: bytes, expect: int) -> Record:
    rec = Record()
    t0 = time.perf_counter()
    done = False
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                rec.error = f"http {resp.status}"
            else:
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    if line.startswith(b"data: [DONE]"):
                        # Read on to the end of the body, as the openai library does: leaving before the
                        # chunked terminator would close the connection under the proxy's last write.
                        done = True
                        continue
                    rec.tokens += 1
                    if rec.ttft_ms is None and (b'"content":"' in line or b'"text":"' in line):
                        rec.ttft_ms = (time.perf_counter() - t0) * 1000
                        rec.prefill_ms = first_prefill(line)
                if not done:
                    rec.error = "no [DONE]"
                elif rec.tokens < expect:
                    rec.error = "short answer"
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:  # recorded, not fatal
        rec.error = type(err).__name__
    rec.total_ms = (time.perf_counter() - t0) * 1000
    return rec


async def phase(s: aiohttp.ClientSession, urls: list[str], payloads: list[bytes], args: argparse.Namespace) -> Run:
    """The payloads at --concurrency; no request started after --max-seconds."""
    run_ = Run()
    ticket = count()
    deadline = time.perf_counter() + args.max_seconds

    async def worker() -> None:
        while (i := next(ticket)) < len(payloads) and time.perf_counter() < deadline:
            run_.started += 1
            run_.records.append(await one(s, urls[i % len(urls)], payloads[i], args.expect_tokens))

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return run_


async def cancel(s: aiohttp.ClientSession, url: str, body: bytes, after: int) -> None:
    """A client that goes away mid-answer (a user pressing stop): it closes after `after` chunks."""
    async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        seen = 0
        async for line in resp.content:
            seen += line.startswith(b"data: ")
            if seen >= after:
                resp.close()
                return


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # The warm-up (one wave, other user turns) opens the connections and fills the stand-ins' caches the
    # way this target routes; then only the counts are reset, and the driver takes its /proc readings.
    warmup_n = args.concurrency if args.warmup < 0 else args.warmup
    payloads = bodies(args.requests + warmup_n, args.prompts, args.model, args.seed, args.max_tokens, args.prompt_base)
    warm, measured = payloads[args.requests:], payloads[:args.requests]
    urls = [u.rstrip("/") + "/v1/chat/completions" for u in args.url]
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)) as s:
        for url in args.reset_url:
            await (await s.post(url.rstrip("/") + "/reset")).read()
        warmup = await phase(s, urls, warm, args)
        for i in range(args.cancels if warm else 0):
            await cancel(s, urls[i % len(urls)], warm[i % len(warm)], args.cancel_after)
        for url in args.reset_url:
            await (await s.post(url.rstrip("/") + "/reset?counters=1")).read()
        print("MEASURE", flush=True)  # the driver reads the processes' CPU time now
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        run_ = await phase(s, urls, measured, args)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        print("DONE", flush=True)
    return {
        "concurrency": args.concurrency, "requests_planned": args.requests, "started": run_.started,
        "warmup_errors": sum(1 for r in warmup.records if r.error),
        "wall_seconds": wall, "cut_by_time": run_.started < args.requests,
        "client_cpu_seconds": cpu, "client_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "records": [[_r(r.ttft_ms), r.prefill_ms, _r(r.total_ms), r.tokens, r.error] for r in run_.records],
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.gateway_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", action="append", required=True, help="a base URL (repeatable: round-robin)")
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=45.0, help="start no request after this")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--prompts", type=int, default=32, help="distinct shared system prompts")
    p.add_argument("--expect-tokens", type=int, default=1)
    p.add_argument("--model", default="gemma")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--reset-url", action="append", default=[],
                   help="a stand-in to reset before the warm-up (all) and after it (counts only)")
    p.add_argument("--cancels", type=int, default=0,
                   help="after the warm-up, this many requests whose client goes away mid-answer")
    p.add_argument("--cancel-after", type=int, default=3, help="chunks a cancelling client reads")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--prompt-base", type=int, default=0, help="use system prompts base..base+prompts-1")
    p.add_argument("--warmup", type=int, default=-1,
                   help="warm-up requests before the measured ones (default: one wave of --concurrency)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
