"""Issue 7: the model cache is never lost. A user's existingClaim survives its GemmaDeployment, and a cache
kept with retainOnDelete is reused by a new GemmaDeployment without downloading again.

KWOK has no kubelet, so these tests play the kubelet's part for the download pod: they run the container of
the Job the operator rendered (its arguments and environment) as a local process, with the claim's
PersistentVolume directory as /models, against a stand-in hub on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.download.hubs import ModelScopeHub, Repo, make_repo_files
from tests.e2e.gemma_helpers import seed, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

MODEL = "LLM-Research/gemma-3-4b-it"


@pytest.fixture
def hub() -> Iterator[ModelScopeHub]:
    server = ModelScopeHub({MODEL: {"master": Repo(make_repo_files(shard_bytes=256 * 1024))}}).start()
    yield server
    server.stop()


def volume_dir(cluster: kube.Cluster, ns: str, claim: str) -> Path:
    pvc = wait_for(lambda: (c := cluster.get("pvc", claim, ns)) and c["status"].get("phase") == "Bound" and c,
                   timeout=30, message=f"claim {claim} Bound")
    pv = cluster.get("pv", pvc["spec"]["volumeName"])
    assert pv is not None
    path = Path(pv["spec"]["hostPath"]["path"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_download_pod(cluster: kube.Cluster, ns: str, claim: str, tmp: Path) -> dict[str, Any]:
    """Run the download container of the operator's Job into `claim` with the claim's volume as /models."""
    jobs = [j for j in cluster.kubectl_json("get", "jobs", "-n", ns)["items"]
            if j["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim]
    assert len(jobs) == 1
    container = jobs[0]["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    args[args.index("--cache-root") + 1] = str(volume_dir(cluster, ns, claim))
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"HOME": str(tmp), "TMPDIR": str(tmp), "PATH": os.environ["PATH"]}
    proc = subprocess.run([sys.executable, "-m", "gemma_operator.download", *args, "--termination-log", str(tmp / "term")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_existing_claim_and_its_data_survive_deletion(crd: kube.Cluster, namespace: str, operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    crd.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "user-weights"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}, namespace)
    data = volume_dir(crd, namespace, "user-weights") / "precious.txt"
    data.write_text("the user's data")
    uid = crd.get("pvc", "user-weights", namespace)["metadata"]["uid"]

    crd.apply(seed(cache={"existingClaim": "user-weights"}), namespace)
    wait_phase(crd, namespace, "Ready", timeout=90)
    pvc = crd.get("pvc", "user-weights", namespace)
    assert not pvc["metadata"].get("ownerReferences"), "the operator took ownership of the user's claim"
    assert crd.get("pvc", "gemma-cache", namespace) is None

    crd.kubectl("delete", "gemma", "gemma", "-n", namespace)
    wait_for(lambda: crd.get("deployment", "gemma", namespace) is None, timeout=60, message="servers removed")
    pvc = crd.get("pvc", "user-weights", namespace)
    assert pvc is not None and pvc["metadata"]["uid"] == uid and pvc["status"]["phase"] == "Bound"
    assert not pvc["metadata"].get("deletionTimestamp")
    assert data.read_text() == "the user's data"


def test_kept_cache_is_reused_without_downloading(
    crd: kube.Cluster, namespace: str, operator: OperatorProcess, hub: ModelScopeHub, tmp_path: Path
) -> None:
    wait_gpus_free(crd)
    first = seed(cache={"size": "1Gi", "retainOnDelete": True}, model={"id": MODEL, "endpoint": hub.url})
    first["metadata"]["name"] = "first"
    crd.apply(first, namespace)
    wait_phase(crd, namespace, "Ready", name="first", timeout=90)
    claim = wait_phase(crd, namespace, "Ready", name="first")["cache"]["claimName"]
    done = run_download_pod(crd, namespace, claim, tmp_path)
    assert done["event"] == "done" and not done["alreadyComplete"]
    assert hub.file_requests(), "the first download fetched nothing"

    crd.kubectl("delete", "gemma", "first", "-n", namespace)
    wait_for(lambda: crd.get("deployment", "first", namespace) is None, timeout=60, message="first's servers removed")
    kept = crd.get("pvc", claim, namespace)
    assert kept is not None and not kept["metadata"].get("deletionTimestamp"), "the kept cache was deleted"

    hub.clear_log()
    second = seed(cache={"existingClaim": claim}, model={"id": MODEL, "endpoint": hub.url})
    second["metadata"]["name"] = "second"
    crd.apply(second, namespace)
    wait_phase(crd, namespace, "Ready", name="second", timeout=90)
    again = run_download_pod(crd, namespace, claim, tmp_path)
    assert again["event"] == "done" and again["alreadyComplete"]
    assert hub.file_requests() == [], "the kept cache was downloaded again"
