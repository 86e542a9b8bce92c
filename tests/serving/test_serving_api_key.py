"""Issue 5, acceptance 4 (and the extraArgs/env pass-through): gemma.yaml with apiKeySecretRef, extraArgs, env."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serving_harness import LocalServer, render, server_container, variant

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

SECRET = {"name": "gemma-api-key", "key": "api-key"}
KEY = "gemma-test-key-5d1f0c9a7e3b"
EXTRA_ARGS = ["--max-logprobs", "2"]
EXTRA_ENV = {"name": "GEMMA_SERVING_TEST", "value": "from-spec"}
MODEL = "Gemma3-4b"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return render(variant(apiKeySecretRef=SECRET, vllm={"extraArgs": EXTRA_ARGS, "env": [EXTRA_ENV]}))


@pytest.fixture(scope="module")
def server(start_server, manifest) -> Iterator[LocalServer]:
    s = start_server(manifest, secrets={(SECRET["name"], SECRET["key"]): KEY})
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
