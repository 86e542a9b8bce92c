"""Fixtures of the chart tests: the built tools (helm, kubeconform, kube-score), rendering the chart,
and the local JSON schemas kubeconform validates against (see kube_schemas.py).

The tools come from hack/build-tools.sh (built from their Go modules, cached in
~/.cache/gemma-operator/bin); a missing one is built on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chart import kube_schemas
from tests.chart.chart_helpers import CHART, CRD_SOURCE, kubernetes_version, run, tool
from tests.support import kube

Render = Callable[..., str]


@pytest.fixture(scope="session")
def helm() -> str:
    return tool("helm", "all")


@pytest.fixture(scope="session")
def kubeconform() -> str:
    return tool("kubeconform", "kubeconform")


@pytest.fixture(scope="session")
def kube_score() -> str:
    return tool("kube-score", "kube-score")


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """render(*helm_args, release="gemma-operator", namespace="gemma-system") -> the rendered YAML.

    Offline (helm template) for the Kubernetes version the project pins: a helm built from its Go
    module without Helm's release ldflags assumes Kubernetes v1.20 (see docs/architecture.md, "Chart and tooling notes").
    """

    def _render(*args: str, release: str = "gemma-operator", namespace: str = "gemma-system") -> str:
        cmd = [helm, "template", release, str(CHART), "--namespace", namespace,
               "--kube-version", kubernetes_version(), *args]
        return run(cmd).stdout

    return _render


@pytest.fixture(scope="session")
def schema_dirs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """[GemmaDeployment schema dir, Kubernetes schema dir] for kubeconform.

    The Kubernetes schemas are generated once per Kubernetes version from the local cluster's
    OpenAPI v3 (starting it through the `cluster` fixture only when the cache is missing).
    """
    cache = kube.gemma_cache() / "kubeconform-schemas" / f"v{kubernetes_version()}"
    if not (cache / kube_schemas.MARKER).exists():
        cluster: kube.Cluster = request.getfixturevalue("cluster")
        version = cluster.kubectl_json("version")["serverVersion"]["gitVersion"]
        assert version.lstrip("v") == kubernetes_version(), (
            f"the cluster runs {version}, hack/versions.env pins v{kubernetes_version()}")
        kube_schemas.generate([cluster.kubectl_path, "--kubeconfig", cluster.kubeconfig], cache)
    crd_dir = tmp_path_factory.mktemp("crd-schemas")
    kube_schemas.from_crd(CRD_SOURCE, crd_dir)
    return [crd_dir, cache]
