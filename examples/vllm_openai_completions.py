#!/usr/bin/env python3
"""The seed's completions call, against a GemmaDeployment's OpenAI endpoint.

    OPENAI_BASE_URL=http://gemma.default.svc.cluster.local:8000/v1 python vllm_openai_completions.py

Environment: OPENAI_BASE_URL (default: the in-cluster URL of the repo's gemma.yaml), OPENAI_API_KEY
(default "EMPTY": what vLLM accepts when it runs without an API key; set it to the key of the Secret named
in spec.apiKeySecretRef otherwise), OPENAI_MODEL (default "Gemma3-4b", gemma.yaml's servedModelName).
From outside the cluster: `kubectl port-forward svc/gemma 8000:8000` and OPENAI_BASE_URL=http://127.0.0.1:8000/v1.
"""

from __future__ import annotations

import argparse
import os
import sys

from openai import OpenAI

DEFAULT_BASE_URL = "http://gemma.default.svc.cluster.local:8000/v1"
DEFAULT_MODEL = "Gemma3-4b"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="San Francisco is a")
    p.add_argument("--max-tokens", type=int, default=7)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--json", action="store_true", help="print the whole response as JSON")
    args = p.parse_args(argv)

    client = OpenAI(
        base_url=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
        api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
        timeout=float(os.environ.get("OPENAI_TIMEOUT", "60")),
        max_retries=0,
    )
    completion = client.completions.create(
        model=os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    if args.json:
        print(completion.model_dump_json())
    else:
        print("Completion result:", completion.choices[0].text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
