"""Fixtures shared by every test suite.

``cluster`` (session) and ``namespace`` (per test) give tests a Kubernetes cluster:

* Without ``KUBECONFIG`` in the environment, the first test that asks for ``cluster`` runs
  ``hack/cluster.sh up``: the local control plane with KWOK nodes (built and started if
  needed, reused if running). It is left running after the session.
* With ``KUBECONFIG`` set, that cluster is used as it is and hack/cluster.sh is never run:
  this is how the same suites run on a kind cluster or a real GPU cluster.

Tests that use neither fixture (unit tests) start nothing: this file imports only the
standard library and tests.support.kube.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if (
    _REPO_ROOT not in sys.path
):  # so that `from tests.support.kube import ...` works anywhere
    sys.path.insert(0, _REPO_ROOT)

from tests.support import kube


@pytest.fixture(scope="session")
def cluster() -> kube.Cluster:
    """The test cluster (see the module docstring)."""
    return kube.connect()


@pytest.fixture
def namespace(cluster: kube.Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = kube.create_namespace(cluster, request.node.name)
    yield name
    kube.delete_namespace(cluster, name)
