"""Helpers of the node tests: GemmaDeployments on the real node, client pods, probes from the host.

The host reaches pod IPs through the real node's veth (hack/node.sh routes the pod network there), which
lets a test see what a server answers while the kubelet decides about its readiness.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.e2e.gemma_helpers import is_ready, server_pods
from tests.support import kube
from tests.support.kube import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
Manifest = dict[str, Any]


def seed(name: str = "gemma", **spec: Any) -> Manifest:
    """gemma.yaml (the seed resource) as it is, or with spec fields replaced."""
    body: Manifest = copy.deepcopy(yaml.safe_load((REPO / "gemma.yaml").read_text()))
    body["metadata"]["name"] = name
    body["spec"] |= spec
    return body


def gemma(cluster: kube.Cluster, ns: str, name: str = "gemma") -> Manifest:
    return cluster.get("gemmadeployment", name, ns) or {}


def condition(obj: Manifest, ctype: str) -> Manifest:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def wait_phase(cluster: kube.Cluster, ns: str, phase: str, name: str = "gemma", timeout: float = 600,
               fail_on: tuple[str, ...] = ()) -> Manifest:
    """Wait for `phase`; with `fail_on`, stop at once when the Degraded condition has one of those reasons
    (a server that crash-loops will not become Ready: say why now, not after the timeout)."""
    def reached() -> Manifest | None:
        g = gemma(cluster, ns, name)
        if g.get("status", {}).get("phase") == phase or condition(g, "Degraded").get("reason") in fail_on:
            return g
        return None

    found = wait_for(reached, timeout=timeout, interval=1,
                     message=f"GemmaDeployment {ns}/{name} phase {phase}: " + describe(cluster, ns, name))
    assert found["status"]["phase"] == phase, f"{ns}/{name} is {found['status']['phase']}: {condition(found, 'Degraded')}"
    return found


def wait_condition(cluster: kube.Cluster, ns: str, ctype: str, reason: str, name: str = "gemma",
                   timeout: float = 300) -> Manifest:
    def reached() -> Manifest | None:
        cond = condition(gemma(cluster, ns, name), ctype)
        return cond if cond.get("reason") == reason else None

    return wait_for(reached, timeout=timeout, interval=1,
                    message=f"{ctype} reason {reason} on {ns}/{name}: " + describe(cluster, ns, name))


def describe(cluster: kube.Cluster, ns: str, name: str = "gemma") -> str:
    """The status conditions, for failure messages (computed when the message is built)."""
    try:
        st = gemma(cluster, ns, name).get("status") or {}
        return f"phase {st.get('phase')}; " + "; ".join(
            f"{c['type']}={c['status']} {c.get('reason')}: {c.get('message', '')[:300]}" for c in st.get("conditions", []))
    except Exception as err:  # noqa: BLE001 - only for a message
        return f"(status unreadable: {err})"


def pods(cluster: kube.Cluster, ns: str, selector: str) -> list[Manifest]:
    items = cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def container_status(pod: Manifest, name: str = "vllm") -> Manifest:
    return next((c for c in (pod.get("status") or {}).get("containerStatuses") or [] if c["name"] == name), {})


def health(pod_ip: str, path: str = "/health", timeout: float = 2) -> int:
    """HTTP status of a server pod's port 8000, asked from the host; 0 when nothing answers."""
    try:
        return requests.get(f"http://{pod_ip}:8000{path}", timeout=timeout).status_code
    except requests.RequestException:
        return 0


@dataclass
class Sample:
    at: float
    pod: str
    ready: bool
    health: int


class Poller:
    """Calls `poll` in a background thread every `interval` seconds until `stop`, which returns what was
    recorded. A failed kubectl call or a half-written answer is only a missed sample."""

    interval = 0.3

    def __init__(self) -> None:
        self.recorded: list[Any] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def poll(self) -> None:
        raise NotImplementedError

    def record_change(self, value: Any) -> None:
        if not self.recorded or self.recorded[-1] != value:
            self.recorded.append(value)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.poll()
            except (kube.KubectlError, subprocess.TimeoutExpired, json.JSONDecodeError):
                pass
            self._stopped.wait(self.interval)

    def stop(self) -> list[Any]:
        self._stopped.set()
        self._thread.join(timeout=10)
        return self.recorded


class ReadinessSampler(Poller):
    """Each server pod's Ready condition and what its /health answers, as `Sample`s."""

    interval = 0.5

    def __init__(self, cluster: kube.Cluster, ns: str, name: str = "gemma") -> None:
        self.cluster, self.ns, self.name = cluster, ns, name
        super().__init__()

    def poll(self) -> None:
        for pod in server_pods(self.cluster, self.ns, self.name):
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                self.recorded.append(Sample(time.monotonic(), pod["metadata"]["name"], is_ready(pod), health(ip)))


class ColumnWatcher(Poller):
    """Every value one printer column of `kubectl get gemma` shows."""

    def __init__(self, cluster: kube.Cluster, ns: str, column: str = "PROGRESS", name: str = "gemma") -> None:
        self.cluster, self.ns, self.column, self.name = cluster, ns, column, name
        super().__init__()

    def poll(self) -> None:
        proc = self.cluster.kubectl("get", "gemma", self.name, "-n", self.ns, check=False, timeout=20)
        lines = proc.stdout.splitlines()
        if proc.returncode == 0 and len(lines) == 2:
            header, row = lines[0].split(), lines[1].split()
            if self.column in header and len(row) == len(header):
                self.record_change(row[header.index(self.column)])


def examples_configmap(cluster: kube.Cluster, ns: str, name: str = "examples") -> str:
    """examples/ as a ConfigMap, for client pods."""
    files = ["curl_examples.sh", "vllm_openai_completions.py", "vllm_openai_chat_completions.py"]
    args = ["create", "configmap", name, "-n", ns, "--dry-run=client", "-o", "yaml"]
    args += [f"--from-file={EXAMPLES / f}" for f in files]
    cluster.kubectl("apply", "-f", "-", input=cluster.kubectl(*args).stdout)
    return name


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}


def client_pod(name: str, image: str, script: str, env: dict[str, str] | None = None,
               configmap: str = "examples") -> Manifest:
    """A pod that runs `script` (bash) with examples/ at /examples, under the restricted security context."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": image, "command": ["bash", "-c", script],
                "env": [{"name": k, "value": v} for k, v in (env or {}).items()] + [{"name": "HOME", "value": "/tmp"}],
                "securityContext": RESTRICTED_CONTAINER,
                "volumeMounts": [{"name": "examples", "mountPath": "/examples"}, {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "examples", "configMap": {"name": configmap}}, {"name": "tmp", "emptyDir": {}}],
        },
    }


def run_client(cluster: kube.Cluster, ns: str, pod: Manifest, timeout: float = 300) -> str:
    """Create the client pod, wait for it to finish, return its log; fails with the log when it failed."""
    name = pod["metadata"]["name"]
    cluster.kubectl("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=true")
    cluster.apply(pod, namespace=ns)
    done = wait_for(lambda: (p := cluster.get("pod", name, ns)) and p["status"].get("phase") in ("Succeeded", "Failed") and p,
                    timeout=timeout, interval=1, message=f"client pod {ns}/{name} to finish")
    log = cluster.kubectl("logs", name, "-n", ns, timeout=60).stdout
    assert done["status"]["phase"] == "Succeeded", f"client pod {name} failed:\n{log[-4000:]}"
    return log


def json_lines(text: str) -> list[Manifest]:
    """The JSON objects among the lines of a log (the examples print each response as one line)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def kill_server_process(cluster: kube.Cluster, pod: Manifest) -> None:
    """SIGKILL the vLLM container's main process from the node (what the OOM killer or a crash does)."""
    container_id = container_status(pod)["containerID"].split("://", 1)[1]
    subprocess.run(["bash", str(REPO / "hack" / "node.sh"), "ctr", "tasks", "kill", "-s", "SIGKILL", container_id],
                   check=True, capture_output=True, text=True, timeout=60, env=cluster.env)


def volume_dir(cluster: kube.Cluster, ns: str, claim: str) -> Path:
    """Where the claim's volume lives on the host (the local cluster's hostPath volumes)."""
    pvc = cluster.get("pvc", claim, ns)
    assert pvc and pvc["status"].get("phase") == "Bound", pvc
    pv = cluster.get("pv", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


class ReasonWatcher(Poller):
    """Every (phase, reason of one condition) a GemmaDeployment goes through: the short-lived states between
    two waits (a restart that heals within seconds) are seen too."""

    def __init__(self, cluster: kube.Cluster, ns: str, name: str = "gemma", ctype: str = "Degraded") -> None:
        self.cluster, self.ns, self.name, self.ctype = cluster, ns, name, ctype
        super().__init__()

    def poll(self) -> None:
        obj = gemma(self.cluster, self.ns, self.name)
        self.record_change(((obj.get("status") or {}).get("phase", ""), condition(obj, self.ctype).get("reason", "")))
