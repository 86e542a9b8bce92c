"""Issue 13 on the real node: two models behind the gateway's one URL, served by real vLLM pods.

The release of tests/node/conftest.py installs the chart with gateway.enabled. Two GemmaDeployments of
the tiny model (one cache, one download) serve `Gemma3-4b` and `Gemma3-4b-b`; the second wants the
servers' own API key. Through the gateway's Service (its URL from status.gateway.url) the seed's curl
and openai scripts are answered for both names from a client pod; the errors a user can act on are
asked from the host (the gateway pod's IP): missing, wrong and not-allowed keys, an unknown model, a
model whose download failed (503 with the phase, the reason and Retry-After). A direct call to the
keyed model's pod from another pod of the namespace, without its key, is refused; the servers'
NetworkPolicy admits only the gateway's pods. Concurrent mixed traffic: every answer from its own model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.node.conftest import Release
from tests.node.node_helpers import (
    client_pod,
    examples_configmap,
    json_lines,
    pods,
    run_client,
    seed,
    server_pods,
    wait_condition,
    wait_phase,
)
from tests.support.kube import wait_for

pytestmark = pytest.mark.timeout(1800)
MODEL_A, MODEL_B = "Gemma3-4b", "Gemma3-4b-b"
SERVER_KEY = "sk-servers-of-b"  # the servers' own key (spec.apiKeySecretRef): only the gateway sends it
KEY_ALL, KEY_B = "sk-gateway-all", "sk-gateway-only-b"
BROKEN = "gemma-broken"  # a GemmaDeployment whose download fails: its model answers 503


def _secret(name: str, data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels or {}},
            "stringData": data}


@pytest.fixture(scope="module")
def ns(node_namespaces: dict[str, str]) -> str:
    return node_namespaces["gateway"]


@pytest.fixture(scope="module")
def gateway_ip(release: Release) -> str:
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=gateway"
    ready = wait_for(lambda: [p for p in pods(release.cluster, release.namespace, selector)
                              if p["status"].get("podIP") and _ready(p)],
                     timeout=300, interval=1, message="a Ready gateway pod")
    return str(ready[0]["status"]["podIP"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


@pytest.fixture(scope="module")
def two_models(release: Release, ns: str) -> Iterator[dict[str, dict[str, Any]]]:
    cluster = release.cluster
    label = {"gemma.ai/gateway-key": "true"}
    cluster.apply([_secret("gw-key-all", {"key": KEY_ALL}, label),
                   _secret("gw-key-b", {"key": KEY_B, "models": MODEL_B}, label)], namespace=release.namespace)
    cluster.apply(_secret("servers-of-b", {"key": SERVER_KEY}), namespace=ns)
    started = time.monotonic()
    cluster.apply([seed("gemma"), seed("gemma-b", servedModelName=MODEL_B,
                                       apiKeySecretRef={"name": "servers-of-b", "key": "key"})], namespace=ns)
    ready = {name: wait_phase(cluster, ns, "Ready", name=name, timeout=900,
                              fail_on=("CrashLoopBackOff", "ServerRestarting")) for name in ("gemma", "gemma-b")}
    print(f"\n[node] two models Ready behind the gateway in {time.monotonic() - started:.0f} s")
    yield ready
    cluster.kubectl("delete", "gemma", "--all", "-n", ns, "--wait=true", timeout=300, check=False)
    cluster.kubectl("delete", "secret", "gw-key-all", "gw-key-b", "-n", release.namespace, check=False)


def _ask(ip: str, model: str, key: str | None, path: str = "/v1/chat/completions") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    return requests.post(f"http://{ip}:8000{path}", json=body, headers=headers, timeout=120)


def _wait_routed(ip: str, model: str, key: str) -> None:
    """The gateway learns of a ready pod from its watch: a moment after the resource says Ready."""
    wait_for(lambda: _ask(ip, model, key).status_code == 200, timeout=60, interval=0.5,
             message=f"the gateway to route {model}")


def test_status_gives_the_gateway_url_and_the_seed_scripts_get_both_models_through_it(
        two_models: dict[str, dict[str, Any]], release: Release, images: dict[str, str], ns: str,
        gateway_ip: str) -> None:
    cluster = release.cluster
    url = two_models["gemma"]["status"]["gateway"]["url"]
    assert url == f"http://{release.name}-gateway.{release.namespace}.svc.cluster.local:8000/v1"
    assert two_models["gemma-b"]["status"]["gateway"] == {"url": url, "model": MODEL_B}
    for model in (MODEL_A, MODEL_B):
        _wait_routed(gateway_ip, model, KEY_ALL)
    examples_configmap(cluster, ns)
    script = ("set -e; for m in Gemma3-4b Gemma3-4b-b; do export OPENAI_MODEL=$m; bash /examples/curl_examples.sh; "
              "python /examples/vllm_openai_completions.py --json; "
              "python /examples/vllm_openai_chat_completions.py --json; done")
    output = run_client(cluster, ns, client_pod("gateway-client", images["vllm-cpu"], script,
                                                {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": KEY_ALL}))
    answers = json_lines(output)
    listed = [a for a in answers if a.get("object") == "list"]
    assert listed and {m["id"] for m in listed[0]["data"]} == {MODEL_A, MODEL_B}, listed
    by_model: dict[str, set[str]] = {}
    for answer in answers:
        if answer.get("object") in ("text_completion", "chat.completion"):
            by_model.setdefault(answer["model"], set()).add(answer["object"])
            assert answer["choices"] and answer["usage"]["completion_tokens"] > 0, answer
    # Each model answered both kinds of call (curl and the openai library), each by its own servers.
    assert by_model == {MODEL_A: {"text_completion", "chat.completion"},
                        MODEL_B: {"text_completion", "chat.completion"}}, by_model


def test_concurrent_mixed_traffic_reaches_each_models_own_servers(
        two_models: dict[str, dict[str, Any]], gateway_ip: str) -> None:
    """A request sent to the other model's server would fail there: vLLM serves only its own name, and the
    servers of Gemma3-4b-b refuse any call without their key. So misrouted = not answered as asked."""
    from concurrent.futures import ThreadPoolExecutor
    for model in (MODEL_A, MODEL_B):
        _wait_routed(gateway_ip, model, KEY_ALL)
    models = [MODEL_A, MODEL_B] * 20
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda m: _ask(gateway_ip, m, KEY_ALL), models))
    misrouted = [(m, a.status_code, a.text[:200]) for m, a in zip(models, answers)
                 if a.status_code != 200 or a.json()["model"] != m]
    print(f"\n[node] {len(models)} concurrent mixed requests through the gateway: {len(misrouted)} misrouted")
    assert misrouted == []


def test_errors_at_the_gateway_are_openai_shaped_and_say_what_to_do(
        two_models: dict[str, dict[str, Any]], release: Release, ns: str, gateway_ip: str) -> None:
    _wait_routed(gateway_ip, MODEL_B, KEY_B)
    missing = _ask(gateway_ip, MODEL_A, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert _ask(gateway_ip, MODEL_A, "sk-not-a-key").status_code == 401
    refused = _ask(gateway_ip, MODEL_A, KEY_B)
    assert refused.status_code == 403 and MODEL_B in refused.json()["error"]["message"], refused.text
    listed = requests.get(f"http://{gateway_ip}:8000/v1/models", headers={"Authorization": f"Bearer {KEY_B}"},
                          timeout=30).json()
    assert [m["id"] for m in listed["data"]] == [MODEL_B], "a key lists only the models it may use"
    unknown = _ask(gateway_ip, "Gemma3-4bx", KEY_ALL)
    assert unknown.status_code == 404, unknown.text
    assert MODEL_A in unknown.json()["error"]["message"] and MODEL_B in unknown.json()["error"]["message"]


def test_a_model_that_cannot_serve_gets_503_with_its_phase_reason_and_retry_after(
        two_models: dict[str, dict[str, Any]], release: Release, ns: str, gateway_ip: str) -> None:
    cluster = release.cluster
    wrong = {"id": "LLM-Research/gemma-3-4b-itx", "source": "modelscope", "revision": "master"}
    cluster.apply(seed(BROKEN, model=wrong, servedModelName="Broken"), namespace=ns)
    failed = wait_condition(cluster, ns, "ModelReady", "DownloadFailed", name=BROKEN, timeout=300)

    def answered_with_the_reason() -> tuple[requests.Response] | None:
        answer = _ask(gateway_ip, "Broken", KEY_ALL)
        # A tuple: a Response is falsy when its status is an error.
        return (answer,) if answer.status_code == 503 and "DownloadFailed" in answer.text else None
    (answer,) = wait_for(answered_with_the_reason, timeout=30, interval=0.5, message="503 naming DownloadFailed")
    message = answer.json()["error"]["message"]
    assert "Failed" in message and wrong["id"] in message, message
    assert failed["message"][:40] in message, (failed["message"], message)
    assert int(answer.headers["Retry-After"]) > 0
    cluster.kubectl("delete", "gemma", BROKEN, "-n", ns, "--wait=true", timeout=120)


DIRECT = r"""
for path in /v1/chat/completions /invocations /v1/completions; do
  for key in "" "$GATEWAY_KEY"; do
    auth=(); [ -n "$key" ] && auth=(-H "Authorization: Bearer $key")
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 -X POST "http://$SERVER_IP:8000$path" \
      "${auth[@]}" -H 'Content-Type: application/json' \
      -d '{"model": "Gemma3-4b-b", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}')
    echo "direct $path key=${key:-none} -> $code"
  done
done
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 -X POST "$GATEWAY_URL/chat/completions" \
  -H "Authorization: Bearer $GATEWAY_KEY" -H 'Content-Type: application/json' \
  -d '{"model": "Gemma3-4b-b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}')
echo "gateway /v1/chat/completions -> $code"
"""


def test_the_servers_are_not_reachable_around_the_gateway(
        two_models: dict[str, dict[str, Any]], release: Release, images: dict[str, str], ns: str,
        gateway_ip: str) -> None:
    cluster = release.cluster
    (pod_b,) = server_pods(cluster, ns, name="gemma-b")
    # From another pod of the namespace: the keyed model's server refuses a caller without its key on
    # every route (the guard of issue 12), a gateway key is not its key; the gateway, which sends it, is
    # answered.
    examples_configmap(cluster, ns)
    env = {"SERVER_IP": pod_b["status"]["podIP"], "GATEWAY_KEY": KEY_ALL,
           "GATEWAY_URL": two_models["gemma-b"]["status"]["gateway"]["url"]}
    output = run_client(cluster, ns, client_pod("direct-client", images["vllm-cpu"], DIRECT, env))
    lines = [line for line in output.splitlines() if "->" in line]
    assert len(lines) == 7, output
    assert all(line.endswith("-> 401") for line in lines if line.startswith("direct")), output
    assert lines[-1] == "gateway /v1/chat/completions -> 200", output
    # Every server gets a NetworkPolicy that admits only the gateway's pods on port 8000. This node's
    # CNI (the bridge plugin) does not enforce NetworkPolicy, so here the object is what is checked.
    for name in ("gemma", "gemma-b"):
        policy = cluster.get("networkpolicy", name, ns)
        assert policy is not None, f"no NetworkPolicy for {name}"
        [rule] = policy["spec"]["ingress"]
        [peer] = rule["from"]
        assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": release.namespace}
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
        assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == name


def test_the_gateway_counts_requests_per_model(two_models: dict[str, dict[str, Any]], gateway_ip: str) -> None:
    def count(text: str, model: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == "gemma_gateway_requests_total"
                   and sample.labels == {"model": model, "code": "200"})
    before = count(requests.get(f"http://{gateway_ip}:8080/metrics", timeout=10).text, MODEL_A)
    for _ in range(3):
        assert _ask(gateway_ip, MODEL_A, KEY_ALL).status_code == 200
    after = requests.get(f"http://{gateway_ip}:8080/metrics", timeout=10).text
    # Two gateway replicas would split the count; the release runs one (conftest), so all three are here.
    assert count(after, MODEL_A) - before == 3
    assert "gemma_gateway_added_latency_seconds_bucket" in after
