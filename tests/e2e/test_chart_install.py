"""Issue 6: `helm install` of charts/gemma-operator on the local control plane, and its RBAC proven.

KWOK simulates the chart's operator pod (it becomes Ready without running an image), so the operator
that does the work runs here as a local process -- with a kubeconfig whose only credential is a token of
the chart's ServiceAccount from the TokenRequest API, and with the command line and environment of the
chart's Deployment. Whatever it reaches (gemma.yaml to phase Ready, the leader Lease) it reached with the
chart's RBAC and nothing else; `kubectl auth can-i --as=<the ServiceAccount>` shows what it cannot do.

The CRD is cluster-scoped and shared with the other e2e tests (they `kubectl apply` it). The tests here
never delete it: when it exists, the first test lets the release adopt it (Helm's ownership metadata),
and gives it back afterwards; the second installs with crds.enabled=false.

The operator runs with --namespace <test namespace> even where the chart runs it cluster-wide: a
cluster-wide operator here would act on the GemmaDeployments of other tests running against the same
cluster. The ClusterRole still decides every call it makes.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.gemma_helpers import REPO, wait_gpus_free, wait_phase
from tests.support import kube
from tests.support.operator import OperatorProcess

CHART = REPO / "charts" / "gemma-operator"
CRD_NAME = "gemmadeployments.gemma.ai"
CRD_FILE = REPO / "crds" / "gemmadeployments.yaml"
RELEASE = "gemma-operator"  # fullname == release name: objects are named gemma-operator
SA = "gemma-operator"
LEASE = "gemma-operator-leader"
HELM_DIRS = {"HELM_CACHE_HOME": "/tmp/gemma-helm/cache", "HELM_CONFIG_HOME": "/tmp/gemma-helm/config",
             "HELM_DATA_HOME": "/tmp/gemma-helm/data"}
def helm(cluster: kube.Cluster, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(kube.tools_bin() / "helm"), *args]
    proc = subprocess.run(cmd, check=False, env=cluster.env | HELM_DIRS, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"`helm {' '.join(args)}` exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def can_i(cluster: kube.Cluster, ns: str, verb: str, resource: str, where: str | None = None,
          subresource: str | None = None, name: str | None = None) -> bool:
    """`kubectl auth can-i` as the chart's ServiceAccount; where: a namespace, or None for all namespaces."""
    target = f"{resource}/{name}" if name else resource
    args = ["auth", "can-i", verb, target, f"--as=system:serviceaccount:{ns}:{SA}"]
    args += ["-n", where] if where else ["--all-namespaces"]
    if subresource:
        args += [f"--subresource={subresource}"]
    proc = cluster.kubectl(*args, check=False)
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def service_account_kubeconfig(cluster: kube.Cluster, ns: str, path: Path) -> str:
    """A kubeconfig for the same API server and CA whose only credential is a TokenRequest token."""
    token = cluster.kubectl("create", "token", SA, "-n", ns, "--duration=1h").stdout.strip()
    admin = cluster.kubectl_json("config", "view", "--raw", "--minify", "--flatten")
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {
            "server": server["server"], "certificate-authority-data": server["certificate-authority-data"]}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": ns}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    who = subprocess.run([cluster.kubectl_path, "--kubeconfig", str(path), "auth", "whoami", "-o", "json"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:{SA}"
    return str(path)


def chart_operator(cluster: kube.Cluster, ns: str, kubeconfig: str, log: Path,
                   extra_args: tuple[str, ...] = ()) -> OperatorProcess:
    """The operator with the installed Deployment's arguments and environment (its own http port)."""
    dep = cluster.kubectl_json("get", "deployment", RELEASE, "-n", ns)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith("--http-port")] + list(extra_args)
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env |= {"POD_NAMESPACE": ns, "POD_NAME": "chart-e2e-operator", "HOME": os.environ.get("HOME", "/tmp")}
    return OperatorProcess(kubeconfig, log, args=args, env=env).start()


def wait_ready(cluster: kube.Cluster, ns: str, operator: OperatorProcess) -> dict[str, Any]:
    """gemma.yaml Ready."""
    try:
        return wait_phase(cluster, ns, "Ready", timeout=240)
    except AssertionError as err:
        events = cluster.kubectl("get", "events", "-n", ns, check=False).stdout[-3000:]
        raise AssertionError(f"{err}\nevents:\n{events}\noperator log:\n{operator.log()[-6000:]}") from None


def refusals(log: str) -> list[str]:
    """Every refusal in the operator's log: it asks only for what its rules allow, so there must be none."""
    return [line for line in log.splitlines() if "forbidden" in line.lower()]


@pytest.fixture
def shared_crd(cluster: kube.Cluster) -> Iterator[dict[str, str]]:
    """Lets the test's release own the shared CRD while it runs; hands it back afterwards, never deletes it."""
    assert (CHART / "files" / "gemmadeployments.yaml").read_bytes() == CRD_FILE.read_bytes(), (
        "the chart's CRD copy is stale (hack/sync-crd.sh): installing it would roll the shared CRD back")
    yield {}
    if cluster.get("crd", CRD_NAME):
        cluster.kubectl("annotate", "crd", CRD_NAME, "meta.helm.sh/release-name-",
                        "meta.helm.sh/release-namespace-", "helm.sh/resource-policy-", check=False)
        cluster.kubectl("label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-", check=False)


def adopt_crd(cluster: kube.Cluster, ns: str) -> None:
    """An existing CRD (from another test's kubectl apply) becomes this release's, the way Helm adopts."""
    if cluster.get("crd", CRD_NAME):
        cluster.kubectl("annotate", "--overwrite", "crd", CRD_NAME,
                        f"meta.helm.sh/release-name={RELEASE}", f"meta.helm.sh/release-namespace={ns}")
        cluster.kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")


def test_mistyped_values_fail_helm_install(cluster: kube.Cluster, namespace: str) -> None:
    for args, named in ((["--set", "replicaCount=two"], "at '/replicaCount': got string, want integer"),
                        (["--set", "foo=bar"], "additional properties 'foo' not allowed")):
        proc = helm(cluster, "install", RELEASE, str(CHART), "-n", namespace, *args, check=False)
        assert proc.returncode != 0
        assert "values don't meet the specifications of the schema" in proc.stderr and named in proc.stderr, proc.stderr
    assert helm(cluster, "list", "-n", namespace, "-q").stdout.strip() == ""


def test_install_cluster_wide_rbac_upgrade_uninstall(
        cluster: kube.Cluster, namespace: str, shared_crd: dict[str, str], tmp_path: Path) -> None:
    ns = namespace
    adopt_crd(cluster, ns)
    out = helm(cluster, "install", RELEASE, str(CHART), "-n", ns, "--wait", "--timeout", "3m").stdout
    try:
        # NOTES: the next steps.
        for needle in ("kubectl apply -f gemma.yaml", "kubectl get gemma -w", "/v1/chat/completions",
                       "from openai import OpenAI"):
            assert needle in out

        # 2. CRD Established, kept on uninstall; operator Deployment available (its pod simulated by KWOK).
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        crd = cluster.get("crd", CRD_NAME)
        assert crd and crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
        cluster.kubectl("wait", "--for=condition=Available", f"deployment/{RELEASE}", "-n", ns, "--timeout=120s")

        # 3a. What the ServiceAccount may and may not do.
        for verb, resource, where, sub in [
            ("list", "gemmadeployments.gemma.ai", None, None), ("watch", "gemmadeployments.gemma.ai", None, None),
            ("patch", "gemmadeployments.gemma.ai", "default", "status"),
            ("create", "deployments.apps", "default", None), ("patch", "deployments.apps", "default", None),
            ("create", "persistentvolumeclaims", "default", None), ("patch", "services", "default", None),
            ("create", "configmaps", "default", None), ("patch", "configmaps", "default", None),
            ("list", "configmaps", None, None),
            ("delete", "jobs.batch", "default", None), ("list", "pods", None, None),
            ("get", "pods", "default", "log"), ("create", "events", "default", None),
            ("create", "leases.coordination.k8s.io", ns, None),
        ]:
            assert can_i(cluster, ns, verb, resource, where, sub), f"the operator needs {verb} {resource} {sub or ''}"
        for verb, resource, where, sub, name in [
            ("list", "secrets", None, None, None), ("get", "secrets", ns, None, None),
            ("get", "secrets", "default", None, None),
            ("create", "clusterroles.rbac.authorization.k8s.io", None, None, None),
            ("create", "rolebindings.rbac.authorization.k8s.io", "default", None, None),
            ("escalate", "clusterroles.rbac.authorization.k8s.io", None, None, None),
            ("impersonate", "serviceaccounts", "default", None, None),
            ("delete", "deployments.apps", "default", None, None),
            ("delete", "persistentvolumeclaims", "default", None, None),
            ("delete", "services", "default", None, None),
            ("delete", "gemmadeployments.gemma.ai", "default", None, None),
            ("update", "gemmadeployments.gemma.ai", "default", None, None),
            ("patch", "gemmadeployments.gemma.ai", "default", None, None),
            ("create", "pods", "default", None, None), ("delete", "pods", "default", None, None),
            ("create", "pods", "default", "exec", None),
            ("delete", "configmaps", "default", None, None), ("update", "configmaps", "default", None, None),
            ("list", "nodes", None, None, None),
            ("delete", "namespaces", None, None, None), ("list", "namespaces", None, None, None),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None, None),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, None, None),
            ("create", "customresourcedefinitions.apiextensions.k8s.io", None, None, None),
            ("update", "leases.coordination.k8s.io", "kube-system", None, "kube-controller-manager"),
            ("get", "leases.coordination.k8s.io", ns, None, "someone-elses-lease"),
            ("create", "leases.coordination.k8s.io", "default", None, None),
            ("patch", "persistentvolumes", None, None, None),
        ]:
            assert not can_i(cluster, ns, verb, resource, where, sub, name), (
                f"the operator must not {verb} {resource} {sub or ''} {name or ''} in {where or 'all namespaces'}")

        # 3b. The operator as the ServiceAccount takes gemma.yaml to Ready, holding the chart's Lease.
        kubeconfig = service_account_kubeconfig(cluster, ns, tmp_path / "sa.kubeconfig")
        operator = chart_operator(cluster, ns, kubeconfig, tmp_path / "operator.log", ("--namespace", ns))
        try:
            wait_gpus_free(cluster)
            cluster.kubectl("apply", "-n", ns, "-f", str(REPO / "gemma.yaml"))
            st = wait_ready(cluster, ns, operator)
            assert st["readyReplicas"] == 1 and st["endpoint"] == f"http://gemma.{ns}.svc.cluster.local:8000/v1"
            lease = cluster.get("lease", LEASE, ns)
            assert lease and lease["spec"]["holderIdentity"] == "chart-e2e-operator"
            # Values only reconciles produce (the metric names alone are printed from the import on).
            assert operator.metric("gemma_operator_reconciles_total", kind="GemmaDeployment", result="ok") > 0, (
                operator.metrics())
            assert operator.metric("gemma_operator_managed_resources") == 1, operator.metrics()  # gemma.yaml
            operator.assert_running()
        finally:
            operator.stop()
        log = operator.log()
        assert not refusals(log), "the chart's RBAC refused the operator:\n" + "\n".join(refusals(log))
        assert "Traceback" not in log, log[-4000:]

        # 5a. helm upgrade with changed values rolls the operator.
        before = cluster.kubectl_json("get", "deployment", RELEASE, "-n", ns)
        helm(cluster, "upgrade", RELEASE, str(CHART), "-n", ns, "--reuse-values", "--wait", "--timeout", "3m",
             "--set", "operator.logLevel=DEBUG", "--set", "replicaCount=2")
        cluster.kubectl("rollout", "status", f"deployment/{RELEASE}", "-n", ns, "--timeout=120s")
        after = cluster.kubectl_json("get", "deployment", RELEASE, "-n", ns)
        assert after["metadata"]["generation"] > before["metadata"]["generation"]
        assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
        assert after["status"]["updatedReplicas"] == 2 and after["status"]["availableReplicas"] == 2
        assert "--log-level=DEBUG" in after["spec"]["template"]["spec"]["containers"][0]["args"]
        selector = ",".join(f"{k}={v}" for k, v in after["spec"]["selector"]["matchLabels"].items())
        pods = cluster.kubectl_json("get", "pods", "-n", ns, "-l", selector)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in live}
        assert len(live) == 2 and len(hashes) == 1, "the old operator pods were replaced"
        assert "--log-level=DEBUG" in live[0]["spec"]["containers"][0]["args"]
        assert helm(cluster, "history", RELEASE, "-n", ns, "-o", "json").stdout.count('"revision"') == 2

        # helm test: a Job calling /healthz (its pod completes by simulation here).
        helm(cluster, "test", RELEASE, "-n", ns, "--timeout", "2m")

        # 5b. helm uninstall leaves the CRD and the GemmaDeployment.
        helm(cluster, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
        assert cluster.get("crd", CRD_NAME) is not None
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
        assert cluster.get("gemmadeployment", "gemma", ns) is not None
        assert cluster.get("deployment", RELEASE, ns) is None
        assert cluster.get("clusterrole", RELEASE) is None and cluster.get("clusterrolebinding", RELEASE) is None
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", ns, "--wait", check=False)
        cluster.kubectl("delete", "gemmadeployment", "--all", "-n", ns, "--wait=false", check=False)


def test_watch_namespaces_gets_roles_only(cluster: kube.Cluster, namespace: str, tmp_path: Path) -> None:
    ns = namespace
    extra: list[str] = []  # the watched namespace and one that is not, deleted afterwards
    try:
        work = kube.create_namespace(cluster, "chart-work")
        extra.append(work)
        other = kube.create_namespace(cluster, "chart-other")
        extra.append(other)
        if not cluster.get("crd", CRD_NAME):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
        helm(cluster, "install", RELEASE, str(CHART), "-n", ns, "--wait", "--timeout", "3m",
             "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{work}}}")
        assert cluster.get("clusterrole", RELEASE) is None
        assert cluster.get("role", RELEASE, work) is not None

        assert can_i(cluster, ns, "list", "gemmadeployments.gemma.ai", work)
        assert can_i(cluster, ns, "create", "deployments.apps", work)
        assert can_i(cluster, ns, "update", "leases.coordination.k8s.io", ns, name=LEASE)
        for verb, resource, where in [
            ("list", "gemmadeployments.gemma.ai", None), ("list", "gemmadeployments.gemma.ai", other),
            ("list", "gemmadeployments.gemma.ai", ns), ("create", "deployments.apps", other),
            ("list", "pods", other), ("create", "events", other), ("list", "secrets", work),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", None), ("list", "namespaces", None),
            ("create", "leases.coordination.k8s.io", work),
        ]:
            assert not can_i(cluster, ns, verb, resource, where), f"{verb} {resource} in {where or 'all namespaces'}"

        kubeconfig = service_account_kubeconfig(cluster, ns, tmp_path / "sa.kubeconfig")
        operator = chart_operator(cluster, ns, kubeconfig, tmp_path / "operator.log")
        try:
            wait_gpus_free(cluster)
            cluster.kubectl("apply", "-n", work, "-f", str(REPO / "gemma.yaml"))
            cluster.kubectl("apply", "-n", other, "-f", str(REPO / "gemma.yaml"))
            wait_ready(cluster, work, operator)
            # Not watched, so untouched: no status, no children.
            assert not (cluster.get("gemmadeployment", "gemma", other) or {}).get("status")
            assert cluster.get("service", "gemma", other) is None
        finally:
            operator.stop()
        log = operator.log()
        assert not refusals(log), "the chart's RBAC refused the operator:\n" + "\n".join(refusals(log))

        helm(cluster, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", "2m")
        assert cluster.get("role", RELEASE, work) is None
        assert cluster.get("gemmadeployment", "gemma", work) is not None
    finally:
        helm(cluster, "uninstall", RELEASE, "-n", ns, "--wait", check=False)
        for n in extra:
            cluster.kubectl("delete", "gemmadeployment", "--all", "-n", n, "--wait=false", check=False)
            kube.delete_namespace(cluster, n)
