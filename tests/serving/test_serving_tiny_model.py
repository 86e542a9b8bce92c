"""The tiny Gemma 3 model fixture and the vLLM venv: deterministic, in seconds, shaped as DESIGN.md section 6 says."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from serving_harness import INSTALL_SCRIPT, make_tiny_model, vllm_python

pytestmark = [pytest.mark.serving, pytest.mark.timeout(600)]


def digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def test_the_model_is_generated_deterministically_in_seconds(vllm_venv, tiny_model, tmp_path):
    start = time.monotonic()
    again = make_tiny_model(vllm_venv, tmp_path / "again")
    elapsed = time.monotonic() - start
    assert digest(again) == digest(tiny_model)
    assert elapsed < 60, elapsed
    print(f"\n[serving] tiny model generated in {elapsed:.1f} s")


def test_the_model_is_a_tiny_gemma3_text_model(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["model_type"] == "gemma3_text"
    assert (
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    ) == (64, 2, 2, 1, 32)
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert 256 < config["vocab_size"] <= 1024
    assert (tiny_model / "model.safetensors").stat().st_size < 1_000_000


TEMPLATE_PROBE = r"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
as_string = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in as_string]
print(json.dumps({
    "ids": [tok.convert_tokens_to_ids(t) for t in ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]],
    "string": tok.apply_chat_template(as_string, tokenize=False, add_generation_prompt=True),
    "parts": tok.apply_chat_template(as_parts, tokenize=False, add_generation_prompt=True),
    "encoded": tok("San Francisco is a").input_ids,
    "decoded": tok.decode(tok("San Francisco is a", add_special_tokens=False).input_ids),
}))
"""


def test_tokenizer_and_chat_template(vllm_venv, tiny_model):
    proc = subprocess.run(
        [vllm_python(vllm_venv), "-c", TEMPLATE_PROBE, str(tiny_model)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ids"] == [0, 1, 2, 3, 4, 5]
    expected = (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    assert out["string"] == out["parts"] == expected
    assert out["encoded"][0] == 2  # <bos> first, as Gemma's tokenizer does
    assert out["decoded"] == "San Francisco is a"


def test_install_script_reuses_a_complete_venv(vllm_venv):
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(vllm_venv)
    assert time.monotonic() - start < 30
    printed = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--print"], check=False, capture_output=True, text=True, timeout=30
    )
    assert printed.stdout.strip() == str(vllm_venv)
    version = subprocess.run(
        [str(vllm_venv / "bin" / "vllm"), "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert version.returncode == 0 and "0.32.0" in version.stdout, version.stderr[-2000:]
    # torchvision only as the build of this torch (vLLM's Gemma 3 image processor imports it): pip's own
    # pick would be built for another torch and break transformers.
    pins = subprocess.run(
        [vllm_python(vllm_venv), "-c",
         "from importlib.metadata import requires, version; "
         "print(version('torch').split('+')[0], [r for r in requires('torchvision') if r.startswith('torch')])"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pins.returncode == 0, pins.stderr[-2000:]
    torch_version, torch_pins = pins.stdout.split(" ", 1)
    assert f"torch=={torch_version}" in torch_pins.replace(" (", "").replace(")", ""), pins.stdout
