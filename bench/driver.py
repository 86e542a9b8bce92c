"""The load of the scale benchmark, in its own process: it applies (or patches) N GemmaDeployments, and in
`floor` mode also applies their children itself, exactly as the operator's builders render them.

    python -m bench.driver create      --namespace NS --n N [--concurrency C]   # the input: N GDs
    python -m bench.driver floor       --namespace NS --n N                     # N GDs + their children
    python -m bench.driver patch       --namespace NS --n N --max-model-len L   # the fan-out input
    python -m bench.driver floor-patch --namespace NS --n N --max-model-len L   # patch + apply Deployments

--namespace may be repeated: GemmaDeployment i goes to the (i mod K)-th of the K namespaces (names stay
unique across them).

The floor is the least any controller has to do for the same result: one server-side apply per child, sent
as soon as the GemmaDeployment exists (its uid is needed for the owner reference), with no watch, no cache,
no status. Prints one JSON line: start and end (wall clock), requests sent, CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

from gemma_operator import builders
from gemma_operator.settings import Settings
from gemma_operator.spec import API_VERSION, KIND, GemmaDeployment

from bench.kubeapi import Client, gather_bounded

Manifest = dict[str, Any]
USER_AGENT = "gemma-bench-driver"
CLAIM = "bench-models"
RESOURCE_NAME = "bench.gemma.ai/gpu"
TAINT_KEY = "bench.gemma.ai/dedicated"


def gd_name(i: int) -> str:
    return f"gd-{i:04d}"


def gemma_deployment(namespace: str, i: int, max_model_len: int) -> Manifest:
    """A GemmaDeployment whose model is already on a shared volume (source pvc): children are a Deployment
    and a Service, and the server pods land on the benchmark's own nodes only."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": gd_name(i), "namespace": namespace, "labels": {"gemma.ai/bench": "true"}},
        "spec": {
            "model": {"id": "LLM-Research/gemma-3-4b-it", "source": "pvc"},
            "servedModelName": "Gemma3-4b",
            "maxModelLen": max_model_len,
            "cache": {"existingClaim": CLAIM},
            "gpu": {"resourceName": RESOURCE_NAME},
            "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def children(body: Manifest, settings: Settings, deployment_only: bool = False) -> list[Manifest]:
    gd = GemmaDeployment.from_body(body)
    deployment = builders.build_server_deployment(gd, settings)
    return [deployment] if deployment_only else [builders.build_service(gd), deployment]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    async with Client(USER_AGENT, limit=args.concurrency) as client:

        def ns(i: int) -> str:
            return str(args.namespace[i % len(args.namespace)])

        async def create(i: int) -> None:
            body = await client.apply(gemma_deployment(ns(i), i, args.max_model_len))
            if args.mode == "floor":
                for child in children(body, settings):
                    await client.apply(child)

        async def patch(i: int) -> None:
            body = await client.merge_patch(KIND, ns(i), gd_name(i), {"spec": {"maxModelLen": args.max_model_len}})
            if args.mode == "floor-patch":
                for child in children(body, settings, deployment_only=True):
                    await client.apply(child)

        one = create if args.mode in ("create", "floor") else patch
        started = time.time()
        await gather_bounded([one(i) for i in range(args.n)], args.concurrency)
        ended = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "mode": args.mode, "n": args.n, "started": started, "ended": ended, "requests": client.requests,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024,
        }


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.driver")
    p.add_argument("mode", choices=["create", "floor", "patch", "floor-patch"])
    p.add_argument("--namespace", required=True, action="append", help="repeatable: GDs go round-robin")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--concurrency", type=int, default=32)
    print(json.dumps(asyncio.run(run(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
