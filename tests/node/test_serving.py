"""Issue 11, tests 2, 3 and 5: gemma.yaml, unchanged, served by pods that really run on the real node.

One GemmaDeployment for the module (its download and its vLLM start are the slow part), taken through:
the real download Job writing the model into the real volume as uid 1000 with a read-only root filesystem,
the PROGRESS column read from the downloader's log, the vLLM CPU server started from exactly the Deployment
the operator rendered and Ready only once vLLM answers /health; then the seed's calls through the Service
(from a client pod by the ClusterIP's DNS name, and from the host through `kubectl port-forward`); then two
replicas and a rollout, one pod at a time, while the Service keeps answering.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from gemma_operator.builders import build_server_deployment
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment

from tests.download.hubs import ModelScopeHub
from tests.node.conftest import REAL_NODE, SEED_MODEL_ID, Release
from tests.node.node_helpers import (
    EXAMPLES,
    ColumnWatcher,
    ReadinessSampler,
    client_pod,
    examples_configmap,
    gemma,
    is_ready,
    json_lines,
    pods,
    run_client,
    seed,
    server_pods,
    volume_dir,
    wait_phase,
)
from tests.support.kube import wait_for
from tests.support.operator import free_port

pytestmark = pytest.mark.timeout(1800)
MODEL = "Gemma3-4b"
# The tiny model is ~260 KB: at this rate its download lasts long enough for a few progress readings.
DOWNLOAD_BYTES_PER_SECOND = 12_000


@pytest.fixture(scope="module")
def ns(node_namespaces: dict[str, str]) -> str:
    return node_namespaces["serve"]


@pytest.fixture(scope="module")
def served(release: Release, hub: ModelScopeHub, ns: str) -> Iterator[dict[str, Any]]:
    """gemma.yaml applied and watched until Ready: what was seen on the way is returned."""
    cluster = release.cluster
    hub.faults.throttle_bps = DOWNLOAD_BYTES_PER_SECOND
    progress = ColumnWatcher(cluster, ns)
    readiness = ReadinessSampler(cluster, ns)
    started = time.monotonic()
    cluster.apply(seed(), namespace=ns)
    try:
        ready = wait_phase(cluster, ns, "Ready", timeout=900, fail_on=("CrashLoopBackOff", "ServerRestarting"))
    finally:
        hub.faults.throttle_bps = None
        seen = {"progress": progress.stop(), "readiness": readiness.stop()}
    print(f"\n[node] gemma.yaml Ready on the real node in {time.monotonic() - started:.0f} s; "
          f"PROGRESS column: {seen['progress']}")
    yield {"gemma": ready, **seen}
    cluster.kubectl("delete", "gemma", "gemma", "-n", ns, "--wait=true", timeout=180)


def test_download_job_writes_the_model_into_the_real_volume(served: dict[str, Any], release: Release,
                                                            hub: ModelScopeHub, ns: str) -> None:
    cluster = release.cluster
    # The model cache is shared by the model's GemmaDeployments (docs/model-cache.md): named by the model, not "gemma".
    claim = cluster.get("gemmadeployment", "gemma", ns)["status"]["cache"]["claimName"]
    (job_pod,) = pods(cluster, ns, f"app.kubernetes.io/instance={claim},app.kubernetes.io/component=download")
    assert job_pod["spec"]["nodeName"] == REAL_NODE and job_pod["status"]["phase"] == "Succeeded"
    assert job_pod["spec"]["securityContext"]["runAsUser"] == 1000
    (container,) = job_pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == release.values["operator"]["downloaderImage"]

    model_dir = volume_dir(cluster, ns, claim) / "modelscope" / "LLM-Research--gemma-3-4b-it" / "master"
    repo = hub.repos[SEED_MODEL_ID]["master"]
    for path, data in repo.files.items():
        on_disk = model_dir / path
        assert on_disk.stat().st_uid == 1000, f"{on_disk} was not written by the download pod's user"
        assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), path
    manifest = json.loads((model_dir / ".gemma-manifest.json").read_text())
    assert manifest["modelId"] == SEED_MODEL_ID and manifest["totalBytes"] == repo.total_bytes


def test_progress_column_shows_the_download_under_way(served: dict[str, Any]) -> None:
    percents = [int(v.rstrip("%")) for v in served["progress"] if v.endswith("%")]
    assert any(0 < p < 100 for p in percents), f"no value strictly between 0 and 100 in {served['progress']}"
    assert percents == sorted(percents), "progress went backwards"
    assert percents[-1] == 100


def test_server_pod_runs_exactly_the_rendered_deployment(served: dict[str, Any], release: Release, ns: str) -> None:
    cluster = release.cluster
    body = cluster.kubectl_json("get", "gemma", "gemma", "-n", ns)
    operator = release.values["operator"]
    settings = Settings(vllm_image=operator["vllmImage"], downloader_image=operator["downloaderImage"],
                        modelscope_endpoint=operator["modelscopeEndpoint"])
    rendered = build_server_deployment(GemmaDeployment.from_body(body), settings)["spec"]["template"]["spec"]
    (pod,) = server_pods(cluster, ns)
    assert pod["spec"]["nodeName"] == REAL_NODE
    (want,) = rendered["containers"]
    (got,) = pod["spec"]["containers"]
    for key in ("image", "command", "args", "env", "ports", "volumeMounts", "securityContext", "startupProbe",
                "readinessProbe", "livenessProbe", "lifecycle"):
        assert _subset(want[key], got[key]), f"container {key}: rendered {want[key]!r}, running {got[key]!r}"
    assert _subset(rendered["securityContext"], pod["spec"]["securityContext"])
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["spec"]["volumes"]

    # What the kubelet made of it, seen from inside the running container.
    probe = ("id -u; touch /root-is-writable 2>/dev/null && echo root-writable || echo root-read-only; "
             "touch /models/x 2>/dev/null && echo models-writable || echo models-read-only; "
             "grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3")
    out = cluster.kubectl("exec", "-n", ns, pod["metadata"]["name"], "-c", "vllm", "--", "bash", "-c", probe).stdout.split()
    assert out == ["1000", "root-read-only", "models-read-only", "tmpfs"], out


def _subset(want: Any, got: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _subset(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(_subset(w, g) for w, g in zip(want, got))
    return bool(want == got)


def test_pod_is_not_ready_before_vllm_answers_health(served: dict[str, Any]) -> None:
    samples = served["readiness"]
    first_healthy = next((s.at for s in samples if s.health == 200), None)
    starting = [s for s in samples if first_healthy is None or s.at < first_healthy]
    early_ready = [s for s in starting if s.ready]
    assert not early_ready, f"the pod was Ready while vLLM did not answer /health yet: {early_ready[:3]}"
    assert first_healthy is not None, "vLLM never answered /health while the test watched"
    assert len(starting) >= 5, f"too few samples while vLLM was starting to judge readiness: {starting}"
    assert served["gemma"]["status"]["readyReplicas"] == 1


def _check_answers(output: str) -> list[dict[str, Any]]:
    responses = [r for r in json_lines(output) if r.get("object") in ("list", "text_completion", "chat.completion")]
    objects = sorted(r["object"] for r in responses)
    assert {"list", "text_completion", "chat.completion"} <= set(objects), output[-3000:]
    for r in responses:
        named = [m["id"] for m in r["data"]] if r["object"] == "list" else [r["model"]]
        assert named == [MODEL], r
    return responses


def test_seed_calls_through_the_service_from_a_client_pod(served: dict[str, Any], release: Release,
                                                         images: dict[str, str], ns: str) -> None:
    cluster = release.cluster
    endpoint = served["gemma"]["status"]["endpoint"]
    assert endpoint == f"http://gemma.{ns}.svc.cluster.local:8000/v1"
    examples_configmap(cluster, ns)
    script = ("set -e; bash /examples/curl_examples.sh; "
              "python /examples/vllm_openai_completions.py --json; python /examples/vllm_openai_chat_completions.py --json")
    output = run_client(cluster, ns, client_pod("seed-client", images["vllm-cpu"], script, {"OPENAI_BASE_URL": endpoint}))
    _check_answers(output)


def test_seed_calls_through_kubectl_port_forward(served: dict[str, Any], release: Release, ns: str) -> None:
    cluster = release.cluster
    port = free_port()
    forward = subprocess.Popen([cluster.kubectl_path, "port-forward", "-n", ns, "svc/gemma", f"{port}:8000"],
                               env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: _local_status(port) == 200, timeout=30, message="kubectl port-forward svc/gemma")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")} | {"OPENAI_BASE_URL": base}
        output = ""
        for cmd in (["bash", str(EXAMPLES / "curl_examples.sh")],
                    [sys.executable, str(EXAMPLES / "vllm_openai_completions.py"), "--json"],
                    [sys.executable, str(EXAMPLES / "vllm_openai_chat_completions.py"), "--json"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
            assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            output += proc.stdout + "\n"
        _check_answers(output)
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _local_status(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
    except requests.RequestException:
        return 0


ROLLOUT_LOAD = r"""
import json, os, time, urllib.request
url = os.environ["OPENAI_BASE_URL"] + "/completions"
body = json.dumps({"model": "Gemma3-4b", "prompt": "San Francisco is a", "max_tokens": 4}).encode()
ok = failed = 0
errors = []
while not os.path.exists("/tmp/stop"):
    try:
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            ok += resp.status == 200
        if ok == 1:
            print("first answer", flush=True)
    except Exception as err:
        failed += 1
        errors.append(f"{time.strftime('%H:%M:%S')} {err}")
    time.sleep(0.1)
print(json.dumps({"ok": ok, "failed": failed, "errors": errors[:20]}))
"""


def test_two_replicas_both_serve(served: dict[str, Any], release: Release, ns: str) -> None:
    cluster = release.cluster
    cluster.kubectl("scale", "gemma/gemma", "-n", ns, "--replicas=2")
    wait_for(lambda: gemma(cluster, ns).get("status", {}).get("readyReplicas") == 2
             and gemma(cluster, ns)["status"]["phase"] == "Ready", timeout=600, interval=2, message="2/2 ready")
    ready = [p for p in server_pods(cluster, ns) if is_ready(p)]
    assert len(ready) == 2 and {p["spec"]["nodeName"] for p in ready} == {REAL_NODE}
    for pod in ready:
        models = _models(pod["status"]["podIP"])
        assert models == [MODEL], f"{pod['metadata']['name']} answers {models}"


def _models(pod_ip: str) -> list[str]:
    return [m["id"] for m in requests.get(f"http://{pod_ip}:8000/v1/models", timeout=10).json()["data"]]


def test_max_model_len_change_rolls_one_pod_at_a_time_while_the_service_answers(
        served: dict[str, Any], release: Release, images: dict[str, str], ns: str) -> None:
    cluster = release.cluster
    assert len([p for p in server_pods(cluster, ns) if is_ready(p)]) == 2
    endpoint = served["gemma"]["status"]["endpoint"]
    loader = client_pod("rollout-load", images["vllm-cpu"], "python -c \"$LOAD\"",
                        {"OPENAI_BASE_URL": endpoint, "LOAD": ROLLOUT_LOAD})
    cluster.kubectl("delete", "pod", "rollout-load", "-n", ns, "--ignore-not-found", "--wait=true")
    cluster.apply(loader, namespace=ns)
    wait_for(lambda: (p := cluster.get("pod", "rollout-load", ns)) and p["status"].get("phase") == "Running",
             timeout=60, message="load pod running")
    # The count starts against the settled Service: the patch waits for the first answer.
    wait_for(lambda: "first answer" in cluster.kubectl("logs", "rollout-load", "-n", ns, check=False).stdout,
             timeout=60, interval=0.5, message="the load pod's first answer")
    old = {p["metadata"]["name"] for p in server_pods(cluster, ns)}
    cluster.kubectl("patch", "gemma", "gemma", "-n", ns, "--type=merge", "-p", '{"spec":{"maxModelLen":1024}}')
    ready_counts: list[int] = []

    def rolled() -> bool:
        current = server_pods(cluster, ns)
        ready_counts.append(sum(is_ready(p) for p in current))
        new = [p for p in current if p["metadata"]["name"] not in old]
        return len(new) == 2 and all(is_ready(p) for p in new) and len(current) == 2

    wait_for(rolled, timeout=900, interval=1, message="both pods replaced and Ready")
    wait_phase(cluster, ns, "Ready", timeout=120)
    cluster.kubectl("exec", "-n", ns, "rollout-load", "--", "touch", "/tmp/stop")
    wait_for(lambda: cluster.get("pod", "rollout-load", ns)["status"].get("phase") == "Succeeded", timeout=60,
             message="load pod done")
    summary = json.loads(cluster.kubectl("logs", "rollout-load", "-n", ns).stdout.strip().splitlines()[-1])
    print(f"\n[node] rollout of 2 replicas (maxModelLen 2048 -> 1024): {summary['ok']} requests answered, "
          f"{summary['failed']} failed {summary['errors']}; ready pods seen: {sorted(set(ready_counts))}")
    assert min(ready_counts) >= 1, "both replicas were down at once"
    for pod in server_pods(cluster, ns):
        args = pod["spec"]["containers"][0]["args"]
        assert args[args.index("--max-model-len") + 1] == "1024"
    assert summary["ok"] > 0 and summary["failed"] == 0, summary
