"""Issue 5, acceptance 5: changing spec.maxModelLen changes what the server reports and accepts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from serving_harness import (
    LocalServer,
    flag_value,
    render,
    seed_body,
    server_container,
    variant,
)

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

SEED_MAX_LEN = seed_body()["spec"]["maxModelLen"]
MAX_LEN = 4096
MODEL = "Gemma3-4b"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return render(variant(maxModelLen=MAX_LEN))


@pytest.fixture(scope="module")
def server(start_server, manifest) -> Iterator[LocalServer]:
    s = start_server(manifest)
    yield s
    s.stop()


def test_rendered_args_carry_the_new_max_model_len(manifest):
    c = server_container(manifest)
    assert flag_value(c["args"], "--max-model-len") == str(MAX_LEN) != str(SEED_MAX_LEN)


def test_models_reports_the_new_max_model_len(server):
    models = requests.get(server.base_url + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in models] == [(MODEL, MAX_LEN)]


def test_a_prompt_between_the_old_and_the_new_limit_is_served(server):
    url = server.base_url + "/v1/completions"
    r = requests.post(
        url, json={"model": MODEL, "prompt": [10] * (SEED_MAX_LEN + 100), "max_tokens": 2}, timeout=120
    )
    assert r.status_code == 200, r.text[:300]
    assert r.json()["usage"]["prompt_tokens"] == SEED_MAX_LEN + 100
    r = requests.post(
        url, json={"model": MODEL, "prompt": [10] * (MAX_LEN + 10), "max_tokens": 2}, timeout=60
    )
    assert r.status_code == 400
    assert f"maximum context length is {MAX_LEN} tokens" in r.json()["error"]["message"]
