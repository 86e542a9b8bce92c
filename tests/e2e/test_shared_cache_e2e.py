"""Issue 15, one download per model: two GemmaDeployments of one model revision in a namespace share one
cache claim and one download Job (docs/model-cache.md). The stand-in hub counts the file requests of one
download only, both reach Ready; the cache outlives the first and goes with the last.

KWOK has no kubelet: as in test_cache.py, the test plays the kubelet's part for the download pod by running
the container of each download Job the operator made, as a local process, with the claim's volume as /models,
against the stand-in hub on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.download.hubs import ModelScopeHub, Repo, make_repo_files
from tests.e2e.gemma_helpers import condition, seed, status, wait_gpus_free, wait_phase
from tests.e2e.test_cache import run_download_pod
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

MODEL = "LLM-Research/gemma-3-4b-it"


@pytest.fixture
def shared_hub() -> Iterator[ModelScopeHub]:
    server = ModelScopeHub({MODEL: {"master": Repo(make_repo_files(shard_bytes=128 * 1024))}}).start()
    yield server
    server.stop()


def _gd(name: str, hub: ModelScopeHub) -> dict[str, Any]:
    body = seed(cache={"size": "1Gi"}, model={"id": MODEL, "endpoint": hub.url})
    body["metadata"]["name"] = name
    return body


def _download_jobs(cluster: kube.Cluster, ns: str) -> list[dict[str, Any]]:
    return cluster.kubectl_json("get", "jobs", "-n", ns, "-l", "app.kubernetes.io/component=download")["items"]


def _cache_claims(cluster: kube.Cluster, ns: str) -> list[dict[str, Any]]:
    return [p for p in cluster.kubectl_json("get", "pvc", "-n", ns, "-l", "app.kubernetes.io/component=cache")["items"]
            if not p["metadata"].get("deletionTimestamp")]


def _owners(obj: dict[str, Any] | None) -> list[str]:
    return sorted(r["name"] for r in ((obj or {}).get("metadata") or {}).get("ownerReferences") or [])


def test_two_deployments_of_one_model_download_it_once(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess, shared_hub: ModelScopeHub, tmp_path: Path
) -> None:
    wait_gpus_free(crd, needed=2)
    for name in ("first", "second"):
        crd.apply(_gd(name, shared_hub), namespace)
    first = wait_phase(crd, namespace, "Ready", name="first", timeout=90)
    second = wait_phase(crd, namespace, "Ready", name="second", timeout=90)

    # One claim, one Job, both owned by the two GemmaDeployments (neither removed the other).
    claim = first["cache"]["claimName"]
    assert second["cache"]["claimName"] == claim and claim.startswith("cache-gemma-3-4b-it-")
    assert [p["metadata"]["name"] for p in _cache_claims(crd, namespace)] == [claim]
    (job,) = _download_jobs(crd, namespace)
    assert job["metadata"]["name"] == f"{claim}-download"
    assert first["download"]["jobName"] == second["download"]["jobName"] == job["metadata"]["name"]
    wait_for(lambda: _owners(crd.get("job", job["metadata"]["name"], namespace)) == ["first", "second"]
             and _owners(crd.get("pvc", claim, namespace)) == ["first", "second"],
             timeout=15, message="the cache owned by both GemmaDeployments")
    assert not any(r.get("controller") for r in crd.get("pvc", claim, namespace)["metadata"]["ownerReferences"])
    wait_for(lambda: (status(crd, namespace, "second").get("cache") or {}).get("users") == 2, timeout=15,
             message="status.cache.users 2")
    assert "shared with GemmaDeployment" in condition(status(crd, namespace, "second"), "ModelReady")["message"]
    wide = crd.kubectl("get", "gemma", "-n", namespace, "-o", "wide").stdout
    assert "CACHE" in wide.splitlines()[0] and claim in wide

    # Play the kubelet for every download Job there is: one. The hub sees one download, each file once.
    done = run_download_pod(crd, namespace, claim, tmp_path)
    assert done["event"] == "done" and not done["alreadyComplete"]
    repo = shared_hub.repos[MODEL]["master"]
    fetched = Counter(r.query.get("FilePath") for r in shared_hub.file_requests())
    assert sorted(fetched) == sorted(repo.files) and set(fetched.values()) == {1}, fetched

    # Deleting the first keeps the cache (same object) and the second stays Ready without a new Job.
    pvc_uid = crd.get("pvc", claim, namespace)["metadata"]["uid"]
    crd.kubectl("delete", "gemma", "first", "-n", namespace, "--wait=true")
    wait_for(lambda: crd.get("deployment", "first", namespace) is None, timeout=60, message="first's servers removed")
    wait_for(lambda: _owners(crd.get("pvc", claim, namespace)) == ["second"]
             and _owners(crd.get("job", job["metadata"]["name"], namespace)) == ["second"],
             timeout=30, message="the cache owned by the second alone")
    time.sleep(3)  # the garbage collector has had its chance
    kept = crd.get("pvc", claim, namespace)
    assert kept is not None and kept["metadata"]["uid"] == pvc_uid and not kept["metadata"].get("deletionTimestamp")
    assert [j["metadata"]["uid"] for j in _download_jobs(crd, namespace)] == [job["metadata"]["uid"]]
    assert status(crd, namespace, "second")["phase"] == "Ready"
    shared_hub.clear_log()

    # Deleting the last one removes the cache (its claim and its Job) through garbage collection.
    crd.kubectl("delete", "gemma", "second", "-n", namespace, "--wait=true")
    wait_for(lambda: not _cache_claims(crd, namespace) and not _download_jobs(crd, namespace), timeout=60,
             message="the cache removed with its last GemmaDeployment")
    assert shared_hub.file_requests() == []


def test_a_deployment_that_keeps_the_cache_leaves_it_for_the_next_one(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess, shared_hub: ModelScopeHub, tmp_path: Path
) -> None:
    wait_gpus_free(crd)
    kept = _gd("kept", shared_hub)
    kept["spec"]["cache"]["retainOnDelete"] = True
    crd.apply(kept, namespace)
    claim = wait_phase(crd, namespace, "Ready", name="kept", timeout=90)["cache"]["claimName"]
    assert _owners(crd.get("pvc", claim, namespace)) == [], "a kept cache is owned by no GemmaDeployment"
    assert run_download_pod(crd, namespace, claim, tmp_path)["alreadyComplete"] is False
    crd.kubectl("delete", "gemma", "kept", "-n", namespace, "--wait=true")
    wait_for(lambda: not _download_jobs(crd, namespace), timeout=60, message="the Job goes with its GemmaDeployment")
    assert crd.get("pvc", claim, namespace) is not None

    # A new GemmaDeployment of the same model takes the kept claim up: no file is downloaded again.
    shared_hub.clear_log()
    crd.apply(_gd("later", shared_hub), namespace)
    later = wait_phase(crd, namespace, "Ready", name="later", timeout=90)
    assert later["cache"]["claimName"] == claim
    assert run_download_pod(crd, namespace, claim, tmp_path)["alreadyComplete"] is True
    assert shared_hub.file_requests() == []


def test_new_cache_settings_are_a_new_cache_and_the_old_one_goes_with_its_deployment(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess, shared_hub: ModelScopeHub
) -> None:
    """A bound claim cannot shrink or change its class, so the volume settings are part of the cache's key: new
    settings are a new cache (a new claim and Job), never an apply that fails on an immutable claim."""
    wait_gpus_free(crd)
    crd.apply(_gd("resized", shared_hub), namespace)
    old = wait_phase(crd, namespace, "Ready", name="resized", timeout=90)["cache"]["claimName"]
    body = _gd("resized", shared_hub)
    body["spec"]["cache"]["size"] = "512Mi"  # smaller than the bound claim: refused by Kubernetes on that claim
    crd.apply(body, namespace)

    def moved() -> bool:
        st = status(crd, namespace, "resized")
        return (st.get("observedGeneration") == 2 and st.get("phase") == "Ready"
                and (st.get("cache") or {}).get("claimName") not in (None, old))

    wait_for(moved, timeout=90, message="Ready on a new cache claim")
    new = status(crd, namespace, "resized")["cache"]["claimName"]
    assert crd.get("pvc", new, namespace)["spec"]["resources"]["requests"]["storage"] == "512Mi"
    dep = crd.get("deployment", "resized", namespace)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [new]
    wait_for(lambda: [j["metadata"]["name"] for j in _download_jobs(crd, namespace)
                      if not j["metadata"].get("deletionTimestamp")] == [f"{new}-download"],
             timeout=60, message="the old cache's Job deleted once the servers moved")
    # The operator deletes no claim: the old one stays owned by its last user and goes with it.
    assert _owners(crd.get("pvc", old, namespace)) == ["resized"]
    crd.kubectl("delete", "gemma", "resized", "-n", namespace, "--wait=true")
    wait_for(lambda: not _cache_claims(crd, namespace), timeout=60, message="both claims removed with their user")
