"""Issue 15, LoRA adapters, against the real control plane (KWOK plays the pods):

- what the CRD can judge is refused by the API server (a server-side dry run), naming the field: two
  adapters of one name, an adapter named like the served model, a max rank vLLM does not accept, the LoRA
  flags in spec.vllm.extraArgs next to spec.adapters (alone they stay allowed);
- the operator makes the adapters Job next to the model's download, starts the servers with vLLM's LoRA flags
  only once it is done, tells it in status.adapters, and a change of the adapters replaces the Job.

The downloader's adapter mode is tested against stand-in hubs (tests/download/test_download_adapters.py), the rank
verdict in the status function (tests/unit/test_adapters.py), the flags by real vLLM (tests/serving).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.gemma_helpers import condition, seed, status, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.kube import wait_for
from tests.support.operator import OperatorProcess

pytestmark = pytest.mark.timeout(300)

ADAPTER = {"name": "sql-lora", "id": "my-org/gemma-3-sql-lora", "revision": "v1"}


def dry_run(cluster: kube.Cluster, ns: str, body: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(body), check=False)


@pytest.mark.parametrize("spec,expect", [
    ({"adapters": [ADAPTER, ADAPTER | {"id": "my-org/other"}]},
     ("spec.adapters must not name two adapters alike: sql-lora",)),
    ({"adapters": [ADAPTER | {"name": "Gemma3-4b"}]},
     ("spec.adapters[].name must differ from the served model name spec.servedModelName Gemma3-4b",)),
    ({"servedModelName": None, "adapters": [ADAPTER | {"name": "gemma"}]},
     ("spec.adapters[].name must differ from the served model name metadata.name gemma",)),
    ({"adapters": [ADAPTER], "adapterSettings": {"maxRank": 24}}, ("spec.adapterSettings.maxRank", "supported values")),
    ({"adapters": [ADAPTER], "vllm": {"extraArgs": ["--max-lora-rank=64"]}},
     ("spec.vllm.extraArgs must not set --enable-lora, --lora-modules", "spec.adapterSettings.maxRank")),
    ({"adapters": [ADAPTER | {"name": "a=b"}]}, ("spec.adapters[0].name", "no '=' or ','")),
])
def test_bad_adapters_are_refused_naming_the_field(crd: kube.Cluster, namespace: str, spec: dict[str, Any],
                                                   expect: tuple[str, ...]) -> None:
    body = seed(**{k: v for k, v in spec.items() if v is not None})
    for key in [k for k, v in spec.items() if v is None]:
        body["spec"].pop(key)
    result = dry_run(crd, namespace, body)
    assert result.returncode != 0, f"the API server accepted it: {result.stdout}"
    for text in expect:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"


def test_lora_flags_without_adapters_stay_allowed(crd: kube.Cluster, namespace: str) -> None:
    result = dry_run(crd, namespace, seed(vllm={"extraArgs": ["--enable-lora", "--max-loras=2"]}))
    assert result.returncode == 0, result.stderr


def adapter_jobs(cluster: kube.Cluster, ns: str) -> list[dict[str, Any]]:
    jobs = cluster.kubectl_json("get", "jobs", "-n", ns, "-l", "app.kubernetes.io/component=adapters")["items"]
    return [j for j in jobs if not j["metadata"].get("deletionTimestamp")]


def test_adapters_are_downloaded_by_their_job_and_served(crd: kube.Cluster, namespace: str,
                                                         operator: OperatorProcess) -> None:
    wait_gpus_free(crd)
    crd.apply(seed(adapters=[ADAPTER], adapterSettings={"maxRank": 32}), namespace)
    st = wait_phase(crd, namespace, "Ready", timeout=120)
    assert st["adapters"]["state"] == "Succeeded" and st["adapters"]["names"] == ["sql-lora"]
    assert "adapters sql-lora too" in condition(st, "ModelReady")["message"]
    [job] = adapter_jobs(crd, namespace)
    assert job["metadata"]["name"] == st["adapters"]["jobName"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    [entry] = json.loads(args[args.index("--adapters") + 1])
    assert (entry["field"], entry["id"], entry["source"], entry["revision"]) == (
        "spec.adapters[0]", "my-org/gemma-3-sql-lora", "modelscope", "v1")
    dep = crd.get("deployment", "gemma", namespace)
    assert dep is not None
    server = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    lora = server[server.index("--enable-lora"):]
    assert lora[:6] == ["--enable-lora", "--max-lora-rank", "32", "--max-loras", "1", "--lora-modules"]
    assert lora[6] == "sql-lora=/models/adapters/modelscope/my-org--gemma-3-sql-lora/v1"

    # Another adapter: a new Job; the old one goes; the servers roll with both adapters once it is done.
    crd.apply(seed(adapters=[ADAPTER, ADAPTER | {"name": "chat-lora", "id": "my-org/gemma-3-chat-lora"}],
                   adapterSettings={"maxRank": 32}), namespace)

    def rolled() -> bool:
        d = crd.get("deployment", "gemma", namespace) or {}
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        return "chat-lora=/models/adapters/modelscope/my-org--gemma-3-chat-lora/v1" in args

    wait_for(rolled, timeout=90, message="the servers rendered with the second adapter")
    wait_for(lambda: len(adapter_jobs(crd, namespace)) == 1 and adapter_jobs(crd, namespace)[0]["metadata"]["name"]
             != job["metadata"]["name"], timeout=60, message="the first adapters Job replaced")
    st = wait_phase(crd, namespace, "Ready", timeout=120)
    assert st["adapters"]["names"] == ["sql-lora", "chat-lora"]
    assert status(crd, namespace)["adapters"]["jobName"] == adapter_jobs(crd, namespace)[0]["metadata"]["name"]
