"""Issue 13 on the real control plane (KWOK GPU nodes: pods are simulated, so only control-plane logic is
proven here; the gateway in front of real vLLM pods is tests/node/test_gateway.py).

* An operator told of a gateway writes status.gateway and gives the servers a NetworkPolicy that admits
  only the gateway's pods; restarted without one, it deletes the policies it made, never one it did not.
* The gateway process (python -m gemma_operator.gateway) watching this namespace routes by the table the
  API server's objects give: a ready model is listed, an unknown one gets 404 naming it, a model whose
  servers are not ready gets 503 with the resource's phase and reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.gemma_helpers import seed, server_pods, status, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import REPO, OperatorProcess, free_port

GATEWAY_URL = "http://gemma-operator-gateway.gemma-system.svc.cluster.local:8000/v1"
GATEWAY_ENV = {"GEMMA_GATEWAY_URL": GATEWAY_URL, "GEMMA_GATEWAY_NAMESPACE": "gemma-system",
               "GEMMA_GATEWAY_POD_LABELS": "app.kubernetes.io/instance=gemma-operator,app.kubernetes.io/component=gateway"}


@pytest.fixture
def gateway_operator(crd: kube.Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crd.kubeconfig, tmp_path / "operator.log", args=["--namespace", namespace],
                           env=GATEWAY_ENV).start()
    yield proc
    proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


def test_with_a_gateway_servers_admit_only_it_and_without_one_the_operators_policies_go(
        crd: kube.Cluster, namespace: str, gateway_operator: OperatorProcess, tmp_path: Path) -> None:
    crd.apply(seed(), namespace)
    ready = wait_phase(crd, namespace, "Ready", timeout=120)
    assert ready["gateway"] == {"url": GATEWAY_URL, "model": "Gemma3-4b"}
    policy = wait_for(lambda: crd.get("networkpolicy", "gemma", namespace), timeout=30, message="NetworkPolicy gemma")
    [peer] = policy["spec"]["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": "gemma-operator",
                                                  "app.kubernetes.io/component": "gateway"}
    plain = OperatorProcess(crd.kubeconfig, tmp_path / "plain.log", args=["--namespace", namespace])
    gateway_operator.stop()
    plain.start()
    try:
        wait_for(lambda: crd.get("networkpolicy", "gemma", namespace) is None, timeout=60,
                 message="the operator's NetworkPolicy deleted without a gateway")
        wait_for(lambda: "gateway" not in status(crd, namespace), timeout=30, message="status.gateway gone")
        # A policy of that name that someone else made (no owner reference; our labels, so it is in the
        # operator's cache): the next passes must leave it.
        theirs = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                  "metadata": {"name": "gemma", "labels": {"app.kubernetes.io/managed-by": "gemma-operator",
                                                           "app.kubernetes.io/instance": "gemma"}},
                  "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
        crd.apply(theirs, namespace)
        passes = plain.metric("gemma_operator_reconciles_total")
        crd.kubectl("annotate", "gemma/gemma", "-n", namespace, "e2e/poke=1")
        wait_for(lambda: plain.metric("gemma_operator_reconciles_total") >= passes + 1, timeout=30,
                 message="a reconcile pass after the foreign policy appeared")
        assert crd.get("networkpolicy", "gemma", namespace) is not None, "a policy it did not make was deleted"
        plain.assert_running()
    finally:
        plain.stop()

@pytest.fixture
def gateway(crd: kube.Cluster, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The gateway process; healthy once /healthz answers, which it does only once its table is listed."""
    port = free_port()
    proc = OperatorProcess(crd.kubeconfig, tmp_path / "gateway.log", module="gemma_operator.gateway",
                           args=["--namespace", namespace, "--no-auth", "--port", str(port)]).start()
    try:
        yield f"http://127.0.0.1:{port}"
        proc.assert_running()
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


def test_the_gateway_routes_by_what_the_api_server_holds(
        crd: kube.Cluster, namespace: str, operator: OperatorProcess, gateway: str) -> None:
    crd.apply(seed(), namespace)
    wait_phase(crd, namespace, "Ready", timeout=120)
    listed = wait_for(lambda: (r := requests.get(f"{gateway}/v1/models", timeout=5).json())["data"] and r,
                      timeout=30, message="the model listed by the gateway")
    assert [(m["id"], m["ready"]) for m in listed["data"]] == [("Gemma3-4b", True)]
    unknown = requests.post(f"{gateway}/v1/completions", json={"model": "Gemma", "prompt": "x"}, timeout=10)
    assert unknown.status_code == 404 and "Gemma3-4b" in unknown.json()["error"]["message"]

    # A second model whose servers cannot be placed (no node has 8 GPUs): 503 with the phase and reason.
    big = seed(servedModelName="Big", gpu={"count": 8})
    big["metadata"]["name"] = "big"
    crd.apply(big, namespace)
    def not_ready() -> tuple[requests.Response] | None:
        r = requests.post(f"{gateway}/v1/completions", json={"model": "Big", "prompt": "x"}, timeout=10)
        # A tuple: a Response is falsy when its status is an error.
        return (r,) if r.status_code == 503 and "PodsUnschedulable" in r.text else None
    (answer,) = wait_for(not_ready, timeout=120, message="503 naming PodsUnschedulable")
    message = answer.json()["error"]["message"]
    assert f"{namespace}/big is Degraded" in message and "Insufficient nvidia.com/gpu" in message, message
    assert int(answer.headers["Retry-After"]) > 0


@pytest.fixture
def inference_pool_crd(crd: kube.Cluster) -> Iterator[kube.Cluster]:
    """The Gateway API Inference Extension's InferencePool CRD from its Go module (hack/inference-crds.sh),
    installed for this test only: the other tests' operators must not see it."""
    path = subprocess.run(["bash", str(REPO / "hack" / "inference-crds.sh")], capture_output=True, text=True,
                          check=True, timeout=600).stdout.strip()
    crd.kubectl("apply", "--server-side", "-f", path)
    crd.kubectl("wait", "--for=condition=Established", "crd/inferencepools.inference.networking.k8s.io",
                "--timeout=60s")
    try:
        yield crd
    finally:
        crd.kubectl("delete", "crd", "inferencepools.inference.networking.k8s.io", "--wait=true", check=False)


def test_where_the_inference_extension_is_installed_each_model_gets_an_inference_pool(
        inference_pool_crd: kube.Cluster, namespace: str, tmp_path: Path) -> None:
    cluster = inference_pool_crd
    wait_gpus_free(cluster, needed=2)
    proc = OperatorProcess(cluster.kubeconfig, tmp_path / "operator.log", args=["--namespace", namespace]).start()
    try:
        cluster.apply(seed(gateway={"endpointPicker": {"name": "gemma-epp"}}), namespace)
        other = seed(servedModelName="Other")
        other["metadata"]["name"] = "other"
        cluster.apply(other, namespace)
        for name in ("gemma", "other"):
            wait_phase(cluster, namespace, "Ready", name=name, timeout=120)
        pool = wait_for(lambda: cluster.get("inferencepool.inference.networking.k8s.io", "gemma", namespace),
                        timeout=30, message="InferencePool gemma")
        # Accepted by the extension's own schema (the API server validated it against the CRD).
        assert pool["spec"]["targetPorts"] == [{"number": 8000}]
        assert pool["spec"]["endpointPickerRef"]["name"] == "gemma-epp"
        assert pool["spec"]["endpointPickerRef"]["port"] == {"number": 9002}
        owner = cluster.get("gemmadeployment", "gemma", namespace)
        assert owner is not None
        assert [r["uid"] for r in pool["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
        # The pool selects exactly the pods its Deployment runs: none of the other model's.
        selector = ",".join(f"{k}={v}" for k, v in pool["spec"]["selector"]["matchLabels"].items())
        selected = {p["metadata"]["name"] for p in cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                                                          selector)["items"]}
        deployment = cluster.get("deployment", "gemma", namespace)
        assert deployment is not None
        runs = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        servers = {p["metadata"]["name"] for p in cluster.kubectl_json("get", "pods", "-n", namespace, "-l",
                                                                         runs)["items"]}
        assert selected == servers and len(servers) == 1, (selected, servers)
        assert not selected & {p["metadata"]["name"] for p in server_pods(cluster, namespace, "other")}
        assert cluster.get("inferencepool.inference.networking.k8s.io", "other", namespace) is not None
        # Removed with its GemmaDeployment (the garbage collector, by the owner reference).
        cluster.kubectl("delete", "gemma", "gemma", "-n", namespace, "--wait=true", timeout=120)
        wait_for(lambda: cluster.get("inferencepool.inference.networking.k8s.io", "gemma", namespace) is None,
                 timeout=60, message="InferencePool gemma removed with its GemmaDeployment")
        assert "the API server serves InferencePool" in proc.log()
        proc.assert_running()
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-4000:]


def test_without_the_inference_extension_the_operator_makes_no_pool_and_does_not_watch_for_one(
        crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    crd.apply(seed(), namespace)
    wait_phase(crd, namespace, "Ready", timeout=120)
    assert operator.metric("gemma_operator_watch_objects_total", kind="InferencePool") == 0
    assert "InferencePool" not in operator.log()
