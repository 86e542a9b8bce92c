"""Talking to the test cluster from tests: a small kubectl wrapper and a polling helper.

Standard library only, so importing it costs nothing and starts nothing. The pytest fixtures
in tests/conftest.py build on it:

* ``cluster`` (session): a :class:`Cluster`. With ``KUBECONFIG`` set in the environment the
  tests use that cluster as it is (a kind cluster on a laptop, a real GPU cluster) and never
  run hack/cluster.sh; otherwise ``hack/cluster.sh up`` starts the local control plane (or
  reuses the running one).
* ``namespace`` (function): a fresh namespace, deleted after the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "hack" / "cluster.sh"
# hack/cluster.sh's state directory (GEMMA_CLUSTER_DIR selects another cluster, as it does for the script).
LOCAL_CLUSTER_DIR = Path(
    os.environ.get("GEMMA_CLUSTER_DIR") or REPO_ROOT / ".cluster"
).resolve()
LOCAL_KUBECONFIG = LOCAL_CLUSTER_DIR / "kubeconfig"

# hack/cluster.sh up may have to build the tools first (tens of minutes on 2 cores, cold).
CLUSTER_UP_TIMEOUT = float(os.environ.get("GEMMA_CLUSTER_UP_TIMEOUT", str(3 * 3600)))

T = TypeVar("T")


def gemma_cache() -> Path:
    """The cache directory of hack/lib.sh (tools, Go caches)."""
    if os.environ.get("GEMMA_CACHE"):
        return Path(os.environ["GEMMA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gemma-operator"


def tools_bin() -> Path:
    """Where hack/build-tools.sh links kubectl, helm, kwokctl, ... (``bin/current``)."""
    return gemma_cache() / "bin" / "current"


def tool_env(kubeconfig: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for subprocesses: ``KUBECONFIG`` and a ``PATH`` with the built tools first."""
    env = dict(os.environ if base is None else base)
    env["KUBECONFIG"] = kubeconfig
    path = env.get("PATH", os.defpath)
    if tools_bin().is_dir():
        path = os.pathsep.join([str(tools_bin()), path])
    env["PATH"] = path
    return env


def read_versions() -> dict[str, str]:
    """hack/versions.env as a dict (``KUBERNETES_VERSION`` and so on)."""
    versions = {}
    for line in (REPO_ROOT / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip().strip("\"'")
    return versions


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command that failed; the message carries its stderr."""

    def __str__(self) -> str:
        cmd = " ".join(self.cmd) if isinstance(self.cmd, list) else str(self.cmd)
        return f"`{cmd}` exited with {self.returncode}: {(self.stderr or '').strip() or (self.output or '').strip()}"


@dataclass
class Cluster:
    """A Kubernetes cluster reachable with ``kubeconfig``.

    ``local`` is True for the cluster of hack/cluster.sh; then ``audit_log`` is the
    kube-apiserver audit log (one Metadata-level JSON event per write request, with
    ``userAgent``); it is None for an external cluster.
    """

    kubeconfig: str
    env: dict[str, str]
    local: bool = False
    audit_log: Path | None = None
    kubectl_path: str = field(default="kubectl")

    def __post_init__(self) -> None:
        self.kubectl_path = (
            shutil.which("kubectl", path=self.env.get("PATH")) or "kubectl"
        )

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS`` against this cluster; raises :class:`KubectlError` if ``check``."""
        cmd = [self.kubectl_path, *args]
        proc = subprocess.run(
            cmd,
            input=input,
            env=self.env,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(
        self,
        manifest: str | dict[str, Any] | list[dict[str, Any]],
        namespace: str | None = None,
    ) -> None:
        """``kubectl apply`` a YAML string, an object or a list of objects."""
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        self.kubectl(*args, input=manifest)

    def get(
        self, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        args = ["get", kind, name, "--ignore-not-found"] + (
            ["-n", namespace] if namespace else []
        )
        out = self.kubectl(*args, "-o", "json").stdout
        return json.loads(out) if out.strip() else None


def external_kubeconfig() -> str | None:
    """KUBECONFIG from the environment, unless it is hack/cluster.sh's own kubeconfig."""
    path = os.environ.get("KUBECONFIG")
    if path and os.path.realpath(path) != os.path.realpath(LOCAL_KUBECONFIG):
        return path
    return None


def connect() -> Cluster:
    """The cluster for this test session (see the module docstring)."""
    external = os.environ.get("KUBECONFIG")
    if external:
        # After `eval "$(hack/cluster.sh env)"` KUBECONFIG is the local cluster's own file.
        local = os.path.realpath(external) == os.path.realpath(LOCAL_KUBECONFIG)
        cluster = Cluster(
            kubeconfig=external,
            env=tool_env(external),
            local=local,
            audit_log=LOCAL_CLUSTER_DIR / "audit.log" if local else None,
        )
    else:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "up"],
            check=False,
            capture_output=True,
            text=True,
            timeout=CLUSTER_UP_TIMEOUT,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            raise RuntimeError(
                f"hack/cluster.sh up failed ({proc.returncode}):\n{tail}"
            )
        kubeconfig = str(LOCAL_KUBECONFIG)
        cluster = Cluster(
            kubeconfig=kubeconfig,
            env=tool_env(kubeconfig),
            local=True,
            audit_log=LOCAL_CLUSTER_DIR / "audit.log",
        )
    cluster.kubectl("get", "--raw", "/readyz", timeout=30)
    return cluster


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.5, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    An exception raised by ``predicate`` counts as "not yet" (an object that does not exist
    yet, a transient API error) and is kept as the last value. After ``timeout`` seconds raises
    AssertionError with ``message`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {message or predicate!r}; last value: {last!r}"
            )
        time.sleep(min(interval, remaining))


def unique_name(hint: str, max_len: int = 63) -> str:
    """A DNS-1123 label built from ``hint`` with a random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-") or "t"
    suffix = uuid.uuid4().hex[:6]
    base = base[: max_len - len(suffix) - 1].rstrip("-")
    return f"{base}-{suffix}"


def create_namespace(cluster: Cluster, hint: str) -> str:
    """Create a fresh namespace and wait until pods can be created in it."""
    name = unique_name(hint, max_len=50)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"gemma.ai/test": "true"}},
        }
    )
    # Pods are refused until kube-controller-manager has created the default ServiceAccount.
    wait_for(
        lambda: cluster.get("serviceaccount", "default", name),
        timeout=30,
        message=f"ServiceAccount default in namespace {name}",
    )
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    """Start deleting a namespace; does not wait for it to be gone."""
    cluster.kubectl(
        "delete",
        "namespace",
        name,
        "--wait=false",
        "--ignore-not-found",
        check=False,
        timeout=30,
    )
