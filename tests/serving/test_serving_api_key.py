"""Issue 5, acceptance 4 (and the extraArgs/env pass-through): gemma.yaml with apiKeySecretRef, extraArgs, env.
Issue 12: with apiKeySecretRef, no route of the server serves without the key (vLLM's own check guards /v1
and a few prefixes only; the operator's guard, gemma_operator/server_auth.py, loaded from the rendered
ConfigMap with `--middleware`, covers the rest). One server start for the whole module."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serving_harness import LocalServer, flag_value, render, render_config_maps, server_container, variant

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

SECRET = {"name": "gemma-api-key", "key": "api-key"}
KEY = "gemma-test-key-5d1f0c9a7e3b"
EXTRA_ARGS = ["--max-logprobs", "2"]
EXTRA_ENV = {"name": "GEMMA_SERVING_TEST", "value": "from-spec"}
MODEL = "Gemma3-4b"


BODY = variant(apiKeySecretRef=SECRET, vllm={"extraArgs": EXTRA_ARGS, "env": [EXTRA_ENV]})


@pytest.fixture(scope="module")
def manifest() -> dict:
    return render(BODY)


@pytest.fixture(scope="module")
def config_maps() -> list[dict]:
    """What the operator renders beside the Deployment: the API-key guard the pods mount."""
    return render_config_maps(BODY)


@pytest.fixture(scope="module")
def server(start_server, manifest, config_maps) -> Iterator[LocalServer]:
    s = start_server(manifest, secrets={(SECRET["name"], SECRET["key"]): KEY}, config_maps=config_maps)
    yield s
    s.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


CALLS = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/completions", {"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 4}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    ),
]


def test_the_key_comes_from_the_secret_not_the_command_line(manifest):
    c = server_container(manifest)
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": SECRET}}
    assert not any("api-key" in a for a in c["command"] + c["args"])
    assert c["args"][-len(EXTRA_ARGS) :] == EXTRA_ARGS
    assert EXTRA_ENV in c["env"]


def test_calls_without_the_key_get_401_and_with_it_200(server):
    """Acceptance 4."""
    for method, path, body in CALLS:
        for headers in ({}, auth("wrong-key")):
            r = requests.request(method, server.base_url + path, json=body, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:300])
        r = requests.request(method, server.base_url + path, json=body, headers=auth(KEY), timeout=60)
        assert r.status_code == 200, (method, path, r.status_code, r.text[:300])


def test_probes_keep_working_without_the_key(server):
    for kind in server.probes:
        assert server.probe(kind), f"{kind} fails on {server.probe_url(kind)} when an API key is set"


def test_the_key_is_in_no_process_argument_list(server):
    """Acceptance 4: /proc/<pid>/cmdline of the server and all its children; the key reaches it by env."""
    pids = server.pids()
    assert pids and pids[0] == server.proc.pid
    assert len(pids) >= 2, "expected the API server and its engine process"
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        assert KEY.encode() not in cmdline, f"the API key is on the command line of pid {pid}"
    environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    assert f"VLLM_API_KEY={KEY}".encode() in environ
    assert b"GEMMA_SERVING_TEST=from-spec" in environ


def test_examples_take_the_key_from_OPENAI_API_KEY(server, examples):
    env = {"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": KEY}
    assert json.loads(examples.run("vllm_openai_completions.py", "--json", env=env).stdout)["model"] == MODEL
    assert (
        json.loads(
            examples.run("vllm_openai_chat_completions.py", "--json", "--max-tokens", "8", env=env).stdout
        )["model"]
        == MODEL
    )
    assert len(examples.run("curl_examples.sh", env=env).stdout.strip().splitlines()) == 3
    no_key = {"OPENAI_BASE_URL": server.openai_base_url}
    failed = examples.run("vllm_openai_completions.py", env=no_key, check=False)
    assert failed.returncode != 0 and "401" in failed.stderr
    failed = examples.run("curl_examples.sh", env=no_key, check=False)
    assert failed.returncode != 0 and "401" in failed.stderr


def test_extra_args_reach_the_server(server):
    """spec.vllm.extraArgs `--max-logprobs 2`: 2 logprobs are served, 3 refused."""
    url = server.base_url + "/v1/completions"
    body = {"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 2}
    r = requests.post(url, json={**body, "logprobs": 2}, headers=auth(KEY), timeout=60)
    assert r.status_code == 200, r.text[:300]
    r = requests.post(url, json={**body, "logprobs": 3}, headers=auth(KEY), timeout=60)
    assert r.status_code == 400, r.text[:300]


# ------------------------------------------------------------------------------------------------ issue 12

# The only routes that answer without the key (gemma_operator/server_auth.py says why each): probes that
# serve no inference.
ALLOWED_WITHOUT_KEY = {("GET", "/health"), ("GET", "/ping"), ("GET", "/metrics")}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "San Francisco is a", "max_tokens": 2}
# Bodies a route would accept (so that, unguarded, it would really serve); the default is a completion.
BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/chat/completions/render": CHAT,
    "/v1/chat/completions/batch": {"model": MODEL, "messages": [CHAT["messages"]], "max_tokens": 2},
    "/v1/messages": CHAT,
    "/v1/messages/render": CHAT,
    "/v1/messages/count_tokens": {"model": MODEL, "messages": CHAT["messages"]},
    "/v1/responses": {"model": MODEL, "input": "hi", "max_output_tokens": 2},
    "/v1/responses/render": {"model": MODEL, "input": "hi"},
    "/tokenize": {"model": MODEL, "prompt": "hi"},
    "/detokenize": {"model": MODEL, "tokens": [2, 77, 78]},
    "/v1/completions/derender": {"model": MODEL, "tokens": [2, 77, 78]},
    "/v1/chat/completions/derender": {"model": MODEL, "tokens": [2, 77, 78]},
    "/inference/v1/generate": {"model": MODEL, "token_ids": [2, 77, 78], "sampling_params": {"max_tokens": 2}},
    "/generative_scoring": {"model": MODEL, "query": "hi", "items": ["a"], "label_token_ids": [77]},
    # Never a valid scaling request: the route must answer 401 before it parses anything.
    "/scale_elastic_ep": {},
}
ROUTE_LINE = re.compile(r"Route: (\S+), Methods: ([A-Z, ]+)$")
WS_LINE = re.compile(r"Route: (\S+), Endpoint: (\S+)$")


def registered_routes(server: LocalServer) -> tuple[set[tuple[str, str]], set[str]]:
    """Every (method, path) the running server registered: its /openapi.json (read with the key) and the
    route table vLLM logs at start, which also names the routes left out of the schema (/docs, /redoc,
    the render routes, /inference/v1/generate ...). And the paths without methods (WebSocket routes)."""
    r = requests.get(server.base_url + "/openapi.json", headers=auth(KEY), timeout=30)
    assert r.status_code == 200, r.text[:300]
    routes = {(m.upper(), p) for p, ops in r.json()["paths"].items() for m in ops}
    websockets = set()
    for line in server.log_path.read_text(errors="replace").splitlines():
        if m := ROUTE_LINE.search(line.strip()):
            routes |= {(meth.strip(), m.group(1)) for meth in m.group(2).split(",") if meth.strip() != "HEAD"}
        elif m := WS_LINE.search(line.strip()):
            websockets.add(m.group(1))
    return routes, websockets


def call(server: LocalServer, method: str, path: str, headers: dict[str, str]) -> requests.Response:
    url = server.base_url + re.sub(r"\{[^}]+\}", "x", path)
    body = BODIES.get(path, COMPLETION) if method in ("POST", "PUT", "PATCH") else None
    return requests.request(method, url, json=body, headers=headers, timeout=60, allow_redirects=False)


def test_the_guard_is_loaded_from_the_mounted_configmap(server, manifest, config_maps):
    """The module vLLM imports is the ConfigMap's file at the mount, found through PYTHONPATH, as in the pod."""
    (cm,) = config_maps
    c = server_container(manifest)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "auth-middleware"]
    assert mount["readOnly"] is True
    assert flag_value(server.argv, "--middleware") == "gemma_auth_middleware.RequireApiKey"
    local = Path(server.env["PYTHONPATH"])
    assert (local / "gemma_auth_middleware.py").read_text() == cm["data"]["gemma_auth_middleware.py"]
    assert not (local.stat().st_mode & 0o222), "the mount must be read-only"


def test_no_route_serves_without_the_key(server):
    """Issue 12: every registered route without a key (and with a wrong one) answers 401, except the probes."""
    routes, websockets = registered_routes(server)
    assert ("POST", "/invocations") in routes and ("POST", "/v1/completions") in routes, sorted(routes)
    assert ALLOWED_WITHOUT_KEY <= routes
    answers, wrong = {}, []
    for method, path in sorted(routes):
        for headers in ({}, auth("wrong-key"), {"Authorization": KEY}):
            r = call(server, method, path, headers)
            answers.setdefault((method, path), r.status_code)
            expected = 200 if (method, path) in ALLOWED_WITHOUT_KEY else 401
            if r.status_code != expected:
                wrong.append(f"{method} {path} {headers}: {r.status_code} {r.text[:120]!r}")
    for path in sorted(websockets):  # a WebSocket route refuses the upgrade (403) instead of accepting (101)
        r = requests.get(server.base_url + path, timeout=30, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        answers[("WS", path)] = r.status_code
        if r.status_code == 101:
            wrong.append(f"WS {path}: 101")
    print("\n[serving] without a key: " + ", ".join(f"{m} {p} {s}" for (m, p), s in sorted(answers.items())))
    assert not wrong, "routes that do not need the key:\n" + "\n".join(wrong)
    assert server.proc.poll() is None, f"the server died during the calls:\n{server.log_tail()}"


def test_with_the_key_invocations_and_completions_serve(server):
    for path, body in (("/invocations", COMPLETION), ("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        r = requests.post(server.base_url + path, json=body, headers=auth(KEY), timeout=120)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        assert r.json()["choices"], r.text[:300]
