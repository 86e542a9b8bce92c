from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gemma_body() -> dict[str, Any]:
    body = yaml.safe_load((REPO / "gemma.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "uid-1", "generation": 3}
    return copy.deepcopy(body)


@pytest.fixture
def gd(gemma_body: dict[str, Any]) -> GemmaDeployment:
    return GemmaDeployment.from_body(gemma_body)


@pytest.fixture
def settings() -> Settings:
    return Settings(vllm_image="vllm/vllm-openai:test", downloader_image="downloader:test")
