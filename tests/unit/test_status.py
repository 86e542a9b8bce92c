from __future__ import annotations

from typing import Any

from gemma_operator import status, transitions
from gemma_operator.spec import GemmaDeployment

NOW = "2026-11-25T00:00:00Z"
LATER = "2026-11-25T00:05:00Z"


def job(condition: str | None = None, active: int = 0, name: str = "gemma-download-x") -> dict[str, Any]:
    st: dict[str, Any] = {"active": active}
    if condition:
        st["conditions"] = [{"type": condition, "status": "True", "message": "Job has reached the specified backoff limit"}]
    return {"metadata": {"name": name}, "status": st}


def deployment(ready: int, replicas: int, updated: int | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": {
        "observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
        "updatedReplicas": replicas if updated is None else updated}}


def unschedulable_pod() -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 2 Insufficient nvidia.com/gpu, 1 node(s) didn't match."}]}}


def cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_ready_when_every_replica_is_ready(gd: GemmaDeployment) -> None:
    obs = status.Observed(job=job("Complete"), deployment=deployment(1, 1), pvc={"status": {"phase": "Bound"}})
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Ready"
    assert st["ready"] == "1/1" and st["readyReplicas"] == 1
    assert st["endpoint"] == "http://gemma.ml.svc.cluster.local:8000/v1"
    assert cond(st, "Available")["status"] == "True"
    assert cond(st, "ModelReady")["reason"] == "Downloaded"
    assert cond(st, "Degraded")["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])
    assert st["observedGeneration"] == 3


def test_downloading_shows_progress(gd: GemmaDeployment) -> None:
    obs = status.Observed(job=job(active=1), progress=status.Progress(250, 1000), pvc={"status": {"phase": "Bound"}})
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Downloading"
    assert st["download"] == {"state": "Running", "jobName": "gemma-download-x", "bytesDone": 250, "bytesTotal": 1000, "percent": 25}
    assert st["progress"] == "25%"
    assert "25%" in cond(st, "ModelReady")["message"]


def test_failed_download_names_the_downloaders_message(gd: GemmaDeployment) -> None:
    pod = {"metadata": {"name": "d", "creationTimestamp": NOW}, "status": {"containerStatuses": [{"state": {"terminated": {
        "exitCode": 3, "message": "download failed: model LLM-Research/gemma-3-4b-itx not found on modelscope"}}}]}}
    obs = status.Observed(job=job("Failed"), job_pods=[pod])
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Failed"
    model = cond(st, "ModelReady")
    assert (model["status"], model["reason"]) == ("False", "DownloadFailed")
    assert "gemma-3-4b-itx not found on modelscope" in model["message"]


def test_failed_job_without_pod_message_falls_back_to_the_job(gd: GemmaDeployment) -> None:
    st = status.compute_status(gd, status.Observed(job=job("Failed")), {}, NOW)
    assert "backoff limit" in cond(st, "ModelReady")["message"]


def test_pending_cache_volume_says_so_once_it_stays_pending(gd: GemmaDeployment) -> None:
    pvc = {"spec": {"storageClassName": "fast"}, "status": {"phase": "Pending"}}
    fresh = status.compute_status(gd, status.Observed(job=job(), pvc=pvc, pvc_age_seconds=1), {}, NOW)
    assert cond(fresh, "ModelReady")["reason"] == "DownloadPending"
    obs = status.Observed(job=job(), pvc=pvc, pvc_age_seconds=6)
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Pending"
    assert cond(st, "ModelReady")["reason"] == "CacheVolumePending"
    assert "fast" in cond(st, "ModelReady")["message"]


def test_unschedulable_pods_degrade_with_the_schedulers_reason(gemma_body: dict[str, Any]) -> None:
    gd = GemmaDeployment.from_body(gemma_body | {"spec": gemma_body["spec"] | {"replicas": 9}})
    obs = status.Observed(job=job("Complete"), deployment=deployment(8, 9), server_pods=[unschedulable_pod()])
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Degraded" and st["ready"] == "8/9"
    degraded = cond(st, "Degraded")
    assert degraded["reason"] == "PodsUnschedulable"
    assert degraded["message"].startswith("8/9 ready: 1 pod unschedulable")
    assert "Insufficient nvidia.com/gpu" in degraded["message"]
    assert cond(st, "Available")["status"] == "True"


def test_crash_loop_quotes_vllms_error(gd: GemmaDeployment) -> None:
    pod = {"metadata": {"name": "s"}, "status": {"containerStatuses": [{
        "ready": False, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                     "message": "Traceback...\nValueError: max_model_len (131072) is greater than 32768"}}}]}}
    st = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[pod]), {}, NOW)
    assert st["phase"] == "Degraded"
    assert cond(st, "Degraded")["reason"] == "CrashLoopBackOff"
    assert "max_model_len (131072)" in cond(st, "Degraded")["message"]


def test_oom_and_image_pull_are_named(gd: GemmaDeployment) -> None:
    oom = {"metadata": {"name": "a"}, "status": {"containerStatuses": [{"restartCount": 1, "ready": False,
           "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}
    pull = {"metadata": {"name": "b"}, "status": {"containerStatuses": [{"image": "vllm:nope",
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}}
    for pod, reason in ((oom, "OOMKilled"), (pull, "ImagePullFailed")):
        obs = status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[pod])
        assert cond(status.compute_status(gd, obs, {}, NOW), "Degraded")["reason"] == reason


def test_rolling_update_is_progressing_not_ready(gd: GemmaDeployment) -> None:
    obs = status.Observed(job=job("Complete"), deployment=deployment(0, 1, updated=0, generation=2))
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Starting"
    assert cond(st, "Progressing")["status"] == "True"


def test_pvc_source_skips_the_download(gemma_body: dict[str, Any]) -> None:
    gd = GemmaDeployment.from_body(gemma_body | {"spec": gemma_body["spec"] | {
        "model": {"id": "a/b", "source": "pvc"}, "cache": {"existingClaim": "w"}}})
    st = status.compute_status(gd, status.Observed(deployment=deployment(1, 1)), {}, NOW)
    assert st["phase"] == "Ready" and st["download"] == {"state": "NotRequired"}
    assert cond(st, "ModelReady")["reason"] == "ModelOnVolume"


def test_download_done_before_survives_a_deleted_job(gd: GemmaDeployment) -> None:
    st = status.compute_status(gd, status.Observed(download_done_before=True, deployment=deployment(1, 1)), {}, NOW)
    assert st["phase"] == "Ready"


def test_unchanged_input_gives_identical_status(gd: GemmaDeployment) -> None:
    obs = status.Observed(job=job("Complete"), deployment=deployment(1, 1))
    first = status.compute_status(gd, obs, {}, NOW)
    second = status.compute_status(gd, obs, first, LATER)
    assert first == second
    assert transitions.merge_patch(first, second) == {}


def test_transition_time_moves_only_when_status_flips(gd: GemmaDeployment) -> None:
    starting = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(0, 1)), {}, NOW)
    ready = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(1, 1)), starting, LATER)
    assert cond(ready, "Available")["lastTransitionTime"] == LATER
    assert cond(ready, "ModelReady")["lastTransitionTime"] == NOW


def test_invalid_spec_is_failed_with_the_message() -> None:
    st = status.invalid_spec_status(2, "spec.model: Field required", {}, NOW)
    assert st["phase"] == "Failed"
    assert cond(st, "Degraded")["reason"] == "InvalidSpec"


def test_events_on_transitions() -> None:
    downloading = {"phase": "Downloading", "conditions": [{"type": "ModelReady", "status": "False", "reason": "Downloading", "message": "m"}]}
    ready = {"phase": "Ready", "ready": "1/1", "conditions": [
        {"type": "ModelReady", "status": "True", "reason": "Downloaded", "message": "done"},
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "1/1 ready"}]}
    assert [e[1] for e in transitions.events_between({}, downloading)] == ["DownloadStarted"]
    assert [e[1] for e in transitions.events_between(downloading, ready)] == ["DownloadSucceeded", "ServersReady"]
    assert transitions.events_between(ready, ready) == []


def test_merge_patch_nulls_removed_keys() -> None:
    assert transitions.merge_patch({"download": {"percent": 5, "bytesDone": 1}}, {"download": {"percent": 100}}) == {
        "download": {"percent": 100, "bytesDone": None}}


def test_download_pod_that_cannot_run_is_named(gd: GemmaDeployment) -> None:
    st = status.compute_status(gd, status.Observed(job=job(active=1), job_pods=[unschedulable_pod()]), {}, NOW)
    assert st["phase"] == "Pending"
    model = cond(st, "ModelReady")
    assert model["reason"] == "DownloadBlocked" and "Insufficient nvidia.com/gpu" in model["message"]
    assert cond(st, "Degraded")["status"] == "True"


def test_missing_secret_reported_by_the_kubelet_is_named(gd: GemmaDeployment) -> None:
    waiting = {"reason": "CreateContainerConfigError", "message": 'secret "no-such-secret" not found'}
    pod = {"metadata": {"name": "s"}, "status": {"containerStatuses": [{"ready": False, "state": {"waiting": waiting}}]}}
    served = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[pod]), {}, NOW)
    assert served["phase"] == "Degraded"
    assert cond(served, "Degraded")["reason"] == "ContainerConfigError"
    assert 'secret "no-such-secret" not found' in cond(served, "Degraded")["message"]
    downloading = status.compute_status(gd, status.Observed(job=job(active=1), job_pods=[pod]), {}, NOW)
    assert cond(downloading, "ModelReady")["reason"] == "DownloadBlocked"
    assert 'secret "no-such-secret" not found' in cond(downloading, "ModelReady")["message"]


def test_a_restart_that_is_not_backing_off_is_server_restarting(gd: GemmaDeployment) -> None:
    """A killed vLLM process restarts at once: not a crash loop, but not ready until vLLM has loaded again."""
    pod = {"metadata": {"name": "s"}, "status": {"containerStatuses": [{
        "ready": False, "restartCount": 1, "state": {"running": {"startedAt": NOW}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}}}]}}
    st = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[pod]), {}, NOW)
    degraded = cond(st, "Degraded")
    assert (st["phase"], degraded["reason"]) == ("Degraded", "ServerRestarting")
    assert "restart 1" in degraded["message"] and "exit code 137" in degraded["message"]


# ---------------------------------------------------------------- a replica waiting for the cache volume (issue 12)


def volume_waiting_pod(name: str = "gemma-abc-2", scheduled_at: str = NOW, sandbox: str = "False",
                       reason: str = "ContainerCreating") -> dict[str, Any]:
    """A second replica on another node than the ReadWriteOnce cache: what the kubelet reports while
    FailedAttachVolume (Multi-Attach) repeats: scheduled, no sandbox, the container ContainerCreating."""
    return {"metadata": {"name": name, "creationTimestamp": NOW}, "spec": {"nodeName": "gpu-node-2"}, "status": {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at},
                       {"type": "PodReadyToStartContainers", "status": sandbox, "lastTransitionTime": scheduled_at},
                       {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [{"name": "vllm", "ready": False, "restartCount": 0, "image": "vllm/vllm-openai:test",
                               "state": {"waiting": {"reason": reason}}}]}}


def ready_pod(name: str = "gemma-abc-1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}], "containerStatuses": [{"name": "vllm", "ready": True, "state": {"running": {}}}]}}


def test_replica_stuck_on_a_read_write_once_cache_is_told_with_the_fix(gemma_body: dict[str, Any]) -> None:
    gd = GemmaDeployment.from_body(gemma_body | {"spec": gemma_body["spec"] | {"replicas": 2}})
    pods = [ready_pod(), volume_waiting_pod()]
    obs = status.Observed(job=job("Complete"), deployment=deployment(1, 2), server_pods=pods, now=LATER)
    st = status.compute_status(gd, obs, {}, LATER)
    degraded = cond(st, "Degraded")
    assert st["phase"] == "Degraded" and degraded["status"] == "True"
    assert degraded["reason"] == "CacheVolumeUnavailable"
    for words in ("1/2 ready", "gemma-abc-2", "gpu-node-2", f"since {NOW}", "gemma-cache", "ReadWriteOnce", "Multi-Attach",
                  "spec.cache.accessModes", "[ReadWriteMany]", "one node"):
        assert words in degraded["message"], degraded["message"]
    assert cond(st, "Available")["status"] == "True"  # the first replica still serves
    # The reconciler's transition to it writes a Warning Event of the same reason.
    assert ("Warning", "CacheVolumeUnavailable", degraded["message"]) in transitions.events_between({}, st)
    # A later pass words it the same (no growing count of seconds): no status write on every pass.
    much_later = "2026-11-25T01:00:00Z"
    again = status.compute_status(gd, status.Observed(job=job("Complete"), deployment=deployment(1, 2), server_pods=pods,
                                                      now=much_later), st, much_later)
    assert transitions.merge_patch(st, again) == {}


def test_volume_wait_within_the_grace_period_is_only_starting(gd: GemmaDeployment) -> None:
    just = "2026-11-25T00:00:30Z"
    obs = status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[volume_waiting_pod()], now=just)
    st = status.compute_status(gd, obs, {}, just)
    assert st["phase"] == "Starting" and cond(st, "Degraded")["status"] == "False"
    # ... and the reconciler looks again right after the grace period ends (no pod event would come).
    assert status.next_volume_check(obs.server_pods, just) == status.VOLUME_WAIT_GRACE_SECONDS - 30 + 1
    assert status.next_volume_check(obs.server_pods, LATER) is None


def test_image_pull_and_unknown_time_are_not_a_volume_wait(gd: GemmaDeployment) -> None:
    # The sandbox exists (volumes mounted): a long ContainerCreating is an image pull, not the volume.
    pulling = volume_waiting_pod(sandbox="True")
    old_kubelet = volume_waiting_pod()  # no PodReadyToStartContainers condition (kubelet < 1.29)
    old_kubelet["status"]["conditions"] = [c for c in old_kubelet["status"]["conditions"]
                                           if c["type"] != "PodReadyToStartContainers"]
    for pods, now in (([pulling], LATER), ([old_kubelet], LATER), ([volume_waiting_pod()], "")):
        obs = status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=pods, now=now)
        st = status.compute_status(gd, obs, {}, LATER)
        assert cond(st, "Degraded")["reason"] == "AsExpected", pods


def test_unschedulable_for_the_volumes_node_is_a_cache_problem(gd: GemmaDeployment) -> None:
    pod = unschedulable_pod()
    pod["status"]["conditions"][0]["message"] = ("0/3 nodes are available: 1 node(s) had volume node affinity conflict, "
                                                 "2 Insufficient nvidia.com/gpu.")
    obs = status.Observed(job=job("Complete"), deployment=deployment(0, 1), server_pods=[pod], now=LATER)
    degraded = cond(status.compute_status(gd, obs, {}, LATER), "Degraded")
    assert degraded["reason"] == "CacheVolumeUnavailable"
    assert "volume node affinity conflict" in degraded["message"] and "[ReadWriteMany]" in degraded["message"]


def test_replicas_packed_by_the_cache_affinity_say_why(gd: GemmaDeployment) -> None:
    pod = unschedulable_pod()
    pod["status"]["conditions"][0]["message"] = ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, "
                                                 "1 node(s) didn't match pod affinity rules.")
    obs = status.Observed(job=job("Complete"), deployment=deployment(4, 5), server_pods=[pod], now=LATER)
    degraded = cond(status.compute_status(gd, obs, {}, LATER), "Degraded")
    assert degraded["reason"] == "PodsUnschedulable"
    assert "pod affinity" in degraded["message"] and "spec.cache.accessModes [ReadWriteMany]" in degraded["message"]


def test_existing_claim_wait_names_the_claim(gemma_body: dict[str, Any]) -> None:
    gd = GemmaDeployment.from_body(gemma_body | {"spec": gemma_body["spec"] | {
        "model": {"id": "LLM-Research/gemma-3-4b-it", "source": "pvc"}, "cache": {"existingClaim": "weights"}}})
    obs = status.Observed(deployment=deployment(0, 1), server_pods=[volume_waiting_pod()], now=LATER)
    degraded = cond(status.compute_status(gd, obs, {}, LATER), "Degraded")
    assert degraded["reason"] == "CacheVolumeUnavailable"
    assert "claim weights" in degraded["message"] and "ReadWriteMany" in degraded["message"]


def test_status_gives_the_gateway_url_and_model_only_when_there_is_a_gateway(gd: GemmaDeployment) -> None:
    obs = status.Observed(job=job("Complete"), deployment=deployment(1, 1), pvc={"status": {"phase": "Bound"}})
    assert "gateway" not in status.compute_status(gd, obs, {}, NOW)
    url = "http://gemma-operator-gateway.gemma-system.svc.cluster.local:8000/v1"
    st = status.compute_status(gd, obs, {}, NOW, gateway_url=url)
    assert st["gateway"] == {"url": url, "model": gd.served_model_name}
