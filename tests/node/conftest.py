"""Fixtures of the node tests: pods that really run, on the local cluster's real node (hack/node.sh).

* ``real_node``: the node gemma-real-node (kubelet, containerd, runc, CNI, kube-proxy, CoreDNS), Ready.
* ``images``: the images of images/*/Dockerfile, built here and imported into the node (hack/images.sh;
  cached, seconds when nothing changed).
* ``tiny_model`` and ``hub``: a tiny generated Gemma 3 that vLLM serves, offered by a stand-in ModelScope
  hub on 10.250.0.1 (the host's end of the node's veth) as ``LLM-Research/gemma-3-4b-it``, the seed's
  model id, so that gemma.yaml works unchanged.
* ``node_namespaces``: namespaces whose pods go to the real node (hack/node.sh namespace-annotations)
  under the restricted Pod Security Standard, enforced by the API server's PodSecurity admission.
* ``release``: the chart, installed with Helm with the locally built images, two operator pods, watching
  those namespaces only (the e2e tests' operators and the demo's never act on the same objects).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.download.hubs import ModelScopeHub
from tests.e2e.gemma_helpers import is_ready
from tests.support import kube
from tests.support.hub_server import model_hub
from tests.support.kube import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serving"))  # serving_harness: the vLLM venv and the tiny model

from serving_harness import install_vllm, make_tiny_model  # noqa: E402

REAL_NODE = "gemma-real-node"
SEED_MODEL_ID = "LLM-Research/gemma-3-4b-it"
CRD = REPO / "crds" / "gemmadeployments.yaml"
CHART = REPO / "charts" / "gemma-operator"
HELM_ENV = {"HELM_CACHE_HOME": "/tmp/gemma-helm/cache", "HELM_CONFIG_HOME": "/tmp/gemma-helm/config",
            "HELM_DATA_HOME": "/tmp/gemma-helm/data"}
# Namespaces of the node tests, one per purpose; the operator release watches exactly these.
PURPOSES = ("failover", "serve", "faults", "blocked", "gateway")
LEASE_SECONDS = 15  # gemma_operator.leader.LeaderElector's default duration


def run(cmd: list[str], env: dict[str, str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{shlex.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def real_node(cluster: kube.Cluster) -> kube.Cluster:
    node = wait_for(lambda: cluster.get("node", REAL_NODE), timeout=60,
                    message=f"node {REAL_NODE} (hack/cluster.sh up starts it; GEMMA_REAL_NODE=0 leaves it out)")
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", f"node {REAL_NODE} is not Ready: {ready}"
    return cluster


@pytest.fixture(scope="session")
def images(real_node: kube.Cluster) -> dict[str, str]:
    """{operator, downloader, vllm-cpu} -> image reference, all present in the node's containerd."""
    run(["bash", str(REPO / "hack" / "images.sh")], env=real_node.env, timeout=3600)
    names = run(["bash", str(REPO / "hack" / "images.sh"), "names"], env=real_node.env).stdout
    return dict(line.split("=", 1) for line in names.split())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(install_vllm(), tmp_path_factory.mktemp("tiny-gemma3") / "model")


@pytest.fixture(scope="session")
def hub(tiny_model: Path) -> Iterator[ModelScopeHub]:
    server = model_hub(tiny_model, SEED_MODEL_ID).start()
    yield server
    server.stop()


def annotate_for_real_node(cluster: kube.Cluster, ns: str) -> None:
    annotations = run(["bash", str(REPO / "hack" / "node.sh"), "namespace-annotations"], env=cluster.env).stdout.split()
    cluster.kubectl("annotate", "namespace", ns, "--overwrite", *annotations)
    cluster.kubectl("label", "namespace", ns, "--overwrite", "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


@pytest.fixture(scope="session")
def node_namespaces(real_node: kube.Cluster) -> Iterator[dict[str, str]]:
    names = {purpose: kube.create_namespace(real_node, f"node-{purpose}") for purpose in PURPOSES}
    for ns in names.values():
        annotate_for_real_node(real_node, ns)
    yield names
    for ns in names.values():
        kube.delete_namespace(real_node, ns)


@dataclass
class Release:
    cluster: kube.Cluster
    name: str
    namespace: str
    values: dict[str, Any]

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run([str(kube.tools_bin() / "helm"), *args], env=self.cluster.env | HELM_ENV, timeout=timeout, check=check)

    @property
    def lease(self) -> str:
        return f"{self.name}-leader"

    def pods(self, include_terminating: bool = False) -> list[dict]:
        """The operator's pods (not the helm test's)."""
        return [p for p in self.cluster.kubectl_json(
            "get", "pods", "-n", self.namespace, "-l", f"app.kubernetes.io/instance={self.name},app.kubernetes.io/name=gemma-operator,"
            "app.kubernetes.io/component=operator"
        )["items"] if include_terminating or not p["metadata"].get("deletionTimestamp")]

    def ready_pods(self) -> list[dict]:
        return [p for p in self.pods() if is_ready(p)]

    def holder(self) -> str:
        lease = self.cluster.get("lease", self.lease, self.namespace) or {}
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    def wait_ready(self, replicas: int = 2, timeout: float = 180) -> None:
        wait_for(lambda: len(self.ready_pods()) == replicas, timeout=timeout, interval=1,
                 message=f"{replicas} Ready operator pods of release {self.name}")
        wait_for(lambda: self.holder() in {p["metadata"]["name"] for p in self.ready_pods()},
                 timeout=LEASE_SECONDS * 3, interval=0.5, message="a Ready operator pod holding the Lease")


@pytest.fixture(scope="session")
def release(real_node: kube.Cluster, images: dict[str, str], hub: ModelScopeHub,
            node_namespaces: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    cluster = real_node
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/gemmadeployments.gemma.ai", "--timeout=60s")
    ns = kube.create_namespace(cluster, "node-gemma-system")
    annotate_for_real_node(cluster, ns)
    repository, tag = images["operator"].rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag},
        "replicaCount": 2,
        # The CRD is shared with the other suites' tests: kubectl applied it above, the release leaves it alone.
        "crds": {"enabled": False},
        "watchNamespaces": list(node_namespaces.values()),
        "operator": {
            "vllmImage": images["vllm-cpu"],
            "downloaderImage": images["downloader"],
            "modelscopeEndpoint": hub.url,
            # Download progress is read from the download pod's log this often (seconds).
            "extraEnv": [{"name": "GEMMA_PROGRESS_INTERVAL_SECONDS", "value": "2"}],
        },
        # The gateway in front of every model of the release (tests/node/test_gateway.py); one replica, so
        # that its /metrics counts every request.
        "gateway": {"enabled": True, "replicaCount": 1},
    }
    values_file = tmp_path_factory.mktemp("release") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    rel = Release(cluster, "gemma-operator-node", ns, values)
    rel.helm("install", rel.name, str(CHART), "-n", ns, "--wait", "--timeout", "5m", "-f", str(values_file))
    rel.wait_ready()
    yield rel
    rel.helm("uninstall", rel.name, "-n", ns, "--wait", check=False)
    kube.delete_namespace(cluster, ns)
