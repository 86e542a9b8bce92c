"""`python -m gemma_operator.gateway`: the OpenAI endpoint for every GemmaDeployment (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from aiohttp import web

from .. import httpserver, kube
from .proxy import Gateway, State
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
    p.add_argument("--log-level", default=os.environ.get("GEMMA_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    client = kube.KubeClient(kube.login(), relogin=kube.login, connections=16)
    state = State(auth_required=not args.no_auth)
    view = ClusterView(client, state, args.namespace, args.key_namespace)
    watching = asyncio.create_task(view.run(), name="gateway-view")
    await httpserver.start(args.http_port)
    await view.synced()
    runner = web.AppRunner(Gateway(state).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", args.port).start()
    log.info("gateway serving on :%d (%d models)", args.port, len(state.table.routes))
    try:
        await watching
    finally:
        await runner.cleanup()
        await client.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        log.info("gateway stopped by a signal")


if __name__ == "__main__":
    main()
