"""e2e fixtures: the CRD installed once, and an operator process per test that watches only its namespace,
so that tests (and the chart test's own operator) never act on each other's resources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import kube
from tests.support.operator import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "gemmadeployments.yaml"


@pytest.fixture(scope="session")
def crd(cluster: kube.Cluster) -> kube.Cluster:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/gemmadeployments.gemma.ai", "--timeout=60s")
    return cluster


@pytest.fixture
def operator(crd: kube.Cluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(crd.kubeconfig, tmp_path / "operator.log", args=["--namespace", namespace]).start()
    yield proc
    try:
        proc.assert_running()  # still the process the test started: it neither crashed nor exited
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), f"the operator logged a traceback:\n{proc.log()[-4000:]}"
