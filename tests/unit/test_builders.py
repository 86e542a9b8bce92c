from __future__ import annotations

import json
from typing import Any

import pytest

from gemma_operator import builders
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment


def server_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def variant(body: dict[str, Any], **spec: Any) -> GemmaDeployment:
    return GemmaDeployment.from_body(body | {"spec": body["spec"] | spec})


def test_server_command_line_is_the_seed_recipe(gd: GemmaDeployment, settings: Settings) -> None:
    c = server_container(builders.build_server_deployment(gd, settings))
    assert c["command"] + c["args"] == [
        "vllm", "serve", "/models/modelscope/LLM-Research--gemma-3-4b-it/master",
        "--served-model-name", "Gemma3-4b", "--port", "8000", "--max-model-len", "2048",
        "--tensor-parallel-size", "1", "--limit-mm-per-prompt", '{"image":0}',
    ]


def test_optional_flags_and_extra_args_follow(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, gpu={"count": 2, "memoryUtilization": 0.85}, vllm={"extraArgs": ["--enforce-eager"]})
    args = server_container(builders.build_server_deployment(gd, settings))["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.85"
    assert args[-1] == "--enforce-eager"


def _image_limit(gd: GemmaDeployment, settings: Settings) -> str:
    args = server_container(builders.build_server_deployment(gd, settings))["args"]
    assert args.count("--limit-mm-per-prompt") == 1, args
    value: str = args[args.index("--limit-mm-per-prompt") + 1]
    return value


@pytest.mark.parametrize("multimodal,limit", [
    # Text only by default: vLLM would otherwise take 999 images per prompt and load the vision tower.
    (None, '{"image":0}'),
    ({}, '{"image":0}'),
    ({"images": {}}, '{"image":0}'),
    ({"images": {"enabled": False}}, '{"image":0}'),
    ({"images": {"enabled": True}}, '{"image":1}'),
    ({"images": {"enabled": True, "maxPerPrompt": 4}}, '{"image":4}'),
])
def test_images_per_prompt_from_spec_multimodal(
    gemma_body: dict[str, Any], settings: Settings, multimodal: dict[str, Any] | None, limit: str,
) -> None:
    gd = variant(gemma_body) if multimodal is None else variant(gemma_body, multimodal=multimodal)
    assert _image_limit(gd, settings) == limit
    # vLLM's parser reads the value as JSON (one argument, no shell in between).
    assert json.loads(limit) == {"image": gd.spec.multimodal.images.limit}


def test_the_image_limit_comes_before_extra_args_and_is_the_same_with_an_api_key(
    gemma_body: dict[str, Any], settings: Settings,
) -> None:
    gd = variant(gemma_body, multimodal={"images": {"enabled": True, "maxPerPrompt": 2}},
                 apiKeySecretRef={"name": "k", "key": "api-key"}, vllm={"extraArgs": ["--enforce-eager"]})
    args = server_container(builders.build_server_deployment(gd, settings))["args"]
    assert args[-1] == "--enforce-eager"
    assert args.index("--limit-mm-per-prompt") < args.index("--enforce-eager")
    assert _image_limit(gd, settings) == '{"image":2}'


def test_unset_max_model_len_leaves_the_flag_out(gemma_body: dict[str, Any], settings: Settings) -> None:
    spec = dict(gemma_body["spec"])
    spec.pop("maxModelLen")
    gd = GemmaDeployment.from_body(gemma_body | {"spec": spec})
    assert "--max-model-len" not in server_container(builders.build_server_deployment(gd, settings))["args"]


def test_gpu_limits_cache_readonly_shm_and_offline(gd: GemmaDeployment, settings: Settings) -> None:
    dep = builders.build_server_deployment(gd, settings)
    c = server_container(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["name"] == "model-cache" and mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
    # Writable only for the compile cache's subPath (test_compile_cache_*); the model mount is read-only.
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "gemma-cache"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert c["image"] == "vllm/vllm-openai:test"


def test_probes_give_a_loading_model_its_startup_budget(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, vllm={"startupTimeoutSeconds": 600})
    c = server_container(builders.build_server_deployment(gd, settings))
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_api_key_comes_from_the_secret_never_the_command_line(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, apiKeySecretRef={"name": "keys", "key": "openai"})
    c = server_container(builders.build_server_deployment(gd, settings))
    key_env = [e for e in c["env"] if e["name"] == "VLLM_API_KEY"]
    assert key_env == [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "openai"}}}]
    assert not any("api-key" in a for a in c["command"] + c["args"])


def test_children_are_owned_labelled_and_named(gd: GemmaDeployment, settings: Settings) -> None:
    children = [
        builders.build_cache_pvc(gd), builders.build_download_job(gd, settings),
        builders.build_server_deployment(gd, settings), builders.build_service(gd),
    ]
    names = []
    for child in children:
        assert child is not None
        meta = child["metadata"]
        names.append((child["kind"], meta["name"]))
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"][0] | {} == {
            "apiVersion": "gemma.ai/v1alpha1", "kind": "GemmaDeployment", "name": "gemma", "uid": "uid-1",
            "controller": True, "blockOwnerDeletion": True,
        }
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "gemma-operator"
        assert meta["labels"]["app.kubernetes.io/instance"] == "gemma"
    # Without gd.shared_cache: a claim of its own, as made before caches were shared (kept in use after an
    # upgrade). The reconciler gives a new GemmaDeployment the model's shared cache: tests/unit/test_shared_cache.py.
    assert names[0] == ("PersistentVolumeClaim", "gemma-cache")
    assert names[1][1].startswith("gemma-download-")
    assert names[2:] == [("Deployment", "gemma"), ("Service", "gemma")]


def test_service_is_port_8000_named_http_selecting_the_servers(gd: GemmaDeployment, settings: Settings) -> None:
    svc = builders.build_service(gd)
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = builders.build_server_deployment(gd, settings)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_download_job_identity_changes_with_the_model(gemma_body: dict[str, Any], settings: Settings) -> None:
    a = GemmaDeployment.from_body(gemma_body)
    b = variant(gemma_body, model=gemma_body["spec"]["model"] | {"id": "LLM-Research/gemma-3-1b-it"})
    c = variant(gemma_body, model=gemma_body["spec"]["model"] | {"revision": "v1"})
    names = {builders.download_job_name(x, settings) for x in (a, b, c)}
    assert len(names) == 3
    assert builders.download_job_name(a, settings) == builders.download_job_name(a, settings)


def test_download_job_is_restricted_and_gets_the_token_from_env(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, model=gemma_body["spec"]["model"] | {"tokenSecretRef": {"name": "hub", "key": "token"}},
                 download={"backoffLimit": 2, "activeDeadlineSeconds": 3600})
    job = builders.build_download_job(gd, settings)
    assert job is not None
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 3600
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == ["--source", "modelscope", "--model-id", "LLM-Research/gemma-3-4b-it",
                         "--revision", "master", "--cache-root", "/models"]
    assert {"name": "GEMMA_HUB_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}} in c["env"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["restartPolicy"] == "Never"


def test_hub_endpoint_per_resource_wins_over_the_operator_setting(gemma_body: dict[str, Any]) -> None:
    s = Settings(modelscope_endpoint="http://mirror.internal")
    plain = GemmaDeployment.from_body(gemma_body)
    own = variant(gemma_body, model=gemma_body["spec"]["model"] | {"endpoint": "http://own-mirror"})
    env_of = lambda gd: {e["name"]: e.get("value") for e in builders.build_download_job(gd, s)["spec"]["template"]["spec"]["containers"][0]["env"]}  # noqa: E731
    assert env_of(plain)["GEMMA_HUB_ENDPOINT"] == "http://mirror.internal"
    assert env_of(own)["GEMMA_HUB_ENDPOINT"] == "http://own-mirror"


def test_pvc_source_needs_no_job_and_serves_from_the_claim(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, model={"id": "LLM-Research/gemma-3-4b-it", "source": "pvc"}, cache={"existingClaim": "weights"})
    assert builders.build_download_job(gd, settings) is None
    assert builders.build_cache_pvc(gd) is None
    c = server_container(builders.build_server_deployment(gd, settings))
    assert c["command"][2] == "/models/LLM-Research/gemma-3-4b-it"


def test_retained_cache_has_no_owner(gemma_body: dict[str, Any]) -> None:
    gd = variant(gemma_body, cache={"size": "5Gi", "retainOnDelete": True})
    pvc = builders.build_cache_pvc(gd)
    assert pvc is not None and "ownerReferences" not in pvc["metadata"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"


@pytest.mark.parametrize("surge,unavailable", [(0, 1), (1, 0)])
def test_rollout_strategy_follows_the_spec(gemma_body: dict[str, Any], settings: Settings, surge: int, unavailable: int) -> None:
    gd = variant(gemma_body, rollout={"maxSurge": surge, "maxUnavailable": unavailable})
    strategy = builders.build_server_deployment(gd, settings)["spec"]["strategy"]
    assert strategy["rollingUpdate"] == {"maxSurge": surge, "maxUnavailable": unavailable}


def test_default_rollout_needs_no_spare_gpu(gd: GemmaDeployment, settings: Settings) -> None:
    strategy = builders.build_server_deployment(gd, settings)["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def _pod_affinity(manifest: dict[str, Any]) -> Any:
    return (manifest["spec"]["template"]["spec"].get("affinity") or {}).get("podAffinity")


@pytest.mark.parametrize("replicas", [1, 2, 5])
def test_read_write_once_cache_keeps_the_servers_on_one_node(
    gemma_body: dict[str, Any], settings: Settings, replicas: int
) -> None:
    # The default cache is ReadWriteOnce: only one node can mount it, so the replicas share that node.
    # The term is there for every replica count, so kubectl scale never changes the pod template.
    gd = variant(gemma_body, replicas=replicas)
    terms = _pod_affinity(builders.build_server_deployment(gd, settings))["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == [{"labelSelector": {"matchLabels": builders.selector_labels(gd)},
                      "topologyKey": "kubernetes.io/hostname"}]
    template = builders.build_server_deployment(gd, settings)["spec"]["template"]
    assert builders.selector_labels(gd).items() <= template["metadata"]["labels"].items()  # a pod matches its own term


@pytest.mark.parametrize("cache", [
    {"accessModes": ["ReadWriteMany"]},
    {"accessModes": ["ReadOnlyMany"]},
    {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]},
    {"existingClaim": "shared-weights"},  # not ours: its modes are unknown to the builder
])
def test_multi_node_cache_lets_the_servers_spread(gemma_body: dict[str, Any], settings: Settings, cache: dict[str, Any]) -> None:
    gd = variant(gemma_body, replicas=2, cache=cache)
    assert _pod_affinity(builders.build_server_deployment(gd, settings)) is None


def test_user_affinity_is_kept_and_a_user_pod_affinity_wins(gemma_body: dict[str, Any], settings: Settings) -> None:
    node = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h200"]}]}]}}
    gd = variant(gemma_body, replicas=2, affinity={"nodeAffinity": node})
    affinity = builders.build_server_deployment(gd, settings)["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"] == node and "podAffinity" in affinity
    spread = {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"labelSelector": {"matchLabels": {"a": "b"}}, "topologyKey": "zone"}}]}
    gd = variant(gemma_body, replicas=2, affinity={"podAntiAffinity": spread})
    affinity = builders.build_server_deployment(gd, settings)["spec"]["template"]["spec"]["affinity"]
    assert affinity == {"podAntiAffinity": spread}


def test_download_job_passes_the_stall_timeout_the_downloader_reads(
        gemma_body: dict[str, Any], settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemma_operator.download import cli

    def container(gd: GemmaDeployment) -> dict[str, Any]:
        job = builders.build_download_job(gd, settings)
        assert job is not None
        c: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
        return c

    default = {e["name"]: e.get("value") for e in container(GemmaDeployment.from_body(gemma_body))["env"]}
    assert default[cli.STALL_TIMEOUT_ENV] == "600"
    c = container(variant(gemma_body, download={"stallTimeoutSeconds": 120}))
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env[cli.STALL_TIMEOUT_ENV] == "120"
    # The downloader, started with the Job's args and environment, uses it.
    monkeypatch.setenv(cli.STALL_TIMEOUT_ENV, env[cli.STALL_TIMEOUT_ENV])
    assert cli.parse(c["args"]).stall_timeout == 120


def test_with_a_gateway_the_servers_admit_only_its_pods_and_the_extra_peers(gd: GemmaDeployment) -> None:
    assert builders.build_server_network_policy(gd, Settings()) is None, "no gateway: no policy"
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    on = Settings(gateway_url="http://gw.gemma-system.svc:8000/v1", gateway_namespace="gemma-system",
                  gateway_pod_labels={"app.kubernetes.io/component": "gateway"}, gateway_extra_peers=(prometheus,))
    policy = builders.build_server_network_policy(gd, on)
    assert policy is not None
    assert policy["spec"]["podSelector"]["matchLabels"] == builders.selector_labels(gd)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gemma-system"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},
                            prometheus]
    off = Settings(gateway_url="http://gw:8000/v1", gateway_network_policy=False)
    assert builders.build_server_network_policy(gd, off) is None


def test_gateway_settings_parse_the_charts_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_GATEWAY_POD_LABELS", "app.kubernetes.io/name=gemma-operator,app.kubernetes.io/component=gateway")
    monkeypatch.setenv("GEMMA_GATEWAY_EXTRA_PEERS", '[{"podSelector": {}}]')
    monkeypatch.setenv("GEMMA_GATEWAY_NETWORK_POLICY", "false")
    s = Settings()
    assert s.gateway_pod_labels == {"app.kubernetes.io/name": "gemma-operator", "app.kubernetes.io/component": "gateway"}
    assert s.gateway_extra_peers == ({"podSelector": {}},) and s.gateway_network_policy is False


def test_the_gateway_policy_is_parsed_and_a_wrong_one_refused(gemma_body: dict[str, Any]) -> None:
    from pydantic import ValidationError
    assert variant(gemma_body).spec.gateway.policy == "PrefixHash"
    assert variant(gemma_body, gateway={"policy": "LeastLoaded"}).spec.gateway.policy == "LeastLoaded"
    with pytest.raises(ValidationError):
        variant(gemma_body, gateway={"policy": "Random"})
