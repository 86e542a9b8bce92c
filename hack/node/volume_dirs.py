"""The node side of the local cluster's storage class "standard": makes each volume's directory.

    python3 volume_dirs.py KUBECTL KUBECONFIG VOLUME_ROOT

KWOK's stage gemma-pvc-provision creates a hostPath PersistentVolume for each claim, but a stage
cannot make a directory, and the kubelet would make a missing one root-owned with mode 0755, which
the operator's pods (uid 1000, restricted) cannot write. So this agent, one of the real node's
daemons (hack/node.sh), watches the PersistentVolumes and gives each one under VOLUME_ROOT its
directory with mode 0777 (as local-path-provisioner does), and removes the directory when the
volume is deleted (the class's reclaim policy is Delete). The volumes' type is Directory: a pod
scheduled before its directory exists waits for it instead of getting a root-owned one.
Standard library only (it runs on the host's Python).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def watch_events(kubectl: str, kubeconfig: str) -> Iterator[dict]:
    """Events of `kubectl get pv --watch` (a list as ADDED events first); ends when kubectl does."""
    cmd = [kubectl, "--kubeconfig", kubeconfig, "get", "persistentvolumes", "--watch",
           "--output-watch-events", "-o", "json", "--request-timeout=0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    decoder, buffer = json.JSONDecoder(), ""
    for chunk in iter(lambda: proc.stdout.readline(), ""):
        buffer += chunk
        while buffer.strip():
            try:
                event, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break  # an event split over lines: read on
            buffer = buffer.lstrip()[end:]
            yield event
    proc.wait()


def volume_path(pv: dict, root: Path) -> Path | None:
    path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
    if not path:
        return None
    resolved = Path(path).resolve()
    return resolved if resolved.parent == root else None


def handle(event: dict, root: Path) -> None:
    pv = event.get("object") or {}
    path = volume_path(pv, root)
    if path is None:
        return
    if event.get("type") == "DELETED":
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}", flush=True)
    elif not path.is_dir():
        path.mkdir(mode=0o777)
        os.chmod(path, 0o777)  # mkdir's mode is masked by the umask
        print(f"made {path}", flush=True)


def main() -> None:
    kubectl, kubeconfig, root = sys.argv[1], sys.argv[2], Path(sys.argv[3]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    while True:
        for event in watch_events(kubectl, kubeconfig):
            handle(event, root)
        time.sleep(1)  # the watch ended (API server restarted, say): list and watch again


if __name__ == "__main__":
    main()
