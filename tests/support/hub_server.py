"""A stand-in ModelScope hub that serves a model directory, for pods on the real node.

    python -m tests.support.hub_server --model-dir DIR --model-id LLM-Research/gemma-3-4b-it \
        [--revision master] [--host 10.250.0.1] [--port 0] [--bytes-per-second N] [--url-file PATH]

The real `modelscope` client in the download Job's pod downloads from it as it would from
modelscope.cn (tests/download/hubs.py implements the hub's API). The real node's pods reach the host
at 10.250.0.1, the host's end of the node's veth (hack/node.sh). `--bytes-per-second` slows the
transfer down so that a download lasts long enough to be watched. The URL is printed (and written to
--url-file) once the hub listens; it serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.download.hubs import ModelScopeHub, Repo

REAL_NODE_HOST_IP = "10.250.0.1"  # hack/node.sh: HOST_IP


def repo_from_dir(model_dir: Path) -> Repo:
    """Every file under `model_dir` (hidden files, such as a manifest, excluded)."""
    files = {
        str(p.relative_to(model_dir)): p.read_bytes()
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    }
    if "config.json" not in files:
        raise SystemExit(f"{model_dir} has no config.json: not a model directory")
    return Repo(files)


def model_hub(model_dir: Path, model_id: str, revision: str = "master", host: str = REAL_NODE_HOST_IP,
              port: int = 0) -> ModelScopeHub:
    return ModelScopeHub({model_id: {revision: repo_from_dir(model_dir)}}, host=host, port=port)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="hub_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--revision", default="master")
    p.add_argument("--host", default=REAL_NODE_HOST_IP)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bytes-per-second", type=int, default=0)
    p.add_argument("--url-file", type=Path)
    args = p.parse_args(argv)
    hub = model_hub(args.model_dir, args.model_id, args.revision, args.host, args.port)
    if args.bytes_per_second:
        hub.faults.throttle_bps = args.bytes_per_second
    hub.start()
    if args.url_file:
        args.url_file.write_text(hub.url + "\n")
    print(hub.url, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    hub.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
