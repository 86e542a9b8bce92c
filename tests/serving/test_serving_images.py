"""Issue 15, images in: spec.multimodal.images, served for real by vLLM (CPU build) with the operator's rendered
command on a tiny random Gemma3ForConditionalGeneration (tests/serving/make_tiny_gemma_vlm.py).

- images enabled with maxPerPrompt 2: an OpenAI chat request with a real PNG as an image_url data URL gets 200
  and its prompt holds the image's tokens (the same prompt without the image has MM_TOKENS_PER_IMAGE + 3
  fewer); two images are served; three get vLLM's 400;
- the text-only default ({"image":0}): text is served, one image gets vLLM's 400, and vLLM runs in its
  text-only mode (it skips the vision tower when every limit of its modalities is 0).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from make_tiny_gemma_vlm import MM_TOKENS_PER_IMAGE, TOKENS_PER_IMAGE, png
from serving_harness import LocalServer, flag_value, render, server_container, variant

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

MODEL = "Gemma3-4b"
MAX_IMAGES = 2
IMAGE_URL = "data:image/png;base64," + base64.b64encode(png()).decode()


def messages(images: int) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": IMAGE_URL}} for _ in range(images)]
    content.append({"type": "text", "text": "Describe this image."})
    return [{"role": "user", "content": content}]


def chat(server: LocalServer, images: int) -> Any:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="EMPTY", max_retries=0, timeout=120)
    return client.chat.completions.create(model=MODEL, messages=messages(images), max_tokens=4, temperature=0)


def refused(server: LocalServer, images: int) -> str:
    with pytest.raises(openai.BadRequestError) as e:
        chat(server, images)
    assert e.value.status_code == 400
    return str(e.value.message)


@pytest.fixture(scope="module")
def with_images() -> dict[str, Any]:
    return render(variant(multimodal={"images": {"enabled": True, "maxPerPrompt": MAX_IMAGES}}))


@pytest.fixture(scope="module")
def text_only() -> dict[str, Any]:
    return render(variant())  # gemma.yaml: no spec.multimodal


def test_the_rendered_command_carries_the_image_limit(with_images, text_only):
    assert json.loads(flag_value(server_container(with_images)["args"], "--limit-mm-per-prompt") or "null") == {
        "image": MAX_IMAGES
    }
    assert json.loads(flag_value(server_container(text_only)["args"], "--limit-mm-per-prompt") or "null") == {
        "image": 0
    }


def test_the_png_is_a_real_png():
    data = png()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")


@pytest.fixture(scope="module")
def server(start_server, tiny_vlm, with_images) -> Iterator[LocalServer]:
    s = start_server(with_images, model=tiny_vlm)
    yield s
    s.stop()


def test_an_image_is_served_and_counted_in_the_prompt_tokens(server):
    text = chat(server, 0)
    one = chat(server, 1)
    two = chat(server, MAX_IMAGES)
    counts = [r.usage.prompt_tokens for r in (text, one, two)]
    print(f"\n[images] prompt tokens with 0, 1, 2 images: {counts} ({MM_TOKENS_PER_IMAGE} soft tokens per image)")
    assert counts == [counts[0], counts[0] + TOKENS_PER_IMAGE, counts[0] + 2 * TOKENS_PER_IMAGE], counts
    for r in (one, two):
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1


def test_more_images_than_allowed_get_vllms_400(server):
    message = refused(server, MAX_IMAGES + 1)
    assert f"At most {MAX_IMAGES} image(s) may be provided in one prompt" in message, message
    assert chat(server, 1).usage.prompt_tokens > 0  # the server still serves


def test_the_text_only_default_refuses_an_image(start_server, tiny_vlm, text_only, server):
    server.stop()  # two CPU servers at once would share two cores
    s = start_server(text_only, model=tiny_vlm)
    try:
        assert chat(s, 0).usage.prompt_tokens > 0
        message = refused(s, 1)
        assert "At most 0 image(s) may be provided in one prompt" in message, message
    finally:
        s.stop()
    # ... and vLLM knows it is text only, so it builds no vision tower and profiles no encoder memory (its
    # Gemma 3 skips the tower when every limit of the tower's modalities is 0); with images it says nothing so.
    text_only_mode = "All limits of multimodal modalities supported by the model are set to 0, running in text-only mode"
    assert text_only_mode in s.log_path.read_text(errors="replace")
    assert text_only_mode not in server.log_path.read_text(errors="replace")
