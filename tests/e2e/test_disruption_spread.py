"""Issue 15, the server pod production-ready: a PodDisruptionBudget while replicas > 1, topology spread over
nodes and a priority class, on the real control plane (KWOK GPU nodes: scheduling is real, pods never run)."""

from __future__ import annotations

import uuid

from tests.e2e.gemma_helpers import ready_pods, seed, status, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess


def test_disruption_budget_appears_at_two_replicas_and_goes_at_one(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess
) -> None:
    wait_gpus_free(crd, needed=2)
    crd.apply(seed(), namespace)  # one replica: no budget
    wait_phase(crd, namespace, "Ready", timeout=90)
    assert crd.get("poddisruptionbudget", "gemma", namespace) is None

    crd.kubectl("scale", "gemma/gemma", "-n", namespace, "--replicas=2")
    pdb = wait_for(lambda: crd.get("poddisruptionbudget", "gemma", namespace), timeout=30,
                   message="PodDisruptionBudget gemma")
    owner = crd.get("gemmadeployment", "gemma", namespace)
    assert owner is not None
    assert [r["uid"] for r in pdb["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/instance": "gemma", "app.kubernetes.io/component": "server"}
    # The disruption controller counts the server pods under it: one of the two may be evicted.
    wait_for(lambda: len(ready_pods(crd, namespace)) == 2, timeout=60, message="2 ready server pods")
    st = wait_for(lambda: (p := crd.get("poddisruptionbudget", "gemma", namespace) or {}).get("status", {})
                  .get("currentHealthy") == 2 and p["status"], timeout=60, message="budget sees 2 healthy pods")
    assert st["expectedPods"] == 2 and st["disruptionsAllowed"] == 1, st

    crd.kubectl("scale", "gemma/gemma", "-n", namespace, "--replicas=1")
    wait_for(lambda: crd.get("poddisruptionbudget", "gemma", namespace) is None, timeout=30,
             message="the budget deleted at one replica")
    wait_phase(crd, namespace, "Ready", timeout=60)


def test_spread_and_priority_class_reach_the_server_pods(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess
) -> None:
    wait_gpus_free(crd, needed=2)
    priority = f"gemma-e2e-{uuid.uuid4().hex[:8]}"  # cluster-scoped: a name of this test only
    crd.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
               "metadata": {"name": priority}, "value": 1000, "description": "e2e of gemma-operator"})
    try:
        crd.apply(seed(replicas=2, cache={"size": "20Gi", "accessModes": ["ReadWriteMany"]},
                       topologySpread={}, priorityClassName=priority), namespace)
        wait_phase(crd, namespace, "Ready", timeout=90)
        deployment = crd.get("deployment", "gemma", namespace)
        assert deployment is not None
        template = deployment["spec"]["template"]["spec"]
        assert template["priorityClassName"] == priority
        [spread] = template["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
        assert spread["whenUnsatisfiable"] == "DoNotSchedule"
        assert spread["matchLabelKeys"] == ["pod-template-hash"]
        assert "podAffinity" not in (template.get("affinity") or {})  # ReadWriteMany: no one-node affinity

        pods = wait_for(lambda: len(p := ready_pods(crd, namespace)) == 2 and p, timeout=60,
                        message="2 ready server pods")
        # The admission plugin resolved the class into the pods' priority; the scheduler spread them.
        assert {p["spec"]["priorityClassName"] for p in pods} == {priority}
        assert {p["spec"]["priority"] for p in pods} == {1000}
        nodes = {p["spec"]["nodeName"] for p in pods}
        assert len(nodes) == 2, f"both replicas on {nodes}: not spread"
        assert status(crd, namespace)["phase"] == "Ready"
    finally:
        crd.kubectl("delete", "gemmadeployment", "gemma", "-n", namespace, "--wait=false", check=False)
        crd.kubectl("delete", "priorityclass", priority, "--ignore-not-found", check=False)
