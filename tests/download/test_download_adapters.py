"""Issue 15, LoRA adapters: the downloader's --adapters mode (what the operator's adapters Job runs) with the
real ModelScope and Hugging Face clients against a stand-in hub holding two PEFT adapter repositories.

Each adapter lands verified in its own directory (GemmaDeployment.adapter_dir) with a manifest; a rerun asks
the hub for no file; an adapter whose rank is above --max-lora-rank fails with EXIT_ADAPTER_RANK and a
termination message that names spec.adapters[i] and the fix; a repository that is not an adapter is refused.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gemma_operator.download.errors import EXIT_ADAPTER_RANK, EXIT_PERMANENT
from gemma_operator.paths import adapter_dir

from tests.download.conftest import REPO_FILES, REPO_ROOT, sha256_file
from tests.download.hubs import HuggingFaceHub, ModelScopeHub, Repo, StandInHub

pytestmark = pytest.mark.timeout(120)

HUB_CLASSES: dict[str, type[StandInHub]] = {"modelscope": ModelScopeHub, "huggingface": HuggingFaceHub}
SMALL, LARGE, NOT_AN_ADAPTER = "my-org/gemma-lora-r8", "my-org/gemma-lora-r32", "my-org/not-an-adapter"


def adapter_repo(rank: int, seed: int) -> Repo:
    rng = random.Random(seed)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"]}
    return Repo({"adapter_config.json": json.dumps(config).encode(),
                 "adapter_model.safetensors": rng.randbytes(64 * 1024), "README.md": b"# a LoRA adapter\n"})


@pytest.fixture(params=sorted(HUB_CLASSES))
def hub(request: pytest.FixtureRequest) -> Iterator[tuple[str, StandInHub]]:
    repos = {SMALL: {"v1": adapter_repo(8, 1)}, LARGE: {"v1": adapter_repo(32, 2)},
             NOT_AN_ADAPTER: {"v1": Repo(dict(REPO_FILES))}}
    server = HUB_CLASSES[request.param](repos).start()
    try:
        yield request.param, server
    finally:
        server.stop()


def run(source: str, hub: StandInHub, tmp_path: Path, ids: list[str], max_rank: int) -> subprocess.CompletedProcess[str]:
    entries = [{"field": f"spec.adapters[{i}]", "name": f"a{i}", "source": source, "id": adapter_id,
                "revision": "v1", "endpoint": hub.url, "token": False} for i, adapter_id in enumerate(ids)]
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HF_", "MODELSCOPE"))}
    env.update(HOME=str(home), TMPDIR=str(home), GEMMA_DOWNLOAD_BACKOFF_SECONDS="0.1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "gemma_operator.download", "--adapters", json.dumps(entries),
         "--max-lora-rank", str(max_rank), "--cache-root", str(tmp_path / "models"),
         "--termination-log", str(tmp_path / "termination-log")],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=100, check=False)


def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_adapters_land_verified_in_their_own_directories_once(hub: tuple[str, StandInHub], tmp_path: Path) -> None:
    source, server = hub
    proc = run(source, server, tmp_path, [SMALL, LARGE], max_rank=32)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for adapter_id in (SMALL, LARGE):
        where = Path(adapter_dir(source, adapter_id, "v1", root=str(tmp_path / "models")))
        repo = server.repos[adapter_id]["v1"]
        for path in repo.files:
            assert sha256_file(where / path) == repo.sha256(path), path
        manifest = json.loads((where / ".gemma-manifest.json").read_text())
        assert (manifest["modelId"], manifest["revision"], manifest["source"]) == (adapter_id, "v1", source)
    ready = [e for e in events(proc) if e["event"] == "adapterReady"]
    assert [(e["field"], e["rank"]) for e in ready] == [("spec.adapters[0]", 8), ("spec.adapters[1]", 32)]
    server.clear_log()
    again = run(source, server, tmp_path, [SMALL, LARGE], max_rank=32)
    assert again.returncode == 0, again.stderr[-3000:]
    assert server.file_requests() == []
    assert [e.get("alreadyComplete") for e in events(again) if e["event"] == "done"] == [True, True]


def test_a_rank_above_the_max_fails_naming_the_entry_and_the_fix(hub: tuple[str, StandInHub], tmp_path: Path) -> None:
    source, server = hub
    proc = run(source, server, tmp_path, [SMALL, LARGE], max_rank=16)
    assert proc.returncode == EXIT_ADAPTER_RANK, proc.stderr[-3000:]
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith("download failed: spec.adapters[1] (a1, my-org/gemma-lora-r32@v1 from " + source), message
    assert "LoRA rank 32" in message and "spec.adapterSettings.maxRank to 32 or more" in message
    assert events(proc)[-1]["reason"] == "AdapterRankTooLarge"
    # The adapter that fits is on the volume: raising maxRank (a new Job) downloads nothing of it again.
    server.clear_log()
    assert run(source, server, tmp_path, [SMALL, LARGE], max_rank=32).returncode == 0
    assert server.file_requests() == []


def test_a_repository_that_is_no_adapter_is_refused(hub: tuple[str, StandInHub], tmp_path: Path) -> None:
    source, server = hub
    proc = run(source, server, tmp_path, [NOT_AN_ADAPTER], max_rank=16)
    assert proc.returncode == EXIT_PERMANENT, proc.stderr[-3000:]
    message = (tmp_path / "termination-log").read_text()
    assert "spec.adapters[0] (a0)" in message and "no adapter_config.json" in message, message
