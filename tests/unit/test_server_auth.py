"""Issue 12: the API-key guard of the server pods (gemma_operator/server_auth.py) and how the builders
deliver it (a ConfigMap mounted read-only, on PYTHONPATH, loaded with vLLM's `--middleware`)."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from gemma_operator import builders, server_auth
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment

KEY_REF = {"name": "keys", "key": "openai"}
KEY = "sk-test-0123456789"


def variant(body: dict[str, Any], **spec: Any) -> GemmaDeployment:
    return GemmaDeployment.from_body(body | {"spec": body["spec"] | spec})


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture
def keyed(gemma_body: dict[str, Any]) -> GemmaDeployment:
    return variant(gemma_body, apiKeySecretRef=KEY_REF)


# --------------------------------------------------------------------------------------------- the builder


def test_the_configmap_carries_the_guard_and_is_a_child_like_the_others(keyed: GemmaDeployment) -> None:
    cm = builders.build_auth_configmap(keyed)
    assert cm is not None
    assert (cm["apiVersion"], cm["kind"]) == ("v1", "ConfigMap")
    meta = cm["metadata"]
    assert (meta["name"], meta["namespace"]) == ("gemma-auth", "ml")
    assert meta["labels"] == builders.labels(keyed, "server")
    assert meta["ownerReferences"] == [builders.owner_reference(keyed)]
    assert cm["data"] == {"gemma_auth_middleware.py": Path(server_auth.__file__).read_text()}


def test_no_key_no_configmap_and_no_change_to_the_pods(gd: GemmaDeployment, settings: Settings) -> None:
    assert builders.build_auth_configmap(gd) is None
    dep = builders.build_server_deployment(gd, settings)
    c = container(dep)
    assert "--middleware" not in c["args"]
    assert "PYTHONPATH" not in {e["name"] for e in c["env"]}
    assert builders.AUTH_VOLUME not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert builders.AUTH_HASH_ANNOTATION not in dep["spec"]["template"]["metadata"]["annotations"]


def test_with_a_key_the_server_loads_the_guard_from_the_read_only_mount(
    keyed: GemmaDeployment, settings: Settings
) -> None:
    dep = builders.build_server_deployment(keyed, settings)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    args = c["args"]
    assert args[args.index("--middleware") + 1] == "gemma_auth_middleware.RequireApiKey"
    env = {e["name"]: e for e in c["env"]}
    assert env["PYTHONPATH"] == {"name": "PYTHONPATH", "value": "/etc/gemma-operator/auth"}
    assert env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": KEY_REF}}
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == builders.AUTH_VOLUME]
    assert mount == {"name": "auth-middleware", "mountPath": "/etc/gemma-operator/auth", "readOnly": True}
    (volume,) = [v for v in pod["volumes"] if v["name"] == builders.AUTH_VOLUME]
    assert volume == {"name": "auth-middleware", "configMap": {"name": "gemma-auth", "defaultMode": 0o444}}
    # The restricted security context is unchanged: read-only root, non-root.
    assert c["securityContext"] == builders.RESTRICTED_CONTAINER_SECURITY
    assert pod["securityContext"]["runAsNonRoot"] is True
    # A new guard rolls the pods (vLLM imports it once, at start).
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[builders.AUTH_HASH_ANNOTATION] == builders.AUTH_MIDDLEWARE_HASH


def test_the_guard_flag_comes_before_the_users_extra_args(gemma_body: dict[str, Any], settings: Settings) -> None:
    gd = variant(gemma_body, apiKeySecretRef=KEY_REF, vllm={"extraArgs": ["--enforce-eager"]})
    args = container(builders.build_server_deployment(gd, settings))["args"]
    assert args[-1] == "--enforce-eager" and args.index("--middleware") < args.index("--enforce-eager")


def test_the_shipped_module_imports_only_the_standard_library() -> None:
    """The ConfigMap holds the file as it is: in the server image it cannot import gemma_operator."""
    tree = ast.parse(builders.AUTH_MIDDLEWARE_SOURCE)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# ---------------------------------------------------------------------------------------------- the guard


def shipped_module(directory: Path) -> Any:
    """The ConfigMap's file written out as the kubelet projects it, imported under its pod name."""
    cm = builders.build_auth_configmap(GemmaDeployment.from_body({
        "metadata": {"name": "g", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"id": "o/m"}, "apiKeySecretRef": KEY_REF},
    }))
    assert cm is not None
    ((name, text),) = cm["data"].items()
    (directory / name).write_text(text)
    spec = importlib.util.spec_from_file_location(builders.AUTH_MODULE, directory / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


def run(guard: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def http(method: str, path: str, authorization: bytes | None = None, root_path: str = "") -> dict[str, Any]:
    headers = [(b"host", b"x")] + ([(b"authorization", authorization)] if authorization is not None else [])
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": headers}


def status_of(sent: list[dict[str, Any]]) -> int:
    return int(sent[0]["status"])


@pytest.fixture(params=["package", "shipped"])
def guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The class as vLLM makes it, `RequireApiKey(app)`, with the key in VLLM_API_KEY."""
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    module = server_auth if request.param == "package" else shipped_module(tmp_path)
    return module.RequireApiKey(_inner)


@pytest.mark.parametrize("method,path", [
    ("POST", "/invocations"), ("POST", "/v1/completions"), ("POST", "/tokenize"), ("POST", "/detokenize"),
    ("POST", "/inference/v1/generate"), ("POST", "/scale_elastic_ep"), ("GET", "/openapi.json"),
    ("GET", "/docs"), ("GET", "/version"), ("GET", "/load"), ("POST", "/ping"), ("POST", "/health"),
    ("OPTIONS", "/v1/completions"), ("GET", "/health/"), ("GET", "/healthz"), ("GET", "/metricsx"),
    ("GET", "/v1/../health"), ("GET", "/a-route-of-a-later-vllm"),
])
def test_every_route_but_the_probes_needs_the_key(guard: Any, method: str, path: str) -> None:
    for authorization in (None, b"Bearer wrong", b"Bearer " + KEY.encode() + b"x", KEY.encode(),
                          b"Basic " + KEY.encode(), b"Bearer", b""):
        sent = run(guard, http(method, path, authorization))
        assert status_of(sent) == 401, (method, path, authorization)
        assert sent[1]["body"] != b"served"
        assert (b"www-authenticate", b'Bearer realm="gemma"') in sent[0]["headers"]
    assert run(guard, http(method, path, b"Bearer " + KEY.encode()))[-1]["body"] == b"served"
    assert run(guard, http(method, path, b"bearer " + KEY.encode()))[-1]["body"] == b"served"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", ["/health", "/ping", "/metrics"])
def test_the_probes_answer_without_a_key(guard: Any, method: str, path: str) -> None:
    assert run(guard, http(method, path))[-1]["body"] == b"served"
    assert run(guard, http(method, "/prefix" + path, root_path="/prefix"))[-1]["body"] == b"served"


def test_websockets_need_the_key(guard: Any) -> None:
    scope = {"type": "websocket", "path": "/v1/realtime", "headers": []}
    assert run(guard, scope) == [{"type": "websocket.close", "code": 1008}]
    scope["headers"] = [(b"authorization", b"Bearer " + KEY.encode())]
    assert run(guard, scope) == [{"type": "websocket.accept"}]
    assert run(guard, {"type": "websocket", "path": "/health", "headers": []})[0]["type"] == "websocket.close"


def test_lifespan_passes_through(guard: Any) -> None:
    seen = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    guard.app = app
    run(guard, {"type": "lifespan"})
    assert seen == ["lifespan"]


@pytest.mark.parametrize("key", ["", None])
def test_without_a_key_it_fails_closed(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    if key is None:
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("VLLM_API_KEY", key)
    guard = server_auth.RequireApiKey(_inner)
    assert status_of(run(guard, http("POST", "/invocations"))) == 401
    assert status_of(run(guard, http("POST", "/invocations", b"Bearer "))) == 401
    assert run(guard, http("GET", "/health"))[-1]["body"] == b"served"


def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = server_auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(server_auth.hmac, "compare_digest", spy)
    guard = server_auth.RequireApiKey(_inner, key=KEY)
    run(guard, http("POST", "/v1/completions", b"Bearer short"))
    run(guard, http("POST", "/v1/completions", b"Bearer " + KEY.encode() * 10))
    assert calls == [(32, 32), (32, 32)]  # digests of one length: the time says nothing of the key
