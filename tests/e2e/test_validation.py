"""Issue 7, acceptance 1: bad input gets a clear error where the mistake is made.

A table of invalid GemmaDeployments, all in one namespace next to a valid one (gemma.yaml) that the operator
serves throughout:

* STATIC: what the CRD schema and its CEL rules can judge. Each is refused by ``kubectl apply`` (a server-side
  dry run: real admission by the API server, nothing stored) with a message that names the field and says
  what to do.
* UPDATES: the same mistakes made on the running resource (``kubectl apply``, ``patch``, ``scale``): refused,
  and the stored object does not change.
* RUNTIME: what only the cluster can tell (a claim, a GPU kind or a node that does not exist, a child the API
  server refuses). Each is accepted, and the operator ends with a condition whose reason and message name the
  cause.

After every case the valid resource must still be Ready; at the end the operator must not have logged a
traceback.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.gemma_helpers import REPO, seed, status, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

Manifest = dict[str, Any]
VALID = "gemma"  # the name of gemma.yaml's resource
DELETE = object()  # a value in a change: remove that field


def bad(changes: dict[str, Any], name: str = "bad") -> Manifest:
    """gemma.yaml named `name`, with changes as dotted paths under spec ("gpu.count"); DELETE removes one."""
    body: Manifest = copy.deepcopy(seed())
    body["metadata"]["name"] = name
    for path, value in changes.items():
        keys = path.split(".")
        node = body if keys[0] == "metadata" else body["spec"]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return body


@dataclass(frozen=True)
class Static:
    """A resource the API server must refuse; `expect` are texts the error must contain (field path, fix)."""

    id: str
    body: Manifest
    expect: tuple[str, ...]


S = Static
STATIC: list[Static] = [
    # -- sizes and ranges
    S("replicas-negative", bad({"replicas": -1}), ("spec.replicas", "greater than or equal to 0")),
    S("gpu-count-zero", bad({"gpu.count": 0}), ("spec.gpu.count", "greater than or equal to 1")),
    S("gpu-count-nine", bad({"gpu.count": 9}), ("spec.gpu.count", "less than or equal to 8")),
    S("gpu-count-three", bad({"gpu.count": 3}),
      ("spec.gpu.count", "must be 1, 2, 4 or 8", "tensor-parallel")),
    S("memory-utilization-zero", bad({"gpu.memoryUtilization": 0}),
      ("spec.gpu.memoryUtilization", "greater than 0")),
    S("memory-utilization-above-one", bad({"gpu.memoryUtilization": 1.5}),
      ("spec.gpu.memoryUtilization", "less than or equal to 1")),
    S("max-model-len-zero", bad({"maxModelLen": 0}), ("spec.maxModelLen", "greater than or equal to 1")),
    S("max-model-len-negative", bad({"maxModelLen": -5}), ("spec.maxModelLen", "greater than or equal to 1")),
    S("max-model-len-string", bad({"maxModelLen": "2k"}), ("spec.maxModelLen", "must be of type integer")),
    S("max-model-len-fraction", bad({"maxModelLen": 1.5}), ("spec.maxModelLen", "must be of type integer")),
    S("startup-timeout-too-short", bad({"vllm.startupTimeoutSeconds": 10}),
      ("spec.vllm.startupTimeoutSeconds", "greater than or equal to 60")),
    S("download-backoff-negative", bad({"download.backoffLimit": -1}),
      ("spec.download.backoffLimit", "greater than or equal to 0")),
    # -- the model
    S("unknown-source", bad({"model.source": "s3"}),
      ("spec.model.source", 'supported values: "modelscope", "huggingface", "pvc"')),
    S("model-id-without-owner", bad({"model.id": "gemma-3-4b-it"}),
      ("spec.model.id", "must be <owner>/<name>", "LLM-Research/gemma-3-4b-it")),
    S("model-id-with-space", bad({"model.id": "LLM-Research/gemma 3 4b"}),
      ("spec.model.id", "must be <owner>/<name>")),
    S("model-id-empty", bad({"model.id": ""}), ("spec.model.id", "must be <owner>/<name>")),
    S("revision-with-space", bad({"model.revision": "my branch"}),
      ("spec.model.revision", "branch, tag or commit")),
    S("endpoint-not-http", bad({"model.endpoint": "ftp://mirror.example"}),
      ("spec.model.endpoint", "http:// or https:// URL")),
    S("token-secret-without-key", bad({"model.tokenSecretRef": {"name": "hub-token"}}),
      ("spec.model.tokenSecretRef.key", "Required value")),
    S("token-secret-bad-name", bad({"model.tokenSecretRef": {"name": "Hub_Token", "key": "token"}}),
      ("spec.model.tokenSecretRef.name", "name of a Secret")),
    S("path-without-source-pvc", bad({"model.path": "LLM-Research/gemma-3-4b-it"}),
      ("spec.model.path is only used with source pvc", "set spec.model.source to pvc")),
    S("path-escapes-the-volume", bad({"model.source": "pvc", "model.path": "models/../../etc",
                                      "cache": {"existingClaim": "weights"}}),
      ("spec.model.path", "'..' segments")),
    S("source-pvc-without-existing-claim", bad({"model.source": "pvc"}),
      ("spec.model.source pvc", "set spec.cache.existingClaim")),
    # -- names
    S("name-too-long", bad({}, name="g" * 46), ("metadata.name", "at most 45 characters")),
    S("name-starts-with-digit", bad({}, name="3gemma"), ("metadata.name", "start with a lowercase letter")),
    S("name-with-dot", bad({}, name="gemma.v1"), ("metadata.name", "no '.'", "Service")),
    S("served-model-name-with-space", bad({"servedModelName": "Gemma 3 4b"}),
      ("spec.servedModelName", "no spaces", "Gemma3-4b")),
    # -- the server
    S("extra-args-port", bad({"vllm.extraArgs": ["--port=9000"]}), ("spec.vllm.extraArgs", "--port")),
    S("extra-args-max-model-len", bad({"vllm.extraArgs": ["--max-model-len", "4096"]}),
      ("spec.vllm.extraArgs", "--max-model-len", "spec.maxModelLen")),
    S("extra-args-max-model-len-one-string", bad({"vllm.extraArgs": ["--max-model-len 4096"]}),
      ("spec.vllm.extraArgs", "spec.maxModelLen")),
    S("extra-args-max_model_len-underscores", bad({"vllm.extraArgs": ["--max_model_len=4096"]}),
      ("spec.vllm.extraArgs", "spec.maxModelLen")),
    S("extra-args-tensor-parallel", bad({"vllm.extraArgs": ["-tp", "2"]}),
      ("spec.vllm.extraArgs", "spec.gpu.count")),
    S("extra-args-api-key", bad({"vllm.extraArgs": ["--api-key", "sk-123"]}),
      ("spec.vllm.extraArgs", "--api-key", "spec.apiKeySecretRef")),
    S("extra-args-model", bad({"vllm.extraArgs": ["--model=/other"]}), ("spec.vllm.extraArgs", "--model")),
    S("extra-args-image-limit", bad({"vllm.extraArgs": ["--limit-mm-per-prompt", '{"image":4}']}),
      ("spec.vllm.extraArgs", "--limit-mm-per-prompt", "spec.multimodal.images")),
    S("extra-args-image-limit-dotted", bad({"vllm.extraArgs": ["--limit-mm-per-prompt.image=4"]}),
      ("spec.vllm.extraArgs", "spec.multimodal.images.maxPerPrompt")),
    S("extra-args-language-model-only", bad({"vllm.extraArgs": ["--language-model-only"]}),
      ("spec.vllm.extraArgs", "--language-model-only", "spec.multimodal.images.enabled")),
    # -- images
    S("images-per-prompt-zero", bad({"multimodal": {"images": {"enabled": True, "maxPerPrompt": 0}}}),
      ("spec.multimodal.images.maxPerPrompt", "greater than or equal to 1")),
    S("images-per-prompt-too-many", bad({"multimodal": {"images": {"enabled": True, "maxPerPrompt": 1000}}}),
      ("spec.multimodal.images.maxPerPrompt", "less than or equal to 128")),
    S("images-per-prompt-not-a-number", bad({"multimodal": {"images": {"enabled": True, "maxPerPrompt": "two"}}}),
      ("spec.multimodal.images.maxPerPrompt", "must be of type integer")),
    S("images-per-prompt-without-enabled", bad({"multimodal": {"images": {"maxPerPrompt": 4}}}),
      ("spec.multimodal.images.maxPerPrompt", "set enabled to true")),
    S("images-per-prompt-with-images-off", bad({"multimodal": {"images": {"enabled": False, "maxPerPrompt": 4}}}),
      ("spec.multimodal.images.maxPerPrompt", "only applies with spec.multimodal.images.enabled true")),
    S("images-enabled-not-a-boolean", bad({"multimodal": {"images": {"enabled": "yes"}}}),
      ("spec.multimodal.images.enabled", "must be of type boolean")),
    S("image-with-space", bad({"vllm.image": "vllm/vllm-openai latest"}),
      ("spec.vllm.image", "without spaces")),
    S("env-without-name", bad({"vllm.env": [{"value": "1"}]}), ("spec.vllm.env[0].name", "Required value")),
    S("env-api-key-in-plain-text", bad({"vllm.env": [{"name": "VLLM_API_KEY", "value": "sk-123"}]}),
      ("spec.vllm.env", "VLLM_API_KEY", "spec.apiKeySecretRef")),
    S("env-overrides-offline-mode", bad({"vllm.env": [{"name": "HF_HUB_OFFLINE", "value": "0"}]}),
      ("spec.vllm.env", "HF_HUB_OFFLINE", "the operator sets them")),
    S("env-twice", bad({"vllm.env": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                                     {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}]}),
      ("spec.vllm.env", "twice")),
    S("api-key-secret-without-name", bad({"apiKeySecretRef": {"key": "api-key"}}),
      ("spec.apiKeySecretRef.name", "Required value")),
    S("api-key-secret-bad-key", bad({"apiKeySecretRef": {"name": "gemma-api-key", "key": "api key"}}),
      ("spec.apiKeySecretRef.key", "key of the Secret")),
    S("rollout-both-zero", bad({"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}}),
      ("spec.rollout.maxSurge and maxUnavailable cannot both be 0",)),
    S("rollout-surge-not-a-number", bad({"rollout": {"maxSurge": "lots"}}),
      ("spec.rollout.maxSurge", "percentage such as 25%")),
    S("rollout-unavailable-negative", bad({"rollout": {"maxUnavailable": -1}}),
      ("spec.rollout.maxUnavailable", "number of pods")),
    # -- placement and resources
    S("gpu-resource-name-with-space", bad({"gpu.resourceName": "nvidia gpu"}),
      ("spec.gpu.resourceName", "nvidia.com/gpu")),
    S("gpus-in-resources", bad({"resources": {"limits": {"nvidia.com/gpu": 2}}}),
      ("spec.resources must not set nvidia.com/gpu", "spec.gpu.count")),
    S("memory-not-a-quantity", bad({"resources": {"limits": {"memory": "lots"}}}),
      ("spec.resources.limits[memory]", "quantities such as")),
    S("node-selector-value-with-space", bad({"nodeSelector": {"nvidia.com/gpu.product": "H100 80GB"}}),
      ("spec.nodeSelector[nvidia.com/gpu.product]", "label values")),
    S("toleration-bad-operator", bad({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Bogus"}]}),
      ("spec.tolerations[0].operator", '"Equal", "Exists"')),
    S("toleration-exists-with-value",
      bad({"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
      ("spec.tolerations[0]", "value must be empty when operator is Exists")),
    # -- the cache
    S("cache-size-in-words", bad({"cache.size": "20 gigs"}), ("spec.cache.size", "such as 20Gi")),
    S("cache-size-zero", bad({"cache.size": "0"}), ("spec.cache.size", "greater than 0")),
    S("cache-bad-access-mode", bad({"cache.accessModes": ["ReadWrite"]}),
      ("spec.cache.accessModes[0]", 'supported values: "ReadWriteOnce"')),
    S("cache-read-only", bad({"cache.accessModes": ["ReadOnlyMany"]}),
      ("spec.cache.accessModes", "needs a writable mode")),
    S("cache-read-write-once-pod-two-replicas",
      bad({"replicas": 2, "cache.accessModes": ["ReadWriteOncePod"]}),
      ("spec.replicas", "ReadWriteOncePod", "ReadWriteMany")),
    S("cache-bad-storage-class", bad({"cache.storageClassName": "Fast SSD"}),
      ("spec.cache.storageClassName", "name of a StorageClass")),
    S("existing-claim-with-size", bad({"cache": {"existingClaim": "weights", "size": "50Gi"}}),
      ("spec.cache.existingClaim", "remove spec.cache.size")),
    S("existing-claim-with-storage-class",
      bad({"cache": {"existingClaim": "weights", "storageClassName": "fast"}}),
      ("spec.cache.existingClaim", "storageClassName")),
    S("existing-claim-bad-name", bad({"model.source": "pvc", "cache": {"existingClaim": "My_Weights"}}),
      ("spec.cache.existingClaim", "name of a PersistentVolumeClaim")),
    # -- the server pod (issue 15): spread, priority, disruption budget, compile cache
    S("topology-spread-on-a-one-node-cache", bad({"replicas": 2, "topologySpread": {}}),
      ("spec.topologySpread", "ReadWriteOnce", "ReadWriteMany")),
    S("topology-spread-bad-key",
      bad({"cache.accessModes": ["ReadWriteMany"], "topologySpread": {"topologyKey": "any node"}}),
      ("spec.topologySpread.topologyKey", "node label key")),
    S("topology-spread-skew-zero",
      bad({"cache.accessModes": ["ReadWriteMany"], "topologySpread": {"maxSkew": 0}}),
      ("spec.topologySpread.maxSkew", "greater than or equal to 1")),
    S("topology-spread-bad-when",
      bad({"cache.accessModes": ["ReadWriteMany"], "topologySpread": {"whenUnsatisfiable": "Sometimes"}}),
      ("spec.topologySpread.whenUnsatisfiable", 'supported values: "DoNotSchedule"')),
    S("priority-class-bad-name", bad({"priorityClassName": "High Priority"}),
      ("spec.priorityClassName", "name of a PriorityClass")),
    S("disruption-budget-zero", bad({"disruptionBudget.maxUnavailable": 0}),
      ("spec.disruptionBudget.maxUnavailable", "0 would block every node drain")),
    S("disruption-budget-bad-percent", bad({"disruptionBudget.maxUnavailable": "150%"}),
      ("spec.disruptionBudget.maxUnavailable", "percentage from 1% to 100%")),
    S("compile-cache-not-a-boolean", bad({"vllm.compileCache.enabled": "yes"}),
      ("spec.vllm.compileCache.enabled", "must be of type boolean")),
]


@dataclass(frozen=True)
class Runtime:
    """A resource the API server accepts and the operator must report: a condition that says something is
    wrong (Degraded True, ModelReady or Available False) with a reason in `reasons` and a message containing
    every text of `expect`. `setup` objects are applied first; with `change`, the resource is first served
    Ready and then changed with that merge patch (a mistake only the state of its children reveals)."""

    id: str
    body: Manifest
    reasons: tuple[str, ...]
    expect: tuple[str, ...]
    setup: list[Manifest] = field(default_factory=list)
    change: Manifest | None = None


NODE_AFFINITY_BOGUS = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "Bogus", "values": ["H100"]}]}]}}}

R = Runtime
RUNTIME: list[Runtime | Any] = [
    R("existing-claim-missing", bad({"cache": {"existingClaim": "no-such-claim"}}, "rt-claim"),
      ("DownloadBlocked", "CacheClaimNotFound"), ('"no-such-claim" not found',)),
    R("existing-claim-missing-source-pvc",
      bad({"model.source": "pvc", "model.revision": DELETE, "cache": {"existingClaim": "no-such-claim"}},
          "rt-pvc"),
      ("PodsUnschedulable", "CacheClaimNotFound"), ('"no-such-claim" not found',)),
    R("storage-class-missing", bad({"cache.storageClassName": "no-such-class"}, "rt-class"),
      ("CacheVolumePending",), ("no-such-class",)),
    R("gpu-kind-nobody-has", bad({"gpu.resourceName": "amd.com/gpu"}, "rt-amd"),
      ("PodsUnschedulable",), ("Insufficient amd.com/gpu",)),
    R("more-gpus-than-a-node-has", bad({"gpu.count": 8}, "rt-eight"),
      ("PodsUnschedulable",), ("Insufficient nvidia.com/gpu",)),
    R("node-selector-matches-no-node",
      bad({"nodeSelector": {"nvidia.com/gpu.product": "TPU-v5"}}, "rt-selector"),
      ("PodsUnschedulable",), ("node affinity/selector",)),
    R("affinity-refused-by-the-api-server", bad({"affinity": NODE_AFFINITY_BOGUS}, "rt-affinity"),
      ("ApplyFailed",), ("affinity", "Bogus")),
    R("requests-above-limits",
      bad({"resources": {"requests": {"memory": "64Gi"}, "limits": {"memory": "48Gi"}}}, "rt-requests"),
      ("ApplyFailed",), ("resources.requests", "must be less than or equal to memory limit")),
    # Changes that a bound claim cannot take (a smaller size, another storage class) are no error any more:
    # the volume settings are part of the shared cache's key, so they make a new cache
    # (tests/e2e/test_shared_cache_e2e.py, docs/model-cache.md).
    # A Secret that does not exist (or lacks the key) is not checked by the operator, which holds no
    # permission on Secrets (least privilege): the kubelet refuses such a container with
    # CreateContainerConfigError, and the status function turns that into Degraded/ContainerConfigError
    # (tests/unit/test_status.py). KWOK has no kubelet, so that case cannot run here.
]


# ---------------------------------------------------------------- the namespace with a valid resource


SERVER_PODS = f"app.kubernetes.io/instance={VALID},app.kubernetes.io/component=server"


@dataclass
class Table:
    cluster: kube.Cluster
    ns: str
    operator: OperatorProcess
    pods: list[str]  # uids of the valid resource's server pods once it was Ready

    def server_pods(self) -> list[Manifest]:
        pods = self.cluster.kubectl_json("get", "pods", "-n", self.ns, "-l", SERVER_PODS)
        items: list[Manifest] = pods["items"]
        return items

    def assert_valid_still_serving(self) -> None:
        obj = self.cluster.get("gemmadeployment", VALID, self.ns)
        assert obj is not None, "the valid GemmaDeployment is gone"
        st = obj.get("status") or {}
        assert st.get("phase") == "Ready" and st.get("ready") == "1/1", f"the valid GemmaDeployment: {st}"
        assert st.get("observedGeneration") == obj["metadata"]["generation"], st
        assert "Traceback" not in self.operator.log(), self.operator.log()[-4000:]
        self.operator.assert_running()


@pytest.fixture(scope="module")
def table(crd: kube.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    """One namespace for the whole table: an operator watching it and gemma.yaml served Ready."""
    ns = kube.create_namespace(crd, "validation-table")
    log = tmp_path_factory.mktemp("validation") / "operator.log"
    operator = OperatorProcess(crd.kubeconfig, log, args=["--namespace", ns]).start()
    try:
        crd.kubectl("apply", "-n", ns, "-f", str(REPO / "gemma.yaml"))
        wait_phase(crd, ns, "Ready", name=VALID, timeout=120)
        table = Table(crd, ns, operator, pods=[])
        table.pods = sorted(p["metadata"]["uid"] for p in table.server_pods())
        yield table
    finally:
        operator.stop()
        kube.delete_namespace(crd, ns)
    assert "Traceback" not in operator.log(), f"the operator logged a traceback:\n{operator.log()[-4000:]}"


def refused(result: Any) -> str:
    assert result.returncode != 0, f"the API server accepted it: {result.stdout.strip()}"
    return str(result.stderr)


# ---------------------------------------------------------------- the table


def test_the_table_is_big_enough() -> None:
    assert len(STATIC) + len(RUNTIME) >= 20
    assert len({c.id for c in STATIC}) == len(STATIC)


@pytest.mark.parametrize("case", STATIC, ids=[c.id for c in STATIC])
def test_refused_by_kubectl_apply(table: Table, case: Static) -> None:
    result = table.cluster.kubectl("apply", "--dry-run=server", "-n", table.ns, "-f", "-",
                                   input=json.dumps(case.body), check=False)
    error = refused(result)
    assert "is invalid" in error, error
    for text in case.expect:
        assert text in error, f"{text!r} not in the error:\n{error}"
    table.assert_valid_still_serving()


def _generation(table: Table) -> int:
    obj = table.cluster.get("gemmadeployment", VALID, table.ns)
    assert obj is not None
    return int(obj["metadata"]["generation"])


def test_mistakes_on_the_running_resource_are_refused_and_change_nothing(table: Table) -> None:
    k = table.cluster
    before = _generation(table)

    edited = bad({"gpu.count": 3, "vllm.extraArgs": ["--api-key=sk-123"]}, name=VALID)
    error = refused(k.kubectl("apply", "-n", table.ns, "-f", "-", input=json.dumps(edited), check=False))
    assert "spec.gpu.count must be 1, 2, 4 or 8" in error and "spec.apiKeySecretRef" in error, error

    error = refused(k.kubectl("patch", "gemma", VALID, "-n", table.ns, "--type=merge",
                              "-p", '{"spec": {"maxModelLen": "4k"}}', check=False))
    assert "spec.maxModelLen" in error and "integer" in error, error

    error = refused(k.kubectl("patch", "gemma", VALID, "-n", table.ns, "--type=merge",
                              "-p", '{"spec": {"cache": {"existingClaim": "weights"}}}', check=False))
    assert "spec.cache.existingClaim uses a claim you made" in error, error

    error = refused(k.kubectl("scale", f"gemma/{VALID}", "-n", table.ns, "--replicas=-1", check=False))
    assert "replicas" in error, error

    assert _generation(table) == before
    table.assert_valid_still_serving()


def _unhappy(st: Manifest) -> list[Manifest]:
    """Conditions that report a problem: Degraded True, ModelReady or Available False."""
    bad_status = {"Degraded": "True", "ModelReady": "False", "Available": "False"}
    return [c for c in st.get("conditions") or [] if bad_status.get(c.get("type", "")) == c.get("status")]


@pytest.mark.parametrize("case", RUNTIME, ids=lambda c: c.id)
def test_reported_as_a_condition(table: Table, case: Runtime) -> None:
    k, name = table.cluster, case.body["metadata"]["name"]
    if case.setup:
        k.apply(case.setup, table.ns)
    k.apply(case.body, table.ns)
    try:
        if case.change:
            wait_phase(k, table.ns, "Ready", name=name, timeout=60)
            k.kubectl("patch", "gemma", name, "-n", table.ns, "--type=merge", "-p", json.dumps(case.change))
        def verdict() -> Manifest | None:
            st = status(k, table.ns, name)
            found = [c for c in _unhappy(st) if c.get("reason") in case.reasons
                     and all(text in c.get("message", "") for text in case.expect)]
            if found:
                return {"condition": found[0]}
            # Ready cannot be the end of a bad resource: the cause was missed (fail now, not at the timeout).
            current = st.get("observedGeneration") == (k.get("gemma", name, table.ns) or {}).get(
                "metadata", {}).get("generation")
            return {"missed": st} if st.get("phase") == "Ready" and current else None

        try:
            seen = wait_for(verdict, timeout=45, message=f"a condition of {name} naming the cause")
        except AssertionError as err:
            conds = [(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                     for c in status(k, table.ns, name).get("conditions") or []]
            wanted = f"a reason in {case.reasons} with {case.expect}"
            raise AssertionError(f"{err}\nwanted {wanted}; got {conds}") from None
        assert seen is not None and "missed" not in seen, f"{name} went Ready, no condition said why: {seen}"
        reason = seen["condition"]["reason"]
        assert reason[:1].isupper() and reason.isalnum(), f"reason {reason!r} is not CamelCase"
        assert status(k, table.ns, name).get("phase") != "Ready"
        table.assert_valid_still_serving()
    finally:
        k.kubectl("delete", "gemma", name, "-n", table.ns, "--wait=false", "--ignore-not-found", check=False)


def test_the_valid_resource_was_served_throughout(table: Table) -> None:
    """Last in the file: after the whole table the valid resource is still Ready, served by the same pod."""
    table.assert_valid_still_serving()
    pods = table.server_pods()
    assert sorted(p["metadata"]["uid"] for p in pods) == table.pods and len(pods) == 1
    assert [p["status"].get("phase") for p in pods] == ["Running"]
    statuses = [cs for p in pods for cs in p["status"].get("containerStatuses", [])]
    assert statuses and all(cs.get("restartCount", 0) == 0 for cs in statuses)
