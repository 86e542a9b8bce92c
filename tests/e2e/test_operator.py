"""Issue 3: from `kubectl apply -f gemma.yaml` to a Ready OpenAI Service, on the real control plane."""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.gemma_helpers import (
    REPO, condition, operator_writes, ready_pods, seed, server_pods, status, wait_gpus_free, wait_phase,
)
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

SEED_COMMAND = [
    "vllm", "serve", "/models/modelscope/LLM-Research--gemma-3-4b-it/master",
    "--served-model-name", "Gemma3-4b", "--port", "8000", "--max-model-len", "2048", "--tensor-parallel-size", "1",
    "--limit-mm-per-prompt", '{"image":0}',  # text only unless spec.multimodal.images.enabled
]


def apply_seed(cluster: kube.Cluster, ns: str) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "gemma.yaml"))


def get_gemma_row(cluster: kube.Cluster, ns: str) -> dict[str, str]:
    out = cluster.kubectl("get", "gemma", "-n", ns).stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    return dict(zip(header, row))


def test_seed_reaches_ready_with_all_children(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    apply_seed(crd, namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)

    claim = crd.get("gemmadeployment", "gemma", namespace)["status"]["cache"]["claimName"]
    assert claim.startswith("cache-gemma-3-4b-it-"), claim  # shared by the model's GemmaDeployments
    pvc = crd.get("pvc", claim, namespace)
    assert pvc and pvc["status"]["phase"] == "Bound"
    jobs = crd.kubectl_json("get", "jobs", "-n", namespace)["items"]
    assert len(jobs) == 1 and any(c["type"] == "Complete" and c["status"] == "True" for c in jobs[0]["status"]["conditions"])
    dep = crd.get("deployment", "gemma", namespace)
    assert dep is not None
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == SEED_COMMAND
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert len(ready_pods(crd, namespace)) == 1
    svc = crd.get("service", "gemma", namespace)
    assert svc is not None
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("http", 8000)]
    pod_labels = server_pods(crd, namespace)[0]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    for child in (dep, svc):
        owner = child["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("GemmaDeployment", "gemma", True)
    for child in (pvc, jobs[0]):  # the model's shared cache: owned by each user, controlled by none
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner.get("controller", False)) == ("GemmaDeployment", "gemma", False)

    row = get_gemma_row(crd, namespace)
    assert row["PHASE"] == "Ready" and row["READY"] == "1/1" and row["PROGRESS"] == "100%"
    assert row["ENDPOINT"] == f"http://gemma.{namespace}.svc.cluster.local:8000/v1"

    events = crd.kubectl_json("get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=GemmaDeployment")
    reasons = {e["reason"] for e in events["items"]}
    assert {"DownloadStarted", "DownloadSucceeded", "ServersReady"} <= reasons


def _words(text: str) -> str:
    return " ".join(text.split())


def _explained_fields(out: str) -> dict[str, tuple[str, str]]:
    """The FIELDS section of `kubectl explain`: {name: (the type line's rest, the description)}.

    A field is a line `  <name>\t<type>`, then maybe `  enum: ...`, then its description indented by 4.
    """
    fields: dict[str, tuple[str, str]] = {}
    lines = out.split("FIELDS:\n", 1)[1].splitlines()
    name = None
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and "\t" in line:
            name, _, kind = line.strip().partition("\t")
            fields[name] = (kind.strip(), "")
        elif name is not None and line.startswith("    ") and line.strip():
            kind, desc = fields[name]
            fields[name] = (kind, f"{desc} {line.strip()}".strip())
    return fields


def _crd_spec_schema() -> dict:
    import yaml

    crd = yaml.safe_load((REPO / "crds" / "gemmadeployments.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_explain_teaches_the_fields(crd: kube.Cluster) -> None:
    """The API server serves each field's own description (from crds/) to `kubectl explain`."""
    schema = _crd_spec_schema()
    assert "--max-model-len" in schema["maxModelLen"]["description"]

    def check() -> None:
        out = crd.kubectl("explain", "gemmadeployment.spec.maxModelLen").stdout
        description = out.split("DESCRIPTION:\n", 1)[1]
        assert _words(description) == _words(schema["maxModelLen"]["description"]), out
        fields = _explained_fields(crd.kubectl("explain", "gemmadeployment.spec.model").stdout)
        for field in ("id", "source", "revision", "tokenSecretRef"):
            assert field in fields, f"spec.model.{field} is not among the explained fields: {sorted(fields)}"
            expected = _words(schema["model"]["properties"][field]["description"])
            assert expected and fields[field][1] == expected, (field, fields[field], expected)
        assert fields["id"][0] == "<string> -required-"
        assert fields["tokenSecretRef"][0] == "<Object>"

    # The API server publishes a changed CRD's OpenAPI a moment after the apply: poll a little (on
    # timeout, wait_for shows the last failed assertion, naming the field and both texts).
    wait_for(lambda: check() or True, timeout=20, interval=1, message="the CRD's descriptions in kubectl explain")


def test_scale_to_three_and_beyond_the_cluster(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd, needed=8)
    # Beyond the cluster means every GPU of both nodes: a ReadWriteMany cache lets the replicas spread (the
    # default ReadWriteOnce keeps them on one node: tests/e2e/test_cache_volume.py).
    crd.apply(seed(cache={"size": "20Gi", "accessModes": ["ReadWriteMany"]}), namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)

    crd.kubectl("scale", "gemma/gemma", "-n", namespace, "--replicas=3")
    wait_for(lambda: len(ready_pods(crd, namespace)) == 3 and status(crd, namespace).get("phase") == "Ready",
             timeout=60, message="3 ready server pods")
    for pod in ready_pods(crd, namespace):
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["spec"]["nodeName"].startswith("gpu-node")

    crd.kubectl("scale", "gemma/gemma", "-n", namespace, "--replicas=9")
    st = wait_phase(crd, namespace, "Degraded", timeout=60)
    st = wait_for(lambda: (s := status(crd, namespace)).get("ready") == "8/9" and s, timeout=60, message="8/9 ready")
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PodsUnschedulable"
    assert "unschedulable" in degraded["message"] and "nvidia.com/gpu" in degraded["message"]
    assert get_gemma_row(crd, namespace)["READY"] == "8/9"

    crd.kubectl("scale", "gemma/gemma", "-n", namespace, "--replicas=1")
    wait_phase(crd, namespace, "Ready", timeout=60)
    assert condition(status(crd, namespace), "Degraded")["status"] == "False"


def test_max_model_len_change_rolls_the_servers(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    apply_seed(crd, namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)
    old = {p["metadata"]["name"] for p in server_pods(crd, namespace)}

    crd.kubectl("patch", "gemma", "gemma", "-n", namespace, "--type=merge", "-p", '{"spec":{"maxModelLen":4096}}')

    def rolled() -> bool:
        pods = ready_pods(crd, namespace)
        return len(pods) == 1 and pods[0]["metadata"]["name"] not in old and status(crd, namespace).get("phase") == "Ready"

    wait_for(rolled, timeout=60, message="a new server pod with the new maxModelLen")
    args = ready_pods(crd, namespace)[0]["spec"]["containers"][0]["args"]
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert status(crd, namespace)["observedGeneration"] == crd.get("gemma", "gemma", namespace)["metadata"]["generation"]


def test_children_are_put_back(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    apply_seed(crd, namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)

    for kind in ("service", "deployment"):
        uid = crd.get(kind, "gemma", namespace)["metadata"]["uid"]
        crd.kubectl("delete", kind, "gemma", "-n", namespace, "--wait=false")
        wait_for(lambda: (o := crd.get(kind, "gemma", namespace)) and o["metadata"]["uid"] != uid,
                 timeout=30, message=f"{kind} recreated")

    crd.kubectl("scale", "deployment/gemma", "-n", namespace, "--replicas=2")
    wait_for(lambda: crd.get("deployment", "gemma", namespace)["spec"]["replicas"] == 1, timeout=30,
             message="replicas put back to 1")
    crd.kubectl("patch", "deployment", "gemma", "-n", namespace, "--type=json", "-p",
                json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/args/5", "value": "999"}]))
    wait_for(lambda: crd.get("deployment", "gemma", namespace)["spec"]["template"]["spec"]["containers"][0]["args"][5] == "2048",
             timeout=30, message="server args put back")
    wait_phase(crd, namespace, "Ready", timeout=60)


@pytest.mark.slow
def test_no_writes_when_nothing_changes(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    if crd.audit_log is None:
        pytest.skip("counting writes needs the local cluster's audit log")
    wait_gpus_free(crd)
    apply_seed(crd, namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)
    # Let the last status write and its watch echo settle: no write for 5 s in a row.
    wait_for(lambda: _quiet_for(crd, namespace, 5), timeout=60, message="the operator to go quiet")
    before = len(operator_writes(crd, namespace))
    rv_before = crd.get("gemma", "gemma", namespace)["metadata"]["resourceVersion"]
    time.sleep(60)  # the measurement window itself: nothing may happen in it
    writes = operator_writes(crd, namespace)[before:]
    assert writes == [], f"the operator wrote while nothing changed: {[(w['verb'], w['requestURI']) for w in writes]}"
    assert crd.get("gemma", "gemma", namespace)["metadata"]["resourceVersion"] == rv_before

    # Positive control: the same matcher sees the operator's writes once there is something to do, so
    # the empty list above is the operator's silence, not a matcher that sees nothing.
    after = len(operator_writes(crd, namespace))
    crd.kubectl("patch", "gemma", "gemma", "-n", namespace, "--type=merge", "-p", '{"spec":{"maxModelLen":4096}}')

    def deployment_patched() -> list[dict]:
        return [w for w in operator_writes(crd, namespace)[after:]
                if w["verb"] == "patch" and (w.get("objectRef") or {}).get("resource") == "deployments"
                and w["objectRef"].get("name") == "gemma"]

    wait_for(deployment_patched, timeout=30, message="the operator's apply of the changed Deployment in the audit log")


def _quiet_for(cluster: kube.Cluster, namespace: str, seconds: float) -> bool:
    count = len(operator_writes(cluster, namespace))
    time.sleep(seconds)
    return len(operator_writes(cluster, namespace)) == count


def test_deleting_removes_the_children(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    apply_seed(crd, namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)
    crd.kubectl("delete", "gemma", "gemma", "-n", namespace, "--wait=false")

    def gone() -> bool:
        names = crd.kubectl("get", "jobs,deployments,services", "-n", namespace, "-o", "name").stdout.split()
        return names == []

    wait_for(gone, timeout=60, message="Job, Deployment and Service garbage-collected")


def test_failed_download_is_told_and_fixing_the_spec_recovers(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess
) -> None:
    wait_gpus_free(crd)
    # KWOK plays the download pod failing the way the downloader fails for an unknown model: exit 3 and a
    # one-line termination message (the downloader itself is tested against stand-in hubs in tests/download).
    bad = seed(model={"id": "LLM-Research/gemma-3-4b-itx", "source": "modelscope"},
               download={"backoffLimit": 0, "podAnnotations": {"sim.gemma.ai/state": "download-failed"}})
    crd.apply(bad, namespace)
    st = wait_phase(crd, namespace, "Failed", timeout=60)
    model = condition(st, "ModelReady")
    assert (model["status"], model["reason"]) == ("False", "DownloadFailed")
    assert "LLM-Research/gemma-3-4b-itx" in model["message"] and "modelscope" in model["message"]
    events = crd.kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=DownloadFailed")["items"]
    assert events and "gemma-3-4b-itx" in events[0]["message"]
    assert crd.get("deployment", "gemma", namespace) is None

    crd.apply(seed(), namespace)  # the model id fixed (kubectl apply also drops the simulated fault)
    assert "podAnnotations" not in crd.get("gemma", "gemma", namespace)["spec"]["download"]
    wait_phase(crd, namespace, "Ready", timeout=90)
    wait_for(lambda: len(crd.kubectl_json("get", "jobs", "-n", namespace)["items"]) == 1,
             timeout=30, message="the failed download's Job removed")
