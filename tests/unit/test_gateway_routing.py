"""The gateway's pure parts: the routing table from GemmaDeployments and pods, replica choice (prefix
affinity with bounded load, least-loaded), API-key grants and the OpenAI-shaped errors."""

from __future__ import annotations

import base64
import collections
import json
from typing import Any

from gemma_operator.gateway import errors, keys
from gemma_operator.gateway.balancer import Balancer, prefix_key
from gemma_operator.gateway.routes import LEAST_LOADED, PREFIX_HASH, Backend, routing_table


def gemma(name: str, served: str | None = None, ns: str = "ml", created: str = "2026-12-01T00:00:00Z",
          status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": ({"servedModelName": served} if served else {}) | spec, "status": status or {}}


def server_pod(name: str, instance: str, ip: str, ready: bool = True, ns: str = "ml",
               deleting: bool = False, component: str = "server") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": {
        "app.kubernetes.io/instance": instance, "app.kubernetes.io/component": component}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running", "podIP": ip, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_each_served_name_routes_to_the_ready_server_pods_of_its_gemmadeployment() -> None:
    table = routing_table(
        [gemma("gemma", "Gemma3-4b"), gemma("other", "Other")],
        [server_pod("gemma-a", "gemma", "10.0.0.1"), server_pod("gemma-b", "gemma", "10.0.0.2"),
         server_pod("gemma-c", "gemma", "10.0.0.3", ready=False),
         server_pod("gemma-d", "gemma", "10.0.0.4", deleting=True),
         server_pod("gemma-dl", "gemma", "10.0.0.5", component="download"),
         server_pod("other-a", "other", "10.0.1.1"), server_pod("x", "gemma", "10.9.0.1", ns="elsewhere")])
    assert sorted(table.routes) == ["Gemma3-4b", "Other"]
    assert [b.url for b in table.routes["Gemma3-4b"].backends] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert [b.pod for b in table.routes["Other"].backends] == ["other-a"]


def test_a_name_without_served_model_name_is_the_resource_name_and_adapters_route_to_their_servers() -> None:
    table = routing_table([gemma("plain", adapters=[{"name": "sql-lora", "id": "x/y"}])],
                          [server_pod("p", "plain", "10.0.0.1")])
    assert sorted(table.routes) == ["plain", "sql-lora"]
    assert table.routes["sql-lora"].parent == "plain" and table.routes["sql-lora"].backends[0].pod == "p"


def test_a_model_without_ready_servers_keeps_its_route_with_the_phase_and_reason() -> None:
    status = {"phase": "Downloading", "download": {"percent": 42}, "conditions": [
        {"type": "ModelReady", "status": "False", "reason": "Downloading", "message": "2 of 5 files"}]}
    route = routing_table([gemma("gemma", "Gemma3-4b", status=status)], []).routes["Gemma3-4b"]
    assert not route.ready and route.phase == "Downloading 42%"
    assert (route.reason, route.message) == ("Downloading", "2 of 5 files")
    body = json.loads(errors.not_ready(route, 5).body())
    assert "Downloading 42%" in body["error"]["message"] and "ml/gemma" in body["error"]["message"]
    assert errors.not_ready(route, 5).headers()["Retry-After"] == "5"


def test_a_degraded_model_answers_with_what_is_wrong_not_with_the_conditions_that_follow() -> None:
    status = {"phase": "Degraded", "conditions": [
        {"type": "ModelReady", "status": "True", "reason": "Downloaded", "message": "ok"},
        {"type": "Available", "status": "False", "reason": "NoReplicasReady", "message": "0/1 ready"},
        {"type": "Degraded", "status": "True", "reason": "PodsUnschedulable", "message": "0/1 ready: Insufficient nvidia.com/gpu"}]}
    route = routing_table([gemma("big", "Big", status=status)], []).routes["Big"]
    assert (route.reason, route.phase) == ("PodsUnschedulable", "Degraded")
    assert "Insufficient nvidia.com/gpu" in json.loads(errors.not_ready(route, 5).body())["error"]["message"]


def test_a_name_claimed_twice_stays_with_the_older_resource() -> None:
    table = routing_table([gemma("new", "Shared", created="2026-12-02T00:00:00Z"),
                           gemma("old", "Shared", ns="team", created="2026-12-01T00:00:00Z")], [])
    assert table.routes["Shared"].deployment == "old"
    assert table.conflicts == {"Shared": ("ml/new",)}


def test_the_servers_key_and_the_policy_come_from_the_spec() -> None:
    route = routing_table([gemma("g", apiKeySecretRef={"name": "vllm-key"}, gateway={"policy": LEAST_LOADED})],
                          []).routes["g"]
    assert route.server_key is not None and (route.server_key.name, route.server_key.key) == ("vllm-key", "key")
    assert route.policy == LEAST_LOADED
    assert routing_table([gemma("g")], []).routes["g"].policy == PREFIX_HASH


def backends(n: int) -> list[Backend]:
    return [Backend(f"pod-{i}", f"http://10.0.0.{i}:8000") for i in range(n)]


def test_requests_sharing_a_prefix_go_to_one_replica_while_it_is_not_overloaded() -> None:
    balancer, pool = Balancer(), backends(4)
    system = "You are a careful assistant. " * 20
    picks = {balancer.pick(pool, PREFIX_HASH, prefix_key({"messages": [
        {"role": "system", "content": system}, {"role": "user", "content": f"question {i}"}]})) for i in range(50)}
    assert len(picks) == 1, "no load in flight: one prefix, one replica"
    spread = collections.Counter(balancer.pick(pool, PREFIX_HASH, f"prompt {i}") for i in range(400))
    assert len(spread) == 4 and min(spread.values()) > 40, spread


def test_bounded_load_spills_a_hot_prefix_to_the_next_replica() -> None:
    balancer, pool = Balancer(load_factor=1.25), backends(4)
    chosen = []
    for _ in range(40):  # all in flight at once
        b = balancer.pick(pool, PREFIX_HASH, "one hot prefix")
        assert b is not None
        balancer.started(b)
        chosen.append(b)
    loads = collections.Counter(chosen)
    assert max(loads.values()) <= 13, f"no replica above 1.25 x the mean (10) + 1: {loads}"
    assert loads.most_common(1)[0][0] == chosen[0], "the prefix's own replica stays the busiest"
    for b in chosen:
        balancer.finished(b)
    assert balancer.in_flight == {}


def test_least_loaded_takes_the_idlest_replica_and_excluded_ones_never() -> None:
    balancer, pool = Balancer(), backends(3)
    balancer.started(pool[0])
    balancer.started(pool[0])
    balancer.started(pool[1])
    assert balancer.pick(pool, LEAST_LOADED, "") == pool[2]
    assert balancer.pick(pool, LEAST_LOADED, "", excluded=frozenset({pool[2].url})) == pool[1]
    assert balancer.pick(pool, PREFIX_HASH, "x", excluded=frozenset(b.url for b in pool)) is None


def test_prefix_key_reads_chat_parts_and_completion_prompts() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"},
                                                       {"type": "image_url", "image_url": {"url": "data:"}}]}]}
    assert prefix_key(parts) == "user:hello\n"
    assert prefix_key({"prompt": "x" * 1000}) == "x" * 256
    assert prefix_key({"prompt": ["first", "second"]}) == "first"


def secret(name: str, key: str | None, models: str | None = None) -> dict[str, Any]:
    data = {k: base64.b64encode(v.encode()).decode() for k, v in (("key", key), ("models", models)) if v is not None}
    return {"metadata": {"name": name, "namespace": "gemma-system"}, "data": data}


def test_key_secrets_grant_their_models_and_a_secret_without_a_key_grants_nothing() -> None:
    grants = keys.grants_of([secret("team-a", "sk-a", "Gemma3-4b, Other"), secret("admin", "sk-admin"),
                             secret("broken", None, "Gemma3-4b")])
    assert len(grants) == 2
    team = keys.grant_for(grants, "sk-a")
    assert team is not None and team.allows("Other") and not team.allows("Third")
    admin = keys.grant_for(grants, "sk-admin")
    assert admin is not None and admin.allows("anything")
    assert keys.grant_for(grants, "sk-wrong") is None
    assert "sk-a" not in repr(grants), "the key's text is not kept"


def test_bearer_takes_only_a_bearer_token() -> None:
    assert keys.bearer("Bearer sk-1") == "sk-1" and keys.bearer("bearer  sk-1 ") == "sk-1"
    assert keys.bearer("Basic abc") is None and keys.bearer("Bearer ") is None and keys.bearer(None) is None


def test_error_bodies_are_openai_shaped_and_name_what_to_do() -> None:
    cases = [(errors.missing_key(), 401), (errors.wrong_key(), 401),
             (errors.model_not_allowed("Third", ["Gemma3-4b"]), 403),
             (errors.unknown_model("Gema3", ["Gemma3-4b", "Other"]), 404)]
    for error, status in cases:
        body = json.loads(error.body())
        assert error.status == status and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Gemma3-4b, Other" in json.loads(errors.unknown_model("Gema3", ["Gemma3-4b", "Other"]).body())["error"]["message"]
    assert errors.missing_key().headers()["WWW-Authenticate"].startswith("Bearer")


def test_a_static_table_routes_each_model_to_the_given_servers_and_refuses_a_malformed_spec() -> None:
    import pytest
    from gemma_operator.gateway.routes import static_table
    table = static_table(["a=http://127.0.0.1:1,http://127.0.0.1:2/", "b=http://127.0.0.1:3"], LEAST_LOADED)
    assert [b.url for b in table.routes["a"].backends] == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert table.routes["b"].policy == LEAST_LOADED and table.routes["b"].ready
    with pytest.raises(ValueError, match="expected model=http"):
        static_table(["no-urls"])
