"""Helpers of the e2e tests: apply a GemmaDeployment, read its status, wait for it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tests.support import kube
from tests.support.kube import wait_for

REPO = Path(__file__).resolve().parents[2]
Manifest = dict[str, Any]


def seed(**spec: Any) -> Manifest:
    """gemma.yaml, with spec fields replaced."""
    body: Manifest = yaml.safe_load((REPO / "gemma.yaml").read_text())
    body = copy.deepcopy(body)
    body["spec"] |= spec
    return body


def status(cluster: kube.Cluster, ns: str, name: str = "gemma") -> Manifest:
    obj = cluster.get("gemmadeployment", name, ns) or {}
    return dict(obj.get("status") or {})


def condition(st: Manifest, ctype: str) -> Manifest:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), {})


def wait_phase(cluster: kube.Cluster, ns: str, phase: str, name: str = "gemma", timeout: float = 60) -> Manifest:
    return wait_for(lambda: (st := status(cluster, ns, name)).get("phase") == phase and st,
                    timeout=timeout, message=f"GemmaDeployment {ns}/{name} phase {phase}")


def server_pods(cluster: kube.Cluster, ns: str, name: str = "gemma") -> list[Manifest]:
    pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l",
                                f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: Manifest) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def ready_pods(cluster: kube.Cluster, ns: str, name: str = "gemma") -> list[Manifest]:
    return [p for p in server_pods(cluster, ns, name) if is_ready(p)]


def _simulated_gpu_nodes(cluster: kube.Cluster) -> dict[str, int]:
    """The KWOK GPU nodes (hack/cluster/nodes.yaml) and their GPUs. The real node (hack/node.sh) is left
    out: it is tainted, so the e2e tests' pods never land there, and what runs there (a demo's server, the
    node tests) must not change what these tests count."""
    nodes = cluster.kubectl_json("get", "nodes", "-l", "type=kwok")["items"]
    return {n["metadata"]["name"]: int((n["status"].get("allocatable") or {}).get("nvidia.com/gpu", 0)) for n in nodes}


def gpus_in_use(cluster: kube.Cluster) -> int:
    """GPUs requested on the KWOK GPU nodes by pods that are bound and not finished, in all namespaces."""
    simulated = _simulated_gpu_nodes(cluster)
    used = 0
    for pod in cluster.kubectl_json("get", "pods", "-A")["items"]:
        if pod["spec"].get("nodeName") not in simulated or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"]["containers"]:
            used += int((c.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return used


CLUSTER_GPUS = 8  # hack/cluster/nodes.yaml: two KWOK nodes with nvidia.com/gpu: 4


def wait_gpus_free(cluster: kube.Cluster, needed: int = 1, timeout: float = 180) -> None:
    """Earlier tests' namespaces are deleted in the background; their pods may still hold GPUs."""
    assert sum(_simulated_gpu_nodes(cluster).values()) == CLUSTER_GPUS, "the KWOK GPU nodes are not as expected"
    wait_for(lambda: CLUSTER_GPUS - gpus_in_use(cluster) >= needed, timeout=timeout, interval=1,
             message=f"{needed} free GPUs")


def operator_writes(cluster: kube.Cluster, namespace: str) -> list[Manifest]:
    """Write requests of the operator to one namespace, from the API server's audit log."""
    assert cluster.audit_log is not None, "needs the local cluster's audit log"
    writes = []
    with open(cluster.audit_log, encoding="utf-8") as f:
        for line in f:
            if '"userAgent":"gemma-operator' in line or '"userAgent":"kopf' in line:
                entry = json.loads(line)
                if (entry.get("objectRef") or {}).get("namespace") == namespace:
                    writes.append(entry)
    return writes
