"""Issue 12: the operator's watch cache on the real control plane: only our objects reach it, and a re-list
after an expired watch replaces it (no ghosts of objects deleted while the watch was away)."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.gemma_helpers import REPO, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

# The local cluster's etcd (hack/cluster.sh): plain HTTP on loopback, its v3 JSON gateway.
ETCD = "http://127.0.0.1:32765"


def etcd_delete(key: str) -> int:
    """Delete one key behind the API server's back; returns how many keys went."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(f"{ETCD}/v3/kv/deleterange", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(json.loads(resp.read()).get("deleted") or 0)


def test_others_objects_never_reach_the_operator(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    """The list and the watch carry the label selector: unrelated Pods, Services and ConfigMaps in the
    watched namespace are neither received nor cached."""
    for i in range(5):
        crd.kubectl("create", "service", "clusterip", f"other-{i}", "--tcp=80:80", "-n", namespace)
        crd.kubectl("run", f"other-{i}", "--image=busybox", "--restart=Never", "-n", namespace,
                    "--overrides", '{"spec":{"nodeSelector":{"no-such-node":"x"}}}')
    crd.kubectl("apply", "-n", namespace, "-f", str(REPO / "gemma.yaml"))
    wait_phase(crd, namespace, "Ready", timeout=90)
    ours = len(crd.kubectl_json("get", "services", "-n", namespace, "-l",
                                "app.kubernetes.io/managed-by=gemma-operator")["items"])
    assert ours == 1
    # A positive control: the operator did receive and cache its own Service.
    assert operator.metric("gemma_operator_cached_objects", kind="Service") == ours
    received = operator.metric("gemma_operator_watch_objects_total", kind="Service")
    assert 1 <= received < 5, f"the operator received {received} Service objects; 5 unrelated ones exist"
    server_pods = len(crd.kubectl_json("get", "pods", "-n", namespace, "-l",
                                       "app.kubernetes.io/managed-by=gemma-operator")["items"])
    assert operator.metric("gemma_operator_cached_objects", kind="Pod") == server_pods


@pytest.mark.slow
def test_a_child_deleted_while_the_watch_is_away_is_put_back(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    """The API server stops; the Service is deleted from etcd behind its back; the API server comes back with
    a fresh watch cache, so the operator's watch expires (410) and it lists again. A cache that kept what it
    had would hold the Service as a ghost and never put it back."""
    if not crd.local:
        pytest.skip("stops the local cluster's kube-apiserver and writes to its etcd")
    from tests.support.apiserver import ApiServer

    wait_gpus_free(crd)
    crd.kubectl("apply", "-n", namespace, "-f", str(REPO / "gemma.yaml"))
    wait_phase(crd, namespace, "Ready", timeout=90)
    old = crd.get("service", "gemma", namespace)
    assert old is not None
    pid = operator.proc.pid if operator.proc else None

    server = ApiServer()
    server.stop()
    try:
        assert etcd_delete(f"/registry/services/specs/{namespace}/gemma") == 1
    finally:
        server.start()
    wait_for(lambda: crd.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, timeout=60,
             message="kube-apiserver back")

    def new_service() -> bool:
        svc = crd.get("service", "gemma", namespace)
        return svc is not None and svc["metadata"]["uid"] != old["metadata"]["uid"]

    wait_for(new_service, timeout=90, message="the operator put the Service back after the re-list")
    assert "listing again" in operator.log()
    assert operator.proc is not None and operator.proc.poll() is None and operator.proc.pid == pid, "operator restarted"


def token(cluster: kube.Cluster, namespace: str, sa: str) -> str:
    return cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()


def write_kubeconfig(cluster: kube.Cluster, path: Path, token: str) -> None:
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config = {
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"}}],
        "current-context": "operator",
    }
    tmp = path.with_suffix(".new")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)  # atomically, as the kubelet swaps a projected token


def test_a_rotated_token_is_reloaded_on_401(crd: kube.Cluster, namespace: str, tmp_path: Path) -> None:
    """The operator runs on a ServiceAccount token; the token is rotated (a new one in its kubeconfig, the old
    one revoked). Its next write is refused with 401; it must log in again and carry on, not back off forever."""
    crd.kubectl("create", "serviceaccount", "operator", "-n", namespace)
    crd.kubectl("create", "rolebinding", "operator", "--clusterrole=cluster-admin",
                f"--serviceaccount={namespace}:operator", "-n", namespace)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(crd, kubeconfig, token(crd, namespace, "operator"))
    operator = OperatorProcess(str(kubeconfig), tmp_path / "operator.log", args=["--namespace", namespace]).start()
    try:
        wait_gpus_free(crd)
        crd.kubectl("apply", "-n", namespace, "-f", str(REPO / "gemma.yaml"))
        wait_phase(crd, namespace, "Ready", timeout=90)

        # Revoke the old token (a ServiceAccount made again has a new uid, which old tokens do not name)
        # and hand the operator a new one, as the kubelet refreshes a projected token file.
        old = yaml.safe_load(kubeconfig.read_text())
        crd.kubectl("delete", "serviceaccount", "operator", "-n", namespace)
        crd.kubectl("create", "serviceaccount", "operator", "-n", namespace)
        write_kubeconfig(crd, kubeconfig, token(crd, namespace, "operator"))
        # The API server remembers a token it accepted for a few seconds: wait until it refuses the old one.
        only_old_token = ["--kubeconfig=/dev/null", f"--server={old['clusters'][0]['cluster']['server']}",
                          "--insecure-skip-tls-verify", f"--token={old['users'][0]['user']['token']}"]
        wait_for(lambda: "Unauthorized" in crd.kubectl(*only_old_token, "get", "gemma", "-n", namespace,
                                                        check=False).stderr,
                 timeout=60, message="the old token refused")
        crd.kubectl("patch", "gemma", "gemma", "-n", namespace, "--type=merge", "-p", '{"spec":{"maxModelLen":3000}}')

        def rolled() -> bool:
            dep = crd.get("deployment", "gemma", namespace)
            return dep is not None and "3000" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

        wait_for(rolled, timeout=60, message="the change applied with the new token")
        assert "logged in again" in operator.log()
        assert operator.proc is not None and operator.proc.poll() is None
    finally:
        operator.stop()
