"""The Helm chart, offline: helm lint, the CRD copy, values and their schema, what each value renders."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart_helpers import (
    CHART,
    CRD_COPY,
    CRD_SOURCE,
    by_kind,
    docs,
    kubernetes_version,
    run,
)
from tests.chart.conftest import Render

# Value sets that the other tests render too: the defaults and every optional part switched on.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}"],
    "everything": [
        "--set", "replicaCount=3", "--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":{"name":"monitoring"}}}]',
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
        "--set", "operator.vllmImage=vllm/vllm-openai:v0.31.0", "--set", "operator.logLevel=DEBUG",
        "--set", "operator.modelscopeEndpoint=http://hub-mirror.internal:8080",
        "--set", "image.digest=sha256:" + "a" * 64, "--set", "priorityClassName=system-cluster-critical",
        "--set", "gateway.enabled=true", "--set", "gateway.service.type=LoadBalancer",
        "--set-json", 'gateway.serverNetworkPolicy.extraIngressFrom=[{"namespaceSelector":{"matchLabels":{"name":"monitoring"}}}]',
        "--api-versions", "monitoring.coreos.com/v1", "--api-versions", "gemma.ai/v1alpha1/GemmaDeployment",
        "--set-json", ('gemmaDeployments=[{"name":"gemma","namespace":"ml","spec":'
                       '{"model":{"id":"LLM-Research/gemma-3-4b-it"},"servedModelName":"Gemma3-4b","maxModelLen":2048}}]'),
    ],
}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint(helm: str, values: list[str]) -> None:
    args = [a for a in values if not a.startswith("--api-versions") and "gemma.ai/" not in a
            and "monitoring.coreos.com" not in a]
    out = run([helm, "lint", str(CHART), "--strict", "--kube-version", kubernetes_version(), *args]).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_chart_crd_copy_is_byte_identical_to_crds_folder() -> None:
    assert CRD_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        "charts/gemma-operator/files/gemmadeployments.yaml differs from crds/gemmadeployments.yaml: "
        "run hack/sync-crd.sh")


def _rendered_crd_text(rendered: str) -> str:
    """The text of the CRD document as helm rendered it (after its `# Source:` line)."""
    for doc in rendered.split("\n---\n"):
        lines = doc.strip("\n").splitlines()
        if lines and lines[0] == "# Source: gemma-operator/templates/crds.yaml":
            return "\n".join(lines[1:]) + "\n"
    raise AssertionError("no CRD in the rendered chart")


def test_crd_is_rendered_from_the_file_with_a_templated_keep_annotation(render: Render) -> None:
    source = yaml.safe_load(CRD_SOURCE.read_text())
    template = (CHART / "templates" / "crds.yaml").read_text()
    # The annotation is set on the parsed CRD, not written into its text with a regular expression.
    assert "regexReplace" not in template and "fromYaml" in template
    # crds.keep=false: the CRD of crds/ as it is, without annotations.
    (plain,) = by_kind(render("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert plain == source and "annotations" not in plain["metadata"]
    # crds.keep=true (default): the same object plus the keep annotation, and nothing else.
    (kept,) = by_kind(render(), "CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    del kept["metadata"]["annotations"]
    assert kept == source
    assert kept["metadata"]["name"] == "gemmadeployments.gemma.ai"


def test_gemmadeployments_are_not_in_kubectl_get_all(render: Render) -> None:
    """`kubectl get all` lists the workloads of a namespace; a GemmaDeployment is not one of them."""
    for crd in (yaml.safe_load(CRD_SOURCE.read_text()), by_kind(render(), "CustomResourceDefinition")[0]):
        names = crd["spec"]["names"]
        assert "all" not in names.get("categories", []), names
        assert names["shortNames"] == ["gd", "gemma"]


def test_default_workers_are_the_operators_default(render: Render, monkeypatch: pytest.MonkeyPatch) -> None:
    """One default for --workers: the chart renders the operator's own (gemma_operator.settings)."""
    from gemma_operator.settings import Settings

    monkeypatch.delenv("GEMMA_WORKERS", raising=False)
    code_default = Settings().workers
    (container,) = by_kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert f"--workers={code_default}" in container["args"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert values["operator"]["workers"] == code_default
    assert schema["properties"]["operator"]["properties"]["workers"]["default"] == code_default
    readme = (CHART.parents[1] / "README.md").read_text()
    assert f"| `operator.workers` | `{code_default}`" in readme


def test_crds_disabled_renders_no_crd(render: Render) -> None:
    assert not by_kind(render("--set", "crds.enabled=false"), "CustomResourceDefinition")


@pytest.mark.parametrize(("args", "named"), [
    (["--set", "replicaCount=two"], "/replicaCount"),
    (["--set", "foo=bar"], "'foo'"),
    (["--set", "image.tga=v1"], "'tga'"),
    (["--set", "crds.enabled=yes please"], "/crds/enabled"),
    (["--set", "operator.logLevel=LOUD"], "/operator/logLevel"),
    (["--set", "watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
    (["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    (["--set", "securityContext.runAsRoot=true"], "'runAsRoot'"),
])
def test_mistyped_values_fail_with_a_message_naming_the_value(helm: str, args: list[str], named: str) -> None:
    """(helm install against the cluster: tests/e2e/test_chart_install.py.)"""
    proc = run([helm, "template", "g", str(CHART), "--kube-version", kubernetes_version(), *args], check=False)
    assert proc.returncode != 0, f"helm template accepted {args}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named in proc.stderr, proc.stderr


def _walk(node: Any, path: str = "#") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def test_values_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    checked = 0
    for path, node in _walk(schema):
        if isinstance(node.get("properties"), dict) and node.get("type") == "object":
            assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
            checked += 1
    assert checked >= 20


def test_values_schema_accepts_the_defaults_and_covers_every_value() -> None:
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)

    def keys(node: dict[str, Any], sch: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            assert key in sch.get("properties", {}), f"value {prefix}{key} is not in values.schema.json"
            sub = sch["properties"][key]
            if isinstance(value, dict) and value and "properties" in sub:
                keys(value, sub, f"{prefix}{key}.")

    keys(values, schema, "")


def test_every_value_is_commented() -> None:
    """Each key of values.yaml has a comment right above it, or belongs to a commented block
    (a key whose value is a mapping documented as a whole, e.g. resources or securityContext)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented_blocks: list[int] = []  # indents of documented k8s-object blocks we are inside
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):( .*)?$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while documented_blocks and indent <= documented_blocks[-1]:
            documented_blocks.pop()
        if documented_blocks:
            continue
        above = lines[i - 1].strip() if i else ""
        commented = above.startswith("#")
        is_section = not (m.group(3) or "").strip()  # `key:` opening a mapping of commented values
        if is_section and not commented:
            continue  # a section like `image:` whose values are each commented
        assert commented, f"values.yaml line {i + 1} ({line.strip()}) has no comment above it"
        if is_section:
            documented_blocks.append(indent)


def test_default_deployment_is_secure_and_probed(render: Render) -> None:
    out = render()
    dep = by_kind(out, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert "--leader-election" in container["args"]
    assert "--leader-election-id=gemma-operator-leader" in container["args"]
    assert "--leader-election-namespace=gemma-system" in container["args"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["image"] == "ghcr.io/gemma-operator/operator:0.1.0"
    svc = by_kind(out, "Service")[0]
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # Nothing optional by default.
    kinds = {d["kind"] for d in docs(out)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "GemmaDeployment"}
    (policy,) = by_kind(out, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    assert policy["spec"]["egress"] == [{}]  # the API server's address is the cluster's


def test_values_reach_the_operator(render: Render) -> None:
    out = render(*VALUE_SETS["everything"])
    dep = next(d for d in by_kind(out, "Deployment") if d["metadata"]["name"] == "gemma-operator")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GEMMA_VLLM_IMAGE"] == "vllm/vllm-openai:v0.31.0"
    assert env["GEMMA_MODELSCOPE_ENDPOINT"] == "http://hub-mirror.internal:8080"
    assert "GEMMA_HUGGINGFACE_ENDPOINT" not in env  # unset values leave the operator's defaults
    assert "--log-level=DEBUG" in container["args"]
    assert container["image"] == "ghcr.io/gemma-operator/operator@sha256:" + "a" * 64
    assert dep["spec"]["replicas"] == 3
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == \
        "kubernetes.io/hostname"
    (gd,) = by_kind(out, "GemmaDeployment")
    assert gd["metadata"]["namespace"] == "ml" and gd["spec"]["servedModelName"] == "Gemma3-4b"


def test_the_gateway_is_off_by_default_and_on_it_is_what_the_operators_policies_admit(render: Render) -> None:
    assert not [d for d in docs(render()) if "gateway" in d["metadata"]["name"]]
    out = render(*VALUE_SETS["everything"])
    deployments = {d["metadata"]["name"]: d for d in by_kind(out, "Deployment")}
    gateway, operator = deployments["gemma-operator-gateway"], deployments["gemma-operator"]
    pod = gateway["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "gemma_operator.gateway"]
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert "--key-namespace=gemma-system" in container["args"] and "--no-auth" not in container["args"]
    assert pod["spec"]["serviceAccountName"] == "gemma-operator-gateway"
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GEMMA_GATEWAY_URL"] == "http://gemma-operator-gateway.gemma-system.svc.cluster.local:8000/v1"
    assert env["GEMMA_GATEWAY_NAMESPACE"] == "gemma-system"
    # The operator's NetworkPolicies select the gateway pods by these labels: they must be the pods' own.
    wanted = dict(pair.split("=") for pair in env["GEMMA_GATEWAY_POD_LABELS"].split(","))
    assert wanted.items() <= pod["metadata"]["labels"].items()
    assert wanted == gateway["spec"]["selector"]["matchLabels"]
    assert not wanted.items() <= operator["spec"]["template"]["metadata"]["labels"].items()
    assert json.loads(env["GEMMA_GATEWAY_EXTRA_PEERS"]) == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    (service,) = [d for d in by_kind(out, "Service") if d["metadata"]["name"] == "gemma-operator-gateway"]
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["selector"] == wanted
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"openai": 8000, "http": 8080}


def test_monitors_need_the_prometheus_operator_api(render: Render) -> None:
    on = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"]
    assert not by_kind(render(*on), "ServiceMonitor") and not by_kind(render(*on), "PodMonitor")
    out = render(*on, "--api-versions", "monitoring.coreos.com/v1")
    (sm,) = by_kind(out, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0] == {"port": "http", "path": "/metrics", "interval": "30s",
                                          "scrapeTimeout": "10s"}
    svc = by_kind(out, "Service")[0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (pm,) = by_kind(out, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gemma", "app.kubernetes.io/component": "server",
        "app.kubernetes.io/managed-by": "gemma-operator"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    scoped = render(*on, "--api-versions", "monitoring.coreos.com/v1", "--set", "watchNamespaces={ml}")
    assert by_kind(scoped, "PodMonitor")[0]["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


def test_podmonitor_selects_the_pods_the_operator_builds() -> None:
    """The PodMonitor's selector and port match the server pods of gemma.yaml as the builders make them."""
    from gemma_operator import builders
    from gemma_operator.settings import Settings
    from gemma_operator.spec import GemmaDeployment

    body = yaml.safe_load((CRD_SOURCE.parents[1] / "gemma.yaml").read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u"}
    template = builders.build_server_deployment(GemmaDeployment.from_body(body), Settings())["spec"]["template"]
    monitor = (CHART / "templates" / "podmonitor.yaml").read_text()
    for key, value in template["metadata"]["labels"].items():
        if f"{key}: {value}" in monitor:
            continue
        assert key == "app.kubernetes.io/instance", f"PodMonitor selects {key} differently"
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert "http" in ports


def test_gemmadeployments_from_values_need_the_crd_first(helm: str) -> None:
    proc = run([helm, "template", "g", str(CHART), "--kube-version", kubernetes_version(), "--set-json",
                'gemmaDeployments=[{"name":"gemma","spec":{"model":{"id":"a/b"}}}]'], check=False)
    assert proc.returncode != 0
    assert "the GemmaDeployment CRD (gemma.ai/v1alpha1) is not in the cluster yet" in proc.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (CHART.parents[1] / "operator" / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version and chart["appVersion"] == version.group(1), "appVersion must follow the operator's version"
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    assert not (CHART / "crds").exists(), "crds/ in a chart is installed once and never upgraded: use the template"
    assert Path(CHART / "templates" / "NOTES.txt").exists()
