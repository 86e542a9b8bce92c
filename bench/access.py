"""The benchmark's operator identity: a ServiceAccount that may read the operator's kinds in all namespaces
but write only in the namespaces the benchmark binds it to.

Other tests may run namespaced operators of their own on the same cluster while a benchmark runs. An
operator of the benchmark that watches all namespaces must never write to their GemmaDeployments: in the
other namespaces its writes are refused (403) and change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support import kube

BENCH_LABEL = "gemma.ai/bench"
SA_NAME = "gemma-bench-operator"
READ_ROLE, WRITE_ROLE = "gemma-bench-operator-read", "gemma-bench-operator-write"
_CHILDREN_RULES = [
    {"apiGroups": [""], "resources": ["persistentvolumeclaims", "services", "configmaps"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gemma.ai"], "resources": ["gemmadeployments"], "verbs": ["get", "list", "watch"]},
]
_WRITE_RULES = [  # the chart's rules (charts/gemma-operator/templates/_helpers.tpl), writes only
    {"apiGroups": ["gemma.ai"], "resources": ["gemmadeployments/status"], "verbs": ["patch"]},
    {"apiGroups": ["gemma.ai"], "resources": ["gemmadeployments/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims", "services", "configmaps"], "verbs": ["create", "patch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "patch"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


def meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {BENCH_LABEL: "true"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def rbac_objects(sa_namespace: str) -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(SA_NAME, sa_namespace)},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": meta(READ_ROLE), "rules": _CHILDREN_RULES},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": meta(WRITE_ROLE), "rules": _WRITE_RULES},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": meta(READ_ROLE),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READ_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": sa_namespace}]},
    ]


def write_binding(namespace: str, sa_namespace: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(WRITE_ROLE, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": WRITE_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SA_NAME, "namespace": sa_namespace}]}


def operator_kubeconfig(cluster: kube.Cluster, sa_namespace: str, directory: Path) -> str:
    """A kubeconfig with the server and CA of the cluster's and a short-lived token of the benchmark's SA."""
    server = cluster.kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout.strip()
    ca = cluster.kubectl("config", "view", "--minify", "--raw", "-o",
                         "jsonpath={.clusters[0].cluster.certificate-authority}").stdout.strip()
    token = cluster.kubectl("create", "token", SA_NAME, "-n", sa_namespace, "--duration=2h").stdout.strip()
    path = directory / "operator.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "bench", "user": {"token": token}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    path.chmod(0o600)
    return str(path)
