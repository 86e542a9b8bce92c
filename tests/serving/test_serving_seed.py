"""Issue 5, acceptance 1-3 and 6: the rendered server of gemma.yaml, with the tiny model, answers the seed's calls."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from serving_harness import (
    REPO,
    LocalServer,
    flag_value,
    render,
    seed_body,
    server_container,
    variant,
)

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

SEED_SPEC = seed_body()["spec"]
MODEL = SEED_SPEC["servedModelName"]
MAX_LEN = SEED_SPEC["maxModelLen"]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return render(seed_body())


@pytest.fixture(scope="module")
def server(start_server, manifest) -> Iterator[LocalServer]:
    s = start_server(manifest)
    yield s
    s.stop()


def client_env(server: LocalServer) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "EMPTY"}


def test_rendered_command_is_the_seed_recipe(manifest):
    c = server_container(manifest)
    argv = [*c["command"], *c["args"]]
    assert argv[:3] == ["vllm", "serve", "/models/modelscope/LLM-Research--gemma-3-4b-it/master"]
    assert flag_value(argv, "--served-model-name") == MODEL
    assert flag_value(argv, "--max-model-len") == str(MAX_LEN)
    assert flag_value(argv, "--port") == "8000"


def test_ready_server_lists_the_served_model_with_max_model_len(server):
    """Acceptance 1."""
    r = requests.get(server.base_url + "/v1/models", timeout=10)
    assert r.status_code == 200, r.text
    models = r.json()["data"]
    assert [m["id"] for m in models] == [MODEL]
    assert models[0]["max_model_len"] == MAX_LEN


def test_the_probes_pass_only_once_the_model_answers(server):
    """The startup probe failed while the model loaded, and the moment it passed the model answered."""
    assert server.probe_failures_before_ready > 0
    assert server.models_status_at_ready == 200


def test_startup_budget_fits_a_big_model_and_is_configurable():
    def budget(manifest: dict) -> int:
        probe = server_container(manifest)["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]

    # gemma-3-4b-it: ~8.6 GB of bf16 weights from a network volume, then graph capture/compilation.
    assert budget(render(seed_body())) >= 1200
    assert budget(render(variant(vllm={"startupTimeoutSeconds": 600}))) == 600
    assert budget(render(variant(vllm={"startupTimeoutSeconds": 3600}))) == 3600


def test_every_probe_of_the_manifest_passes_once_ready(server):
    assert set(server.probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind in server.probes:
        assert server.probe(kind), f"{kind} fails on {server.probe_url(kind)}"


def test_completions_example_sends_the_seed_curl_body(server, examples):
    """Acceptance 2: the seed's completions call, through examples/vllm_openai_completions.py."""
    resp = json.loads(examples.run("vllm_openai_completions.py", "--json", env=client_env(server)).stdout)
    assert resp["object"] == "text_completion" and resp["model"] == MODEL
    assert 1 <= resp["usage"]["completion_tokens"] <= 7
    assert resp["choices"][0]["finish_reason"] in ("stop", "length")
    out = examples.run("vllm_openai_completions.py", env=client_env(server)).stdout
    assert out.startswith("Completion result:")


def test_curl_examples(server, examples):
    """Acceptance 2: GET /v1/models, POST /v1/completions, POST /v1/chat/completions with curl."""
    lines = [
        json.loads(line)
        for line in examples.run("curl_examples.sh", env=client_env(server)).stdout.splitlines()
        if line.strip()
    ]
    assert len(lines) == 3
    models, completion, chat = lines
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] >= 1
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant"


def test_chat_example_with_the_openai_client(server, examples):
    """Acceptance 2: the seed's chat call (system + user message) with the openai client."""
    resp = json.loads(
        examples.run(
            "vllm_openai_chat_completions.py", "--json", "--max-tokens", "32", env=client_env(server)
        ).stdout
    )
    assert resp["object"] == "chat.completion" and resp["model"] == MODEL
    assert resp["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= resp["usage"]["completion_tokens"] <= 32
    out = examples.run("vllm_openai_chat_completions.py", "--max-tokens", "8", env=client_env(server)).stdout
    assert out.startswith("Chat response:")


def test_streaming_chat_example(server, examples):
    """Acceptance 2: a streaming chat call (server-sent events) with the openai client."""
    summary = json.loads(
        examples.run(
            "vllm_openai_chat_completions.py",
            "--stream",
            "--json",
            "--max-tokens",
            "16",
            env=client_env(server),
        ).stdout
    )
    assert summary["model"] == MODEL
    assert summary["chunks"] >= 2, summary
    assert summary["finish_reason"] in ("stop", "length")
    out = examples.run(
        "vllm_openai_chat_completions.py", "--stream", "--max-tokens", "8", env=client_env(server)
    )
    assert out.stdout.startswith("Chat response:")


def test_prompt_longer_than_max_model_len_is_refused_with_400(server):
    """Acceptance 3: vLLM's own message, for a completion (token ids and text) and for a chat."""
    url = server.base_url + "/v1"
    cases = [
        ("completions", {"prompt": [10] * (MAX_LEN + 50), "max_tokens": 4}),
        ("completions", {"prompt": "hello world, " * MAX_LEN, "max_tokens": 4}),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "hello world, " * MAX_LEN}], "max_tokens": 4},
        ),
    ]
    for path, body in cases:
        r = requests.post(f"{url}/{path}", json={"model": MODEL, **body}, timeout=60)
        assert r.status_code == 400, (path, r.status_code, r.text[:500])
        message = r.json()["error"]["message"]
        assert f"maximum context length is {MAX_LEN} tokens" in message, message


def test_unknown_model_name_is_404(server):
    """Acceptance 3."""
    for path, body in [
        ("completions", {"prompt": "San Francisco is a", "max_tokens": 4}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    ]:
        r = requests.post(
            f"{server.base_url}/v1/{path}", json={"model": "gemma-3-27b-it", **body}, timeout=30
        )
        assert r.status_code == 404, (path, r.status_code, r.text[:500])
        message = r.json()["error"]["message"]
        assert "gemma-3-27b-it" in message and MODEL in message, message  # names the one that exists


def test_completion_tokens_per_second(server):
    """Acceptance 6: a bounded benchmark; the number goes to the report (pytest -s shows it)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "serving_tokens_per_second.py"),
            "--base-url",
            server.openai_base_url,
            "--requests",
            "4",
            "--max-tokens",
            "64",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    human, result = proc.stdout.strip().splitlines()[-2:]
    print(f"\n[serving] time to ready {server.ready_seconds:.1f} s; {human}")
    result = json.loads(result)
    assert result["completion_tokens"] == 4 * 64
    assert result["completion_tokens_per_second"] > 0
