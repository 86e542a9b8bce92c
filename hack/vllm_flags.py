"""Parses the server command the operator renders with a given vLLM's own argument parser.

Run by hack/check-vllm-flags.sh with that vLLM's sources first on the path (the CUDA wheel's Python code
imported on the CPU venv: only the parser is built, no engine), so that a default image can be pinned to
a release this machine cannot run, with proof that its parser takes every flag, value and environment
variable the operator renders. The GemmaDeployment turns on every feature that adds a flag.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests" / "serving")]

import serving_harness as harness  # noqa: E402


def everything_on() -> dict[str, Any]:
    return harness.variant(
        gpu={"count": 2, "memoryUtilization": 0.85},
        multimodal={"images": {"enabled": True, "maxPerPrompt": 4}},
        apiKeySecretRef={"name": "gemma-key", "key": "key"},
        adapters=[{"name": "sql-lora", "id": "my-org/sql-lora"}, {"name": "chat-lora", "id": "my-org/chat-lora"}],
        adapterSettings={"maxRank": 64},
        vllm={"compileCache": {"enabled": True}},
    )


def main() -> int:
    import vllm
    import vllm.envs

    try:  # the parser moved in 0.33
        from vllm.entrypoints.common.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    container = harness.server_container(harness.render(everything_on()))
    argv = container["command"] + container["args"]
    assert argv[:2] == ["vllm", "serve"], argv
    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[2:])
    env = [e["name"] for e in container.get("env", []) if e["name"].startswith("VLLM_")]
    unknown = [name for name in env if name not in vllm.envs.environment_variables]
    print(f"vllm {vllm.__version__} from {Path(vllm.__file__).parent}")
    print("rendered:", " ".join(argv))
    print("parsed:", {k: v for k, v in sorted(vars(parsed).items()) if f"--{k.replace('_', '-')}" in argv})
    if unknown:
        print(f"environment variables this vLLM does not know: {unknown}")
        return 1
    print(f"every flag parsed; environment variables known: {env}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
