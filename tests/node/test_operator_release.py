"""Issue 11, test 1: the operator itself as pods on the real node, installed by Helm with its RBAC.

Two replicas: both Running, one holds the Lease. Deleting the leader pod hands the Lease to the other within
the Lease's duration plus a few seconds, and a spec change made after the failover is carried out by the new
leader. `helm test` really calls the operator's /healthz through its Service, and fails when no operator runs.
"""

from __future__ import annotations

import time

import pytest

from tests.node.conftest import LEASE_SECONDS, REAL_NODE, Release
from tests.node.node_helpers import seed
from tests.support.kube import wait_for

pytestmark = pytest.mark.timeout(900)
TAKEOVER_SLACK_SECONDS = 5


def _deployment_args(release: Release, ns: str) -> list[str]:
    dep = release.cluster.get("deployment", "gemma", ns) or {}
    containers = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    return list(containers[0].get("args") or [])


def test_two_operator_pods_one_leader_and_failover(release: Release, node_namespaces: dict[str, str]) -> None:
    cluster, ns = release.cluster, node_namespaces["failover"]
    running = release.ready_pods()
    assert len(running) == 2 and {p["spec"]["nodeName"] for p in running} == {REAL_NODE}
    assert all(p["status"]["phase"] == "Running" for p in running)
    leader = release.holder()
    standby = next(p["metadata"]["name"] for p in running if p["metadata"]["name"] != leader)
    assert leader in {p["metadata"]["name"] for p in running}

    # A resource the first leader sets up (no download and no server needed: source pvc, 0 replicas).
    cluster.apply(seed(model={"id": "LLM-Research/gemma-3-4b-it", "source": "pvc", "path": "models/gemma"},
                       cache={"existingClaim": "gemma-weights"}, replicas=0), namespace=ns)
    wait_for(lambda: "--max-model-len" in _deployment_args(release, ns), timeout=120, message="the first leader's Deployment")

    started = time.monotonic()
    cluster.kubectl("delete", "pod", leader, "-n", release.namespace, "--wait=false")
    wait_for(lambda: release.holder() == standby, timeout=LEASE_SECONDS * 3, interval=0.25,
             message=f"the standby {standby} holding the Lease")
    took = time.monotonic() - started
    print(f"\n[node] leader {leader} deleted; {standby} took the Lease after {took:.1f} s")
    assert took <= LEASE_SECONDS + TAKEOVER_SLACK_SECONDS

    cluster.kubectl("patch", "gemma", "gemma", "-n", ns, "--type=merge", "-p", '{"spec":{"maxModelLen":1536}}')
    wait_for(lambda: (a := _deployment_args(release, ns)) and a[a.index("--max-model-len") + 1] == "1536",
             timeout=60, message="the new leader applying the change")
    release.wait_ready()  # the Deployment replaced the deleted pod; its new pod stands by


def test_helm_test_calls_the_operator_and_fails_without_it(release: Release) -> None:
    release.helm("test", release.name, "-n", release.namespace, "--timeout", "3m")
    answer = release.cluster.kubectl("logs", f"job/{release.name}-test-healthz", "-n", release.namespace).stdout
    assert answer.strip().endswith("/healthz 200 ok"), answer
    deployment = release.name
    release.cluster.kubectl("scale", "deployment", deployment, "-n", release.namespace, "--replicas=0")
    try:
        # Gone, not only terminating: kube-proxy still sends traffic to terminating pods that serve when
        # no ready one is left, and an operator pod answers /healthz until it exits.
        wait_for(lambda: not release.pods(include_terminating=True), timeout=120, message="no operator pod")
        down = release.helm("test", release.name, "-n", release.namespace, "--timeout", "3m", check=False)
        assert down.returncode != 0, f"helm test passed with no operator running:\n{down.stdout}"
    finally:
        release.cluster.kubectl("scale", "deployment", deployment, "-n", release.namespace, "--replicas=2")
        release.wait_ready()
