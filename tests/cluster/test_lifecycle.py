"""hack/cluster.sh up / status / down (issue 2, acceptance 6 and 7).

This runs a second, private cluster (GEMMA_CLUSTER_DIR in a temporary directory,
GEMMA_CLUSTER_NAME unique) next to the shared one, so that stopping it cannot disturb the
session ``cluster`` fixture or anybody else using .cluster/. It needs the tools built (up
builds what is missing) and is skipped when KUBECONFIG points at another cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.support.kube import (
    CLUSTER_SCRIPT,
    REPO_ROOT,
    Cluster,
    external_kubeconfig,
    tool_env,
    wait_for,
)

COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok-controller",
)

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        external_kubeconfig() is not None,
        reason="tests hack/cluster.sh, not the KUBECONFIG cluster",
    ),
]


def processes_under(directory: Path) -> dict[int, str]:
    """pid -> command line of the live processes started from files under ``directory``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (
                (entry / "cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmdline.startswith(str(directory) + "/"):
            found[int(entry.name)] = cmdline
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_is_fast_and_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    cluster_dir = tmp_path / "cluster"
    env = dict(
        os.environ,
        GEMMA_CLUSTER_DIR=str(cluster_dir),
        GEMMA_CLUSTER_NAME=f"lifecycle-{uuid.uuid4().hex[:6]}",
        # One real node per machine: its veth, addresses and node name are fixed (hack/node.sh), and the
        # shared cluster has it. The private cluster is the control plane and KWOK nodes only.
        GEMMA_REAL_NODE="0",
    )
    env.pop("KUBECONFIG", None)

    def script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), *args],
            check=False,
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # The tools are built (and cached) first so that `up` below measures a warm start.
    build = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "build-tools.sh"), "all"],
        check=False,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
    )
    assert build.returncode == 0, build.stderr[-3000:]

    assert script("status").returncode == 1
    procs: dict[int, str] = {}
    server_port = 0
    try:
        started = time.monotonic()
        up = script("up")
        elapsed = time.monotonic() - started
        assert up.returncode == 0, up.stderr[-3000:]
        assert elapsed <= 60, f"warm up took {elapsed:.1f}s"

        kubeconfig = cluster_dir / "kubeconfig"
        private = Cluster(
            kubeconfig=str(kubeconfig), env=tool_env(str(kubeconfig), env), local=True
        )
        nodes = private.kubectl_json("get", "nodes")["items"]
        assert len(nodes) == 3
        assert all(
            c["status"] == "True"
            for n in nodes
            for c in n["status"]["conditions"]
            if c["type"] == "Ready"
        )

        procs = processes_under(cluster_dir)
        names = {Path(cmd.split()[0]).name for cmd in procs.values()}
        assert names == set(COMPONENTS), procs
        print(
            f"\nwarm up: {elapsed:.1f}s; control plane RSS: "
            + ", ".join(
                f"{Path(c.split()[0]).name} {rss_kib(p) // 1024} MiB"
                for p, c in sorted(procs.items())
            )
            + f"; total {sum(rss_kib(p) for p in procs) // 1024} MiB"
        )

        status = script("status")
        assert status.returncode == 0 and "is up" in status.stdout, (
            status.stdout + status.stderr
        )

        # A second `up` reuses the running cluster: same processes, same kubeconfig.
        again = script("up")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "reusing" in again.stderr
        assert set(processes_under(cluster_dir)) == set(procs)

        # Every listening socket of the cluster, from its kubeconfig and its kwokctl config.
        server_port = int(
            private.kubectl(
                "config", "view", "-o", "jsonpath={.clusters[0].cluster.server}"
            ).stdout.rsplit(":", 1)[1]
        )
        assert port_open(server_port)
        env_out = script("env").stdout
        assert f"export KUBECONFIG={kubeconfig}" in env_out
    finally:
        down = script("down")
    assert down.returncode == 0, down.stderr[-3000:]

    # Nothing of it is left running or listening.
    assert processes_under(cluster_dir) == {}
    for pid in procs:
        assert (
            not Path(f"/proc/{pid}").exists()
            or Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        )
    if server_port:
        wait_for(
            lambda: not port_open(server_port),
            timeout=10,
            message=f"port {server_port} closed",
        )
    assert not kubeconfig.exists()
    assert script("status").returncode == 1
