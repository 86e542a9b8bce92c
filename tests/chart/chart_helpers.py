"""Shared helpers of the chart tests (paths, running tools, rendering, reading YAML)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support import kube

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "gemma-operator"
CRD_SOURCE = REPO / "crds" / "gemmadeployments.yaml"
CRD_COPY = CHART / "files" / "gemmadeployments.yaml"
HELM_ENV = {"HELM_CACHE_HOME": "/tmp/gemma-helm/cache", "HELM_CONFIG_HOME": "/tmp/gemma-helm/config",
            "HELM_DATA_HOME": "/tmp/gemma-helm/data"}


def kubernetes_version() -> str:
    return kube.read_versions()["KUBERNETES_VERSION"].lstrip("v")


def tool(name: str, build_target: str) -> str:
    """A tool of hack/build-tools.sh, built on first use."""
    path = kube.tools_bin() / name
    if not path.exists():
        subprocess.run(["bash", str(REPO / "hack" / "build-tools.sh"), build_target], check=True,
                       timeout=3600, capture_output=True)
    assert path.exists(), f"{name} was not built by hack/build-tools.sh {build_target}"
    return str(path)


def run(cmd: list[str], check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          env=(env or dict(os.environ)) | HELM_ENV, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(text: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs(text) if d["kind"] == kind]
