"""Issue 5: the seed's offline example (examples/vllm_model.py, LLM(...).generate) done right, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from serving_harness import EXAMPLES, SCRUB, vllm_python

pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]

PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from transformers import AutoTokenizer
import vllm_model
tok = AutoTokenizer.from_pretrained(sys.argv[2])
print(json.dumps({
    "stops": vllm_model.stop_token_ids(tok),
    "eos": tok.eos_token_id,
    "end_of_turn": tok.convert_tokens_to_ids("<end_of_turn>"),
    "text_prompt": vllm_model.build_prompt(tok, "Describe this image.", with_image=False),
    "image_prompt": vllm_model.build_prompt(tok, "Describe this image.", with_image=True),
}))
"""


def test_stop_tokens_come_from_the_models_own_tokenizer(vllm_venv, tiny_model):
    proc = subprocess.run(
        [vllm_python(vllm_venv), "-c", PROBE, str(EXAMPLES), str(tiny_model)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stops"] == sorted({out["eos"], out["end_of_turn"]}) == [1, 5]
    # <bos> is left to generate()'s tokenizer; the image placeholder is in the prompt only when an image is given
    assert (
        out["text_prompt"] == "<start_of_turn>user\nDescribe this image.<end_of_turn>\n<start_of_turn>model\n"
    )
    assert out["image_prompt"].startswith("<start_of_turn>user\n<start_of_image>Describe this image.")


def _run_example(vllm_venv, model, tmp_path, *extra: str, max_tokens: int = 4) -> dict:
    """examples/vllm_model.py on `model` (its JSON line), eager, with a small fixed KV cache for the CPU."""
    env = {k: v for k, v in os.environ.items() if not SCRUB.match(k)}
    env.update(
        HF_HUB_OFFLINE="1",
        VLLM_CACHE_ROOT=str(tmp_path / "vllm-cache"),
        HF_HOME=str(tmp_path / "hf"),
        VLLM_NO_USAGE_STATS="1",
        VLLM_HOST_IP="127.0.0.1",
    )
    proc = subprocess.run(
        [vllm_python(vllm_venv), str(EXAMPLES / "vllm_model.py"), "--model", str(model), "--json",
         "--max-tokens", str(max_tokens), "--temperature", "0", "--enforce-eager", "--kv-cache-memory-bytes", "64M",
         *extra],
        check=False, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    # vLLM logs to stdout too: the example's answer is its JSON line
    result: dict = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"prompt"')][-1])
    return result


def test_offline_generate_on_the_tiny_model(vllm_venv, tiny_model, tmp_path):
    out = _run_example(vllm_venv, tiny_model, tmp_path, max_tokens=16)
    assert out["stop_token_ids"] == [1, 5]
    assert out["prompt"].startswith("<start_of_turn>user\n")
    assert 1 <= len(out["token_ids"]) <= 16
    assert out["finish_reason"] in ("stop", "length")


def test_offline_generate_with_an_image_on_the_tiny_vlm(vllm_venv, tiny_vlm, tmp_path):
    """Issue 15: --image goes to generate() as multi_modal_data (a PIL image), and vLLM expands the prompt's
    <start_of_image> into the image's tokens: the prompt grows by them, not by the placeholder alone."""
    from make_tiny_gemma_vlm import MM_TOKENS_PER_IMAGE, TOKENS_PER_IMAGE, png

    image = tmp_path / "image.png"
    image.write_bytes(png())
    message = ("--message", "Describe this image.")
    text = _run_example(vllm_venv, tiny_vlm, tmp_path, *message)
    with_image = _run_example(vllm_venv, tiny_vlm, tmp_path, *message, "--image", str(image))
    print(f"\n[offline] prompt tokens without / with the image: {text['prompt_tokens']} / {with_image['prompt_tokens']}")
    assert with_image["image"] is True and "<start_of_image>" in with_image["prompt"]
    # What one image adds, as in the server test (make_tiny_gemma_vlm.TOKENS_PER_IMAGE explains the count).
    assert with_image["prompt_tokens"] - text["prompt_tokens"] == TOKENS_PER_IMAGE > MM_TOKENS_PER_IMAGE
    assert 1 <= len(with_image["token_ids"]) <= 4
