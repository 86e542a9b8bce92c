#!/usr/bin/env python3
"""The seed's chat call with the openai client, against a GemmaDeployment's OpenAI endpoint.

    python vllm_openai_chat_completions.py             # one answer
    python vllm_openai_chat_completions.py --stream    # the answer as it is generated

Environment: OPENAI_BASE_URL (default: the in-cluster URL of the repo's gemma.yaml), OPENAI_API_KEY
(default "EMPTY"; the key of spec.apiKeySecretRef when the server requires one), OPENAI_MODEL (default
"Gemma3-4b"). From outside the cluster: `kubectl port-forward svc/gemma 8000:8000` and
OPENAI_BASE_URL=http://127.0.0.1:8000/v1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from openai import OpenAI

DEFAULT_BASE_URL = "http://gemma.default.svc.cluster.local:8000/v1"
DEFAULT_MODEL = "Gemma3-4b"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", default="You are a helpful assistant.")
    p.add_argument("--message", default="Tell me something about large language models.")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--stream", action="store_true", help="stream the answer (server-sent events)")
    p.add_argument(
        "--json", action="store_true", help="print the response (or a summary of the stream) as JSON"
    )
    args = p.parse_args(argv)

    client = OpenAI(
        base_url=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=float(os.environ.get("OPENAI_TIMEOUT", "60")),
        max_retries=0,
    )
    request = {
        "model": os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
        "messages": [
            {"role": "system", "content": args.system},
            {"role": "user", "content": args.message},
        ],
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    }

    if not args.stream:
        response = client.chat.completions.create(**request)
        if args.json:
            print(response.model_dump_json())
        else:
            print("Chat response:", response.choices[0].message.content)
        return 0

    chunks, text, finish_reason, model = 0, [], None, None
    if not args.json:
        print("Chat response: ", end="", flush=True)
    for chunk in client.chat.completions.create(stream=True, **request):
        chunks += 1
        model = chunk.model
        for choice in chunk.choices:
            delta = choice.delta.content or ""
            text.append(delta)
            finish_reason = choice.finish_reason or finish_reason
            if not args.json:
                print(delta, end="", flush=True)
    if args.json:
        print(
            json.dumps(
                {"model": model, "chunks": chunks, "text": "".join(text), "finish_reason": finish_reason}
            )
        )
    else:
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
