"""The local control plane itself (issue 2): nodes, versions, scheduling by GPU, Jobs,
storage, tools, audit log and metrics, and the KWOK fault-injection stages.

Runs against the session ``cluster`` fixture (hack/cluster.sh, or any cluster given by
KUBECONFIG; the checks that only make sense for our own cluster are skipped there).
The lifecycle (up/down) is tested in test_lifecycle.py on a second, private cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.support.kube import (
    LOCAL_CLUSTER_DIR,
    REPO_ROOT,
    Cluster,
    read_versions,
    wait_for,
)

GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
NODES = ("cpu-node-1", "gpu-node-1", "gpu-node-2")  # hack/cluster/nodes.yaml

pytestmark = pytest.mark.timeout(300)


def local_only(cluster: Cluster) -> None:
    if not cluster.local:
        pytest.skip(
            "checks hack/cluster.sh's own cluster (KUBECONFIG points elsewhere)"
        )


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    """The condition of that type, or {} (falsy, for wait_for)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def get(
    cluster: Cluster, kind: str, name: str, namespace: str | None = None
) -> dict[str, Any]:
    """The object, or {} if it does not exist."""
    return cluster.get(kind, name, namespace) or {}


def bound_pvc(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    pvc = get(cluster, "pvc", name, namespace)
    return pvc if pvc and pvc["status"].get("phase") == "Bound" else {}


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0]


def deployment(
    name: str,
    *,
    gpus: int = 0,
    replicas: int = 1,
    annotations: dict[str, str] | None = None,
    image: str = "vllm/vllm-openai:v0.11.0",
) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {
                    "containers": [
                        {"name": "server", "image": image, "resources": resources}
                    ]
                },
            },
        },
    }


def job(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "download", "image": "gemma-operator:dev"}],
                },
            },
        },
    }


# -- acceptance 1, 2 ---------------------------------------------------------------------


def test_three_ready_nodes_two_with_four_gpus(cluster: Cluster) -> None:
    local_only(cluster)
    # Exactly these on a fresh cluster; other tools (bench/) may add nodes of their own.
    nodes = {
        n["metadata"]["name"]: n for n in cluster.kubectl_json("get", "nodes")["items"]
    }
    assert set(NODES) <= set(nodes), sorted(nodes)
    for name in NODES:
        assert condition(nodes[name], "Ready").get("status") == "True", name
    gpu_nodes = [
        n for n in NODES if "nvidia.com/gpu" in nodes[n]["status"]["allocatable"]
    ]
    assert gpu_nodes == ["gpu-node-1", "gpu-node-2"]
    for name in gpu_nodes:
        assert nodes[name]["status"]["capacity"]["nvidia.com/gpu"] == "4"
        assert (
            nodes[name]["metadata"]["labels"]["nvidia.com/gpu.product"] == GPU_PRODUCT
        )
    # The command of the issue (limited to our nodes).
    out = cluster.kubectl(
        "get",
        "nodes",
        *NODES,
        "-o",
        r"jsonpath={.items[*].status.allocatable.nvidia\.com/gpu}",
    ).stdout
    assert out.split() == ["4", "4"]


def test_server_reports_the_pinned_kubernetes_version(cluster: Cluster) -> None:
    local_only(cluster)
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = read_versions()["KUBERNETES_VERSION"]
    assert version["serverVersion"]["gitVersion"] == pinned
    assert version["clientVersion"]["gitVersion"] == pinned


# -- acceptance 3 -------------------------------------------------------------------------


def test_gpu_deployment_gets_two_ready_pods_on_gpu_nodes(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(deployment("gpu-app", gpus=1, replicas=2), namespace)
    started = time.monotonic()
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", "gpu-app", "-n", namespace)[
                "status"
            ].get("readyReplicas")
            == 2
        ),
        timeout=60,
        message="2 ready replicas",
    )
    assert time.monotonic() - started <= 60
    gpu_nodes = {
        n["metadata"]["name"]
        for n in cluster.kubectl_json(
            "get", "nodes", "-l", f"nvidia.com/gpu.product={GPU_PRODUCT}"
        )["items"]
    }
    ready = pods(cluster, namespace, "app=gpu-app")
    assert len(ready) == 2
    for pod in ready:
        assert pod["spec"]["nodeName"] in gpu_nodes
        assert pod["status"]["phase"] == "Running"
        assert condition(pod, "Ready").get("status") == "True"


def test_job_completes(cluster: Cluster, namespace: str) -> None:
    cluster.apply(job("download"), namespace)
    done = wait_for(
        lambda: condition(cluster.get("job", "download", namespace), "Complete"),
        timeout=60,
        message="Job condition Complete",
    )
    assert done["status"] == "True"
    (pod,) = pods(cluster, namespace, "app=download")
    assert pod["status"]["phase"] == "Succeeded"
    assert container(pod)["state"]["terminated"]["exitCode"] == 0


def test_pod_asking_for_five_gpus_stays_pending(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "too-big"},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "vllm",
                        "resources": {"limits": {"nvidia.com/gpu": "5"}},
                    }
                ]
            },
        },
        namespace,
    )
    scheduled = wait_for(
        lambda: condition(cluster.get("pod", "too-big", namespace), "PodScheduled"),
        timeout=60,
        message="PodScheduled condition",
    )
    assert scheduled["status"] == "False"
    assert scheduled["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in scheduled["message"]
    pod = get(cluster, "pod", "too-big", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_deleted_pod_goes_away_and_is_replaced(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(deployment("web"), namespace)
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", "web", "-n", namespace)[
                "status"
            ].get("readyReplicas")
            == 1
        ),
        timeout=60,
        message="1 ready replica",
    )
    (old,) = pods(cluster, namespace, "app=web")
    cluster.kubectl(
        "delete", "pod", old["metadata"]["name"], "-n", namespace, "--wait=false"
    )
    wait_for(
        lambda: cluster.get("pod", old["metadata"]["name"], namespace) is None,
        timeout=60,
        message="deleted pod removed",
    )
    wait_for(
        lambda: (
            cluster.kubectl_json("get", "deployment", "web", "-n", namespace)[
                "status"
            ].get("readyReplicas")
            == 1
        ),
        timeout=60,
        message="replacement pod ready",
    )


# -- acceptance 4: storage ----------------------------------------------------------------


def test_there_is_exactly_one_default_storage_class(cluster: Cluster) -> None:
    classes = cluster.kubectl_json("get", "storageclass")["items"]
    default = [
        sc
        for sc in classes
        if (sc["metadata"].get("annotations") or {}).get(
            "storageclass.kubernetes.io/is-default-class"
        )
        == "true"
    ]
    assert len(default) == 1, [sc["metadata"]["name"] for sc in classes]


def test_pvc_of_the_default_class_binds_and_a_pod_mounting_it_is_ready(
    cluster: Cluster, namespace: str
) -> None:
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "cache"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "20Gi"}},
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "reader"},
                "spec": {
                    "volumes": [
                        {
                            "name": "models",
                            "persistentVolumeClaim": {"claimName": "cache"},
                        }
                    ],
                    "containers": [
                        {
                            "name": "c",
                            "image": "vllm",
                            "volumeMounts": [
                                {"name": "models", "mountPath": "/models"}
                            ],
                        }
                    ],
                },
            },
        ],
        namespace,
    )
    pvc = wait_for(
        lambda: bound_pvc(cluster, "cache", namespace),
        timeout=60,
        message="PVC Bound",
    )
    assert pvc["spec"][
        "storageClassName"
    ]  # filled in by the DefaultStorageClass admission plugin

    def ready_pod() -> dict[str, Any]:
        pod = get(cluster, "pod", "reader", namespace)
        return pod if condition(pod, "Ready").get("status") == "True" else {}

    pod = wait_for(
        ready_pod,
        timeout=60,
        message="pod mounting the PVC Ready",
    )
    assert pod["status"]["phase"] == "Running"
    if cluster.local:
        # Bound by kube-controller-manager's PV controller, to a hostPath volume under .cluster/.
        assert (
            pvc["metadata"]["annotations"].get("pv.kubernetes.io/bind-completed")
            == "yes"
        )
        pv = get(cluster, "pv", pvc["spec"]["volumeName"])
        assert pv["status"]["phase"] == "Bound"
        assert pv["spec"]["claimRef"]["uid"] == pvc["metadata"]["uid"]
        assert pv["spec"]["capacity"]["storage"] == "20Gi"
        assert pv["spec"]["hostPath"]["path"].startswith(
            str(LOCAL_CLUSTER_DIR / "volumes")
        )


def test_deleting_a_pvc_deletes_its_volume(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "scratch"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        namespace,
    )
    pvc = wait_for(
        lambda: bound_pvc(cluster, "scratch", namespace),
        timeout=60,
        message="PVC Bound",
    )
    cluster.kubectl("delete", "pvc", "scratch", "-n", namespace)
    wait_for(
        lambda: cluster.get("pv", pvc["spec"]["volumeName"]) is None,
        timeout=60,
        message="PV deleted",
    )


def test_fifty_pvcs_bind_quickly(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"claim-{i}"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
            for i in range(50)
        ],
        namespace,
    )

    def all_bound() -> bool:
        items = cluster.kubectl_json("get", "pvc", "-n", namespace)["items"]
        return len(items) == 50 and all(
            p["status"].get("phase") == "Bound" for p in items
        )

    wait_for(all_bound, timeout=60, interval=1, message="50 PVCs Bound")


# -- acceptance 5: tools from `hack/cluster.sh env` -------------------------------------------


def test_env_gives_kubectl_and_helm(cluster: Cluster) -> None:
    local_only(cluster)
    script = 'eval "$(hack/cluster.sh env)" && helm version --short && kubectl get nodes -o name'
    # A shell that has neither KUBECONFIG nor the tools on its PATH.
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        in (
            "HOME",
            "GEMMA_CACHE",
            "XDG_CACHE_HOME",
            "GEMMA_CLUSTER_DIR",
            "GEMMA_CLUSTER_NAME",
        )
    }
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == read_versions()["HELM_VERSION"] or lines[0].startswith(
        read_versions()["HELM_VERSION"] + "+"
    )
    assert {f"node/{n}" for n in NODES} <= set(lines[1:])


# -- what other suites rely on: audit log and apiserver metrics ------------------------------


def test_apiserver_metrics_are_readable_with_the_kubeconfig(cluster: Cluster) -> None:
    metrics = cluster.kubectl("get", "--raw", "/metrics").stdout
    assert "apiserver_request_total" in metrics


def test_audit_log_records_writes_only(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    audit_log = cluster.audit_log
    assert audit_log is not None
    cluster.kubectl(
        "create", "configmap", "audited", "-n", namespace, "--from-literal=a=b"
    )
    cluster.kubectl("get", "configmap", "audited", "-n", namespace)

    def events() -> list[dict[str, Any]]:
        return [
            e
            for e in map(json.loads, audit_log.read_text().splitlines())
            if (e.get("objectRef") or {}).get("namespace") == namespace
        ]

    created = wait_for(
        lambda: [
            e
            for e in events()
            if e["verb"] == "create"
            and e["objectRef"].get("resource") == "configmaps"
            and e["objectRef"].get("name") == "audited"
        ],
        timeout=10,
        message="audit event of the ConfigMap create",
    )
    assert created[0]["level"] == "Metadata"
    assert created[0]["userAgent"].startswith("kubectl/")
    assert "requestObject" not in created[0]
    assert {e["verb"] for e in events()} <= {
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    }


# -- KWOK fault-injection stages (hack/cluster/stages.yaml) --------------------------------


def test_download_failed_job_pod_fails_with_exit_code_3(
    cluster: Cluster, namespace: str
) -> None:
    local_only(cluster)
    body = job("download", {"sim.gemma.ai/state": "download-failed"})
    # The message names what the pod's own arguments asked for (a wrong operator's mistake shows).
    body["spec"]["template"]["spec"]["containers"][0]["args"] = [
        "--source", "huggingface", "--model-id", "someone/no-such-model", "--revision", "v9", "--cache-root", "/models"]
    cluster.apply(body, namespace)
    failed = wait_for(
        lambda: condition(cluster.get("job", "download", namespace), "Failed"),
        timeout=60,
        message="Job condition Failed",
    )
    assert failed["status"] == "True"
    (pod,) = pods(cluster, namespace, "app=download")
    assert pod["status"]["phase"] == "Failed"
    terminated = container(pod)["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == (
        "download failed: model someone/no-such-model not found on huggingface (revision v9)"
    )


def test_fault_message_can_be_overridden(cluster: Cluster, namespace: str) -> None:
    local_only(cluster)
    cluster.apply(
        job(
            "download",
            {
                "sim.gemma.ai/state": "download-failed",
                "sim.gemma.ai/message": "hub unreachable",
            },
        ),
        namespace,
    )
    pod = wait_for(
        lambda: [
            p
            for p in pods(cluster, namespace, "app=download")
            if p["status"]["phase"] == "Failed"
        ],
        timeout=60,
        message="failed pod",
    )[0]
    assert container(pod)["state"]["terminated"]["message"] == "hub unreachable"


def test_image_pull_error_pod_stays_pending_in_image_pull_backoff(
    cluster: Cluster, namespace: str
) -> None:
    local_only(cluster)
    image = "registry.invalid/gemma/vllm:missing"
    cluster.apply(
        deployment(
            "server",
            annotations={"sim.gemma.ai/state": "image-pull-error"},
            image=image,
        ),
        namespace,
    )
    first = wait_for(
        lambda: [
            p
            for p in pods(cluster, namespace, "app=server")
            if container(p).get("state", {}).get("waiting")
        ],
        timeout=60,
        message="container waiting",
    )[0]
    assert container(first)["state"]["waiting"]["reason"] in (
        "ErrImagePull",
        "ImagePullBackOff",
    )
    pod = wait_for(
        lambda: [
            p
            for p in pods(cluster, namespace, "app=server")
            if container(p)["state"].get("waiting", {}).get("reason")
            == "ImagePullBackOff"
        ],
        timeout=60,
        message="ImagePullBackOff",
    )[0]
    assert pod["status"]["phase"] == "Pending"
    assert condition(pod, "Ready").get("status") == "False"
    assert (
        container(pod)["state"]["waiting"]["message"]
        == f'Back-off pulling image "{image}"'
    )


@pytest.mark.parametrize(
    "state, exit_code, reason", [("crash-loop", 1, "Error"), ("oom", 137, "OOMKilled")]
)
def test_crash_looping_pod(
    cluster: Cluster, namespace: str, state: str, exit_code: int, reason: str
) -> None:
    local_only(cluster)
    body = deployment("server", gpus=1, annotations={"sim.gemma.ai/state": state})
    # The crash message carries the container's own --max-model-len (a wrong operator's value shows).
    body["spec"]["template"]["spec"]["containers"][0]["args"] = ["--port", "8000", "--max-model-len", "77777"]
    cluster.apply(body, namespace)
    pod = wait_for(
        lambda: [
            p
            for p in pods(cluster, namespace, "app=server")
            if container(p).get("state", {}).get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
        ],
        timeout=60,
        message="CrashLoopBackOff",
    )[0]
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready").get("status") == "False"
    status = container(pod)
    assert status["ready"] is False
    assert status["restartCount"] > 0
    last = status["lastState"]["terminated"]
    assert last["exitCode"] == exit_code
    assert last["reason"] == reason
    if state == "crash-loop":
        assert last["message"] == (
            "ValueError: User-specified max_model_len (77777) is greater than the derived "
            "max_model_len (max_position_embeddings=32768)"
        )
    deploy = cluster.kubectl_json("get", "deployment", "server", "-n", namespace)
    assert not deploy["status"].get("readyReplicas")
