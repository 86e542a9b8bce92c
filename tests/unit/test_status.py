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
