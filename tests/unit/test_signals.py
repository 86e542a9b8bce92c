"""The operator process stops cleanly on SIGTERM (the kubelet's stop): its cleanup runs, which is what hands
the leader Lease over at once. Without a handler the process dies at once with status 143, Lease held."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.support.kube import wait_for
from tests.support.operator import REPO, free_port

# An API server that refuses every connection: the operator starts, its watches back off, nothing else.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_sigterm_runs_the_cleanup_and_exits_zero(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_operator", "--http-port", str(port), "--namespace", "x"],
        cwd=REPO / "operator", env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: healthy(port), timeout=30, message="the operator's /healthz")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-2000:]
    assert "operator stopped by a signal" in out
