"""Issue 15, LoRA adapters: spec.adapters served for real by vLLM (CPU build) with the operator's rendered
command on the tiny Gemma 3 text model and a tiny PEFT LoRA adapter made for it (make_tiny_lora.py).

The adapter is put where the operator's adapters Job puts it (GemmaDeployment.adapter_dir, under the cache
volume, which the harness maps to a local directory); the rendered `--lora-modules name=path` must find it
there. Then: /v1/models lists the adapter next to the base model, chat and completions requests with
model=<adapter name> get 200 and an answer that differs from the base model's (the adapter is applied),
and a name that is neither gets vLLM's 404.

A second start shows what the operator's rank check (the adapters Job, AdapterRankTooLarge) saves the user
from: an adapter of rank 16 on servers of spec.adapterSettings.maxRank 8 makes vLLM exit at start, and the
downloader's own check (gemma_operator.download.adapters.check_rank) refuses that adapter, naming the field.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from serving_harness import HERE, LocalServer, flag_value, render, server_container, variant, vllm_python

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

MODEL = "Gemma3-4b"  # gemma.yaml's servedModelName
ADAPTER = "tiny-lora"
ADAPTER_ID = "test-org/tiny-gemma3-lora"
RANK = 8


def adapters_body(max_rank: int = RANK) -> dict[str, Any]:
    return variant(adapters=[{"name": ADAPTER, "id": ADAPTER_ID, "source": "modelscope", "revision": "v1"}],
                   adapterSettings={"maxRank": max_rank})


def make_adapter(venv: Path, out: Path, rank: int) -> Path:
    proc = subprocess.run([vllm_python(venv), str(HERE / "make_tiny_lora.py"), str(out), str(rank)],
                          check=False, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def claim_of(deployment: dict[str, Any]) -> str:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return str(next(v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v))


def put_on_volume(venv: Path, claim_dir: Path, body: dict[str, Any], rank: int) -> Path:
    """The adapter where the adapters Job puts it: GemmaDeployment.adapter_dir under the volume's root."""
    from gemma_operator import paths
    from gemma_operator.spec import GemmaDeployment

    gd = GemmaDeployment.from_body(body)
    pod_dir = gd.adapter_dir(gd.spec.adapters[0])
    assert pod_dir.startswith(paths.CACHE_ROOT + "/adapters/"), pod_dir
    return make_adapter(venv, claim_dir / pod_dir[len(paths.CACHE_ROOT) + 1:], rank)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return render(adapters_body())


def test_the_rendered_command_serves_the_adapter_from_the_cache_volume(deployment):
    args = server_container(deployment)["args"]
    assert "--enable-lora" in args
    assert flag_value(args, "--max-lora-rank") == str(RANK) and flag_value(args, "--max-loras") == "1"
    assert flag_value(args, "--lora-modules") == f"{ADAPTER}=/models/adapters/modelscope/test-org--tiny-gemma3-lora/v1"
    mounts = server_container(deployment)["volumeMounts"]
    assert {"name": "model-cache", "mountPath": "/models", "readOnly": True} in mounts


@pytest.fixture(scope="module")
def server(start_server, vllm_venv, deployment, tmp_path_factory) -> Iterator[LocalServer]:
    claim_dir = tmp_path_factory.mktemp("cache-volume")
    put_on_volume(vllm_venv, claim_dir, adapters_body(), RANK)
    s = start_server(deployment, claims={claim_of(deployment): claim_dir})
    yield s
    s.stop()


def client(server: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="EMPTY", max_retries=0, timeout=120)


def test_v1_models_lists_the_adapter_with_the_model_as_parent(server):
    models = {m["id"]: m for m in requests.get(server.openai_base_url + "/models", timeout=30).json()["data"]}
    assert set(models) == {MODEL, ADAPTER}, sorted(models)
    assert models[ADAPTER]["parent"] == MODEL
    assert models[ADAPTER]["root"].endswith("/adapters/modelscope/test-org--tiny-gemma3-lora/v1")


def test_a_request_for_the_adapter_is_answered_by_the_adapter(server):
    c = client(server)
    messages = [{"role": "user", "content": "Tell me something about large language models."}]
    answers = {}
    for model in (ADAPTER, MODEL):
        r = c.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True)
        assert r.model == model and r.usage.completion_tokens >= 1
        answers[model] = [t.logprob for t in r.choices[0].logprobs.content]
    print(f"\n[adapters] logprobs with {ADAPTER}: {answers[ADAPTER][:3]}, base: {answers[MODEL][:3]}")
    # The adapter's random B matrices move the logits: the same greedy request scores differently.
    assert answers[ADAPTER] != answers[MODEL]
    done = c.completions.create(model=ADAPTER, prompt="San Francisco is a", max_tokens=4, temperature=0)
    assert done.model == ADAPTER and done.usage.completion_tokens >= 1


def test_a_name_that_is_neither_model_nor_adapter_gets_404(server):
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=2)


def test_a_rank_above_max_lora_rank_stops_vllm_and_the_download_check_names_the_field(
        start_server, vllm_venv, server, tmp_path_factory):
    from gemma_operator.download.adapters import Adapter, check_rank
    from gemma_operator.download.errors import EXIT_ADAPTER_RANK, DownloadError
    from gemma_operator.download.request import Request

    server.stop()  # two CPU servers at once would share two cores
    claim_dir = tmp_path_factory.mktemp("cache-volume-rank16")
    body = adapters_body(max_rank=RANK)
    adapter_dir = put_on_volume(vllm_venv, claim_dir, body, 2 * RANK)
    rendered = render(body)
    with pytest.raises(RuntimeError, match="exited") as died:
        start_server(rendered, claims={claim_of(rendered): claim_dir}, ready_timeout=240)
    # vLLM's own words (vllm/lora/peft_helper.py), found only once the server has loaded the model.
    said = f"LoRA rank {2 * RANK} is greater than max_lora_rank {RANK}"
    assert said in str(died.value), str(died.value)[-2000:]
    print(f"\n[adapters] vLLM with a rank-16 adapter and --max-lora-rank 8 exits at start: {said}")

    request = Request(source="modelscope", model_id=ADAPTER_ID, revision="v1", adapter=True,
                      cache_root=str(claim_dir))
    assert Path(request.model_dir) == adapter_dir
    with pytest.raises(DownloadError) as refused:
        check_rank(Adapter("spec.adapters[0]", ADAPTER, request), RANK)
    assert refused.value.exit_code == EXIT_ADAPTER_RANK
    assert "spec.adapters[0]" in refused.value.message and "spec.adapterSettings.maxRank to 16" in refused.value.message
