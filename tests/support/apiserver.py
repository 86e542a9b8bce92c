"""Stop and start the local cluster's kube-apiserver, to test that the operator rides out an outage."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support.kube import LOCAL_CLUSTER_DIR

PID_FILE = LOCAL_CLUSTER_DIR / "kwok" / "clusters" / "gemma" / "pids" / "kube-apiserver.pid"
LOG_FILE = LOCAL_CLUSTER_DIR / "kwok" / "clusters" / "gemma" / "logs" / "kube-apiserver.log"


class ApiServer:
    """The running kube-apiserver of hack/cluster.sh, restartable with its exact command line."""

    def __init__(self) -> None:
        self.pid = _find_pid()
        proc = Path(f"/proc/{self.pid}")
        self.argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        self.env = dict(
            item.decode().split("=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item
        )
        self.cwd = os.readlink(proc / "cwd")

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        for _ in range(300):
            if not Path(f"/proc/{self.pid}").exists() or _is_zombie(self.pid):
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)

    def start(self) -> None:
        with open(LOG_FILE, "ab") as log:
            proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.pid = proc.pid
        PID_FILE.write_text(f"{proc.pid}\n")  # hack/cluster.sh status and down follow the pid file


def _find_pid() -> int:
    """The live kube-apiserver of the local cluster (the pid file can be stale after a restart)."""
    binary = str(LOCAL_CLUSTER_DIR / "kwok" / "clusters" / "gemma" / "bin" / "kube-apiserver")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            continue
        if argv0 == binary and not _is_zombie(int(proc.name)):
            return int(proc.name)
    raise RuntimeError(f"no running {binary}")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
