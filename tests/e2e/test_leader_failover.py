"""Issue 12: two operator processes with leader election on the real control plane: one acts, the other
waits; the leader is killed, the standby takes over, and nothing is applied twice."""

from __future__ import annotations

import datetime
from pathlib import Path

from tests.e2e.gemma_helpers import operator_writes, seed, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

LEASE = "gemma-operator-leader"


def holder(cluster: kube.Cluster, namespace: str) -> str:
    lease = cluster.get("lease", LEASE, namespace)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def child_writes(cluster: kube.Cluster, namespace: str, since: str) -> list[tuple[str, str, str]]:
    """(verb, resource, name) of the operator's writes to anything but its Lease that the API server
    received after `since` (RFC 3339, UTC, microseconds: the audit log's own format)."""
    return [
        (e["verb"], e["objectRef"].get("resource", ""), e["objectRef"].get("name", ""))
        for e in operator_writes(cluster, namespace)
        if e["objectRef"].get("resource") != "leases" and e["verb"] in ("create", "update", "patch", "delete")
        and e["requestReceivedTimestamp"] > since
    ]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_the_standby_takes_over_when_the_leader_is_killed(crd: kube.Cluster, namespace: str, tmp_path: Path) -> None:
    args = ["--namespace", namespace, "--leader-election", "--leader-election-namespace", namespace]
    first = OperatorProcess(crd.kubeconfig, tmp_path / "first.log", args=args).start()
    wait_for(lambda: holder(crd, namespace), timeout=30, message="a leader")
    second = OperatorProcess(crd.kubeconfig, tmp_path / "second.log", args=args).start()
    try:
        assert first.proc is not None and second.proc is not None
        assert holder(crd, namespace).endswith(f"-{first.proc.pid}")
        wait_gpus_free(crd, needed=2)
        for name in ("one", "two"):
            body = seed()
            body["metadata"]["name"] = name
            crd.apply([body], namespace)
        for name in ("one", "two"):
            wait_phase(crd, namespace, "Ready", name=name, timeout=90)
        # The standby has done nothing: it does not even watch while it waits.
        assert first.metric("gemma_operator_leader") == 1 and second.metric("gemma_operator_leader") == 0
        assert second.metric("gemma_operator_reconciles_total", kind="GemmaDeployment", result="ok") == 0
        first.kill()  # SIGKILL: no release of the Lease, the standby waits for it to expire
        # Whatever the API server receives from now on comes from the standby.
        killed_at = utc_now()
        wait_for(lambda: holder(crd, namespace).endswith(f"-{second.proc.pid}"), timeout=60,
                 message="the standby holds the Lease")
        wait_for(lambda: second.metric("gemma_operator_reconciles_total", kind="GemmaDeployment", result="ok") >= 2,
                 timeout=30, message="the new leader looked at both GemmaDeployments")
        # The new leader found everything as the old one left it: not one write to a child or a status.
        assert child_writes(crd, namespace, killed_at) == []

        # And it acts: a change made now is applied, once.
        crd.kubectl("patch", "gemma", "one", "-n", namespace, "--type=merge", "-p", '{"spec":{"maxModelLen":3000}}')

        def rolled() -> bool:
            dep = crd.get("deployment", "one", namespace)
            return dep is not None and "3000" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

        wait_for(rolled, timeout=60, message="the new leader applied the change")
        wait_phase(crd, namespace, "Ready", name="one", timeout=60)
        new = child_writes(crd, namespace, killed_at)
        deployment_writes = [w for w in new if w[1] == "deployments"]
        assert deployment_writes == [("patch", "deployments", "one")], new
        second.assert_running()
    finally:
        first.stop()
        second.stop()
