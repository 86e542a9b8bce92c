"""`python -m gemma_operator.gateway`: the OpenAI endpoint for every GemmaDeployment (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Callable

from aiohttp import web

from .. import httpserver, kube
from .proxy import Gateway, State
from .routes import POLICIES, PREFIX_HASH, static_table
from .watch import ClusterView

log = logging.getLogger("gemma_operator.gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gemma-gateway", description=__doc__)
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="route to the GemmaDeployments of this namespace (repeatable); default: all")
    p.add_argument("--port", type=int, default=8000, help="the OpenAI endpoint's port (default 8000)")
    p.add_argument("--http-port", type=int, default=8080, help="port of /healthz and /metrics (default 8080)")
    p.add_argument("--key-namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="where the key Secrets (label gemma.ai/gateway-key=true) are")
    p.add_argument("--no-auth", action="store_true", help="serve without API keys (trusted networks only)")
    p.add_argument("--static-route", action="append", default=[], metavar="MODEL=URL[,URL]",
                   help="route MODEL to these servers instead of watching a cluster (repeatable; implies "
                        "--no-auth): for benchmarks and servers started by hand")
    p.add_argument("--policy", choices=POLICIES, default=PREFIX_HASH, help="balancing of --static-route")
    p.add_argument("--log-level", default=os.environ.get("GEMMA_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


async def serve(state: State, port: int) -> web.AppRunner:
    runner = web.AppRunner(Gateway(state).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port, backlog=4096).start()
    log.info("gateway serving on :%d (%d models)", port, len(state.table.routes))
    return runner


async def run_static(args: argparse.Namespace) -> None:
    state = State(table=static_table(args.static_route, args.policy), auth_required=False)
    await httpserver.start(args.http_port)
    runner = await serve(state, args.port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def run(args: argparse.Namespace) -> None:
    client = kube.KubeClient(kube.login(), relogin=kube.login, connections=16)
    state = State(auth_required=not args.no_auth)
    view = ClusterView(client, state, args.namespace, args.key_namespace)
    watching = asyncio.create_task(view.run(), name="gateway-view")
    await view.synced()
    # /healthz (the readiness probe) answers only now: a gateway pod takes no request before it knows
    # the models.
    await httpserver.start(args.http_port)
    runner = await serve(state, args.port)
    try:
        await watching
    finally:
        await runner.cleanup()
        await client.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (the image has it): the data path spends most of its CPU in the event
    loop's socket handling, which uvloop does in C (docs/gateway.md, "Engine choice")."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_static(args) if args.static_route else run(args))
    except KeyboardInterrupt:
        log.info("gateway stopped by a signal")


if __name__ == "__main__":
    main()
