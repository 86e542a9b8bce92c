#!/usr/bin/env python3
"""Completion tokens per second of a running vLLM OpenAI server (bounded: a fixed number of requests).

    python bench/serving_tokens_per_second.py --base-url http://127.0.0.1:8000/v1 --requests 16 --concurrency 4

Each request asks for exactly --max-tokens tokens (temperature 0, ignore_eos, a vLLM extension), so the
count does not depend on what a (random) model says. Prints one human line and one JSON line:
completion tokens per second over the wall time of all requests, and the mean latency of a request.
Standard library only; the server is only ever the one given (loopback in the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def one_request(url: str, headers: dict[str, str], body: dict, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        payload = json.load(resp)
    return int(payload["usage"]["completion_tokens"]), time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"))
    p.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "Gemma3-4b"))
    p.add_argument("--prompt", default="San Francisco is a")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--timeout", type=float, default=120, help="seconds, per request")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64:
        p.error("--requests must be in 1..10000 and --concurrency in 1..64")

    url = args.base_url.rstrip("/") + "/completions"
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"}
    body = {
        "model": args.model,
        "prompt": args.prompt,
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    one_request(url, headers, dict(body, max_tokens=4), args.timeout)  # warm-up, not counted

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(
            pool.map(lambda _: one_request(url, headers, body, args.timeout), range(args.requests))
        )
    wall = time.monotonic() - start
    tokens = sum(t for t, _ in results)
    result = {
        "completion_tokens_per_second": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "wall_seconds": round(wall, 3),
        "mean_request_seconds": round(statistics.mean(s for _, s in results), 3),
    }
    print(
        f"{result['completion_tokens_per_second']} completion tokens/s ({tokens} tokens, {args.requests} "
        f"requests, concurrency {args.concurrency}, {wall:.2f} s)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
