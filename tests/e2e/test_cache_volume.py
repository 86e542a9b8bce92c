"""Issue 12: replicas and a ReadWriteOnce cache; repeated Events are one Event whose count grows.

A KWOK pod never mounts anything, so the wait for a volume that another node holds (the kubelet's
FailedAttachVolume Multi-Attach) is played by writing to the pod's status what a kubelet reports then:
scheduled, no pod sandbox (PodReadyToStartContainers False), the container waiting in ContainerCreating.
The pods carry a sim.gemma.ai/state that no KWOK stage knows, so KWOK leaves their status to the test.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from tests.e2e.gemma_helpers import (
    condition,
    ready_pods,
    seed,
    server_pods,
    status,
    wait_gpus_free,
    wait_phase,
)
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

SHOWN_WITHIN = 15.0
TIME = "%Y-%m-%dT%H:%M:%SZ"


def test_read_write_once_replicas_share_the_node_of_the_volume(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess
) -> None:
    # The default cache is ReadWriteOnce: replicas: 2 works out of the box because both servers go to one node.
    wait_gpus_free(crd, needed=2)
    crd.apply(seed(replicas=2), namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)
    nodes = {p["spec"]["nodeName"] for p in ready_pods(crd, namespace)}
    assert len(ready_pods(crd, namespace)) == 2 and len(nodes) == 1, nodes
    affinity = crd.get("deployment", "gemma", namespace)["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def _waiting_for_volumes(pod: dict[str, Any], scheduled_at: str) -> dict[str, Any]:
    return {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": scheduled_at},
        {"type": "Initialized", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": scheduled_at},
        {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": scheduled_at},
    ], "containerStatuses": [
        {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0, "started": False,
         "state": {"waiting": {"reason": "ContainerCreating"}}} for c in pod["spec"]["containers"]
    ]}


def _running(pod: dict[str, Any], scheduled_at: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC).strftime(TIME)
    return {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": scheduled_at},
        {"type": "Ready", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
    ], "containerStatuses": [
        {"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "restartCount": 0, "started": True,
         "state": {"running": {"startedAt": now}}} for c in pod["spec"]["containers"]
    ]}


def _set_pod_status(cluster: kube.Cluster, ns: str, pod: dict[str, Any], st: dict[str, Any]) -> None:
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": st}))


def _events(cluster: kube.Cluster, ns: str, reason: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "events", "-n", ns, "--field-selector",
                                f"involvedObject.kind=GemmaDeployment,reason={reason}")["items"]


def test_replica_waiting_for_the_cache_is_told_and_repeats_are_counted(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess
) -> None:
    wait_gpus_free(crd)
    crd.apply(seed(podAnnotations={"sim.gemma.ai/state": "volume-wait"}), namespace)
    pod = wait_for(lambda: next((p for p in server_pods(crd, namespace) if p["spec"].get("nodeName")), None),
                   timeout=90, message="a scheduled server pod")
    # Scheduled ten minutes ago: well past the grace period that a normal attach gets.
    scheduled_at = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=10)).strftime(TIME)

    def degraded_by_the_volume() -> dict[str, Any] | None:
        st = status(crd, namespace)
        found = condition(st, "Degraded")
        return found if found.get("reason") == "CacheVolumeUnavailable" and st.get("phase") == "Degraded" else None

    for round_ in (1, 2):
        _set_pod_status(crd, namespace, pod, _waiting_for_volumes(pod, scheduled_at))
        degraded = wait_for(degraded_by_the_volume, timeout=SHOWN_WITHIN, interval=0.25,
                            message=f"Degraded CacheVolumeUnavailable (round {round_})")
        for words in (pod["metadata"]["name"], pod["spec"]["nodeName"], "cache-gemma-3-4b-it-", "ReadWriteOnce",
                      "Multi-Attach", "spec.cache.accessModes", "[ReadWriteMany]", "one node"):
            assert words in degraded["message"], degraded["message"]
        described = crd.kubectl("describe", "gemma", "gemma", "-n", namespace).stdout
        assert "CacheVolumeUnavailable" in described
        events = wait_for(lambda: _events(crd, namespace, "CacheVolumeUnavailable"), timeout=10,
                          message="a CacheVolumeUnavailable Event")
        assert all(e["type"] == "Warning" for e in events)
        # The volume comes (the other replica let go of it, or the fix was applied): Ready again.
        _set_pod_status(crd, namespace, pod, _running(pod, scheduled_at))
        st = wait_phase(crd, namespace, "Ready", timeout=60)
        assert condition(st, "Degraded")["status"] == "False"

    # The same transition twice is one Event whose count is 2, not two Events (client-go's correlation).
    ready = wait_for(lambda: (e := _events(crd, namespace, "ServersReady")) and sum(x.get("count") or 1 for x in e) >= 2
                     and e, timeout=10, message="ServersReady recorded twice")
    assert len(ready) == 1 and ready[0]["count"] == 2, ready
    assert ready[0]["lastTimestamp"] >= ready[0]["firstTimestamp"]
    # The Warning's message starts with the ready count the transition saw (the Deployment's status may lag the
    # pod's): equal messages are one Event, counted; a different one is another Event.
    volume = _events(crd, namespace, "CacheVolumeUnavailable")
    assert sum(e.get("count") or 1 for e in volume) == 2, volume
    assert len(volume) == len({e["message"] for e in volume}), [(e["message"], e["count"]) for e in volume]
