"""The demo's last step (`hack/demo.sh --serve`): run the vLLM server of the live Deployment for real.

KWOK only simulates pods, so the demo's server pod answers nothing. This takes the Deployment that the
operator made in the cluster, and runs its `vllm` container (command, arguments, environment, probes) as a
local process with the CPU build of vLLM and a tiny generated Gemma 3 model in place of the weights (the
serving tests' harness, tests/serving/serving_harness.py, which documents every change it makes). Then it
calls it with the seed's client scripts in examples/ and stops it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.serving import serving_harness as harness  # noqa: E402


def main(namespace: str, name: str) -> int:
    deployment = json.loads(subprocess.run(
        ["kubectl", "get", "deployment", name, "-n", namespace, "-o", "json"],
        check=True, capture_output=True, text=True).stdout)
    print("installing the CPU build of vLLM (first time: a few minutes, ~6 GB in ~/.cache/gemma-operator)")
    venv = harness.install_vllm()
    with tempfile.TemporaryDirectory(prefix="gemma-serve-") as tmp:
        model = harness.make_tiny_model(venv, Path(tmp) / "tiny-gemma3")
        print(f"starting the server of deployment/{name} as a local process (model swapped for {model})")
        server = harness.run_rendered_server(deployment, model, venv=venv, workdir=Path(tmp) / "server")
        try:
            print(f"ready after {server.ready_seconds:.0f}s: {' '.join(server.argv)}")
            print("(the tiny model's weights are random, so its words are noise; the server, the OpenAI API and"
                  " the client code are the real ones)")
            env = os.environ | {"OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "EMPTY"}
            for script in ("vllm_openai_completions.py", "vllm_openai_chat_completions.py"):
                print(f"\n$ OPENAI_BASE_URL={server.openai_base_url} python examples/{script}")
                subprocess.run([harness.vllm_python(venv), str(REPO / "examples" / script)], env=env, check=True,
                               timeout=120)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:3] or ["gemma-demo", "gemma"])))
