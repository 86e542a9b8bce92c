"""`python -m gemma_operator`: run the operator for all namespaces or the ones given."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys

import aiohttp

from . import httpserver, kube
from .kinds import optional_kinds, watched_kinds
from .leader import LeaderElector
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("gemma_operator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gemma-operator", description=__doc__)
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="watch only this namespace (repeatable); default: all namespaces")
    p.add_argument("--http-port", type=int, default=int(os.environ.get("GEMMA_HTTP_PORT", "8080")),
                   help="port of /healthz and /metrics (default 8080)")
    p.add_argument("--leader-election", action="store_true",
                   default=os.environ.get("GEMMA_LEADER_ELECTION", "") == "true",
                   help="act only while holding a Lease (for more than one replica)")
    p.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    p.add_argument("--leader-election-id", default="gemma-operator-leader")
    p.add_argument("--workers", type=int, default=None, help="concurrent reconcile passes (default 32)")
    p.add_argument("--log-level", default=os.environ.get("GEMMA_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    # SIGTERM (the kubelet stopping the pod) cancels the run, so that _serve's cleanup stops the workers
    # and hands the Lease over at once; without a handler the process would die holding it.
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    settings = Settings(**({"workers": args.workers} if args.workers else {}))
    # Connections: one per watch (a kind in a namespace), and two per worker (a pass applies the Service
    # and the Deployment together), so that no pass waits for a connection that a watch holds.
    every_kind = frozenset(k.name for k in optional_kinds())
    watches = len(watched_kinds(every_kind)) * max(1, len(args.namespace))
    client = kube.KubeClient(kube.login(), relogin=kube.login, connections=watches + 2 * settings.workers + 8)
    try:
        await _serve(args, settings, client)
    finally:
        await client.close()


async def discover(client: kube.KubeClient) -> frozenset[str]:
    """The optional kinds (CRDs of other projects) the API server serves; asked again, with backoff, while
    the API server cannot be reached: nothing can be done without it, and /healthz answers meanwhile."""
    delay = 0.5
    while True:
        try:
            available = frozenset([k.name for k in optional_kinds() if await client.serves(k.name)])
        except (kube.ApiError, aiohttp.ClientError, TimeoutError, OSError) as err:
            log.warning("discovery failed (%s); asking again in %.1fs", err, delay)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
            continue
        if available:
            log.info("the API server serves %s: the operator creates them too", ", ".join(sorted(available)))
        return available


async def _serve(args: argparse.Namespace, settings: Settings, client: kube.KubeClient) -> None:
    await httpserver.start(args.http_port)
    settings = dataclasses.replace(settings, available_kinds=await discover(client))
    tasks: list[asyncio.Task[None]] = []
    elector: LeaderElector | None = None
    if args.leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(client, args.leader_election_namespace, args.leader_election_id, identity)
        await elector.acquire()
        tasks.append(asyncio.create_task(elector.keep(), name="leader-lease"))
    runtime = Runtime(client, settings)
    tasks += runtime.start_reflectors(args.namespace)
    try:
        synced = asyncio.create_task(runtime.caches_synced())
        await asyncio.wait([synced, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if synced.done():
            log.info("caches synced; starting %d workers", settings.workers)
            tasks += runtime.start_workers()
        else:
            synced.cancel()
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise LeadershipLost or a crash so the process exits non-zero
    finally:
        # Stop acting first, then hand the Lease over: the standby must not start while a worker of this
        # replica may still write.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if elector is not None:
            await elector.release()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log.info("operator stopped by a signal")
    except Exception as err:  # noqa: BLE001
        log.error("operator stopped: %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
