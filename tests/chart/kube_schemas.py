"""JSON schemas for kubeconform, made locally (kubeconform would download them from the internet).

kubeconform looks a schema up by kind and API version; with
``-schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'`` the file for a Deployment
(apps/v1) is ``DIR/deployment-apps-v1.json``, for a Service (v1) ``DIR/service-v1.json`` and for a
GemmaDeployment (gemma.ai/v1alpha1) ``DIR/gemmadeployment-gemma-v1alpha1.json``: the same layout as
the public kubernetes-json-schema repository.

Where the schemas come from:

* Kubernetes' own kinds: the OpenAPI v3 documents of a running API server (``kubectl get --raw
  /openapi/v3/...``), i.e. exactly the API of the version the project pins (hack/versions.env). Each
  kind becomes one standalone file: its schema plus every schema it references under
  ``definitions``.
* GemmaDeployment: the ``openAPIV3Schema`` of crds/gemmadeployments.yaml, the source of truth.

Both are made strict the way kubeconform's "-strict" schemas are: every object schema that lists
``properties`` gets ``additionalProperties: false`` (unless it is marked
``x-kubernetes-preserve-unknown-fields``), so a misspelt field is an error, not silently ignored.
OpenAPI's ``nullable`` becomes a JSON-schema null type; ``format`` is dropped (kubeconform does not
check it either; Kubernetes formats such as int-or-string are not JSON-schema formats).

Run as a script to (re)generate into a directory: ``python tests/chart/kube_schemas.py DIR``
(uses KUBECONFIG and kubectl from PATH).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REF_PREFIX = "#/components/schemas/"
MARKER = ".complete"


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's {{ .KindSuffix }}: -<first label of the group>-<version>, or -<version> for core."""
    first = group.split(".")[0].lower()
    return f"-{first}-{version.lower()}" if first else f"-{version.lower()}"


def file_name(kind: str, group: str, version: str) -> str:
    return f"{kind.lower()}{kind_suffix(group, version)}.json"


def convert(node: Any, strict: bool = True) -> Any:
    """OpenAPI v3 (Kubernetes dialect) -> JSON schema, strict."""
    if isinstance(node, list):
        return [convert(item, strict) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("format", "x-kubernetes-validations", "example"):
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
            out[key] = "#/definitions/" + value[len(REF_PREFIX):]
        elif key in ("properties", "patternProperties", "definitions"):
            out[key] = {name: convert(sub, strict) for name, sub in value.items()}
        else:
            out[key] = convert(value, strict)
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "oneOf" not in out:
        out["anyOf"] = [{"type": "string"}, {"type": "integer"}]
    preserve = out.get("x-kubernetes-preserve-unknown-fields")
    if strict and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
                found.add(value[len(REF_PREFIX):])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def standalone(name: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """The schema `name` with everything it references (transitively) under definitions."""
    needed, todo = set(), [name]
    while todo:
        current = todo.pop()
        for ref in _refs(schemas[current]):
            if ref not in needed:
                needed.add(ref)
                todo.append(ref)
    root = convert(schemas[name])
    root["definitions"] = {ref: convert(schemas[ref]) for ref in sorted(needed)}
    return root


def from_openapi_v3(get_raw: Callable[[str], str], out: Path) -> int:
    """Writes one schema file per kind the API server serves; returns how many."""
    index = json.loads(get_raw("/openapi/v3"))["paths"]
    count = 0
    for path, entry in sorted(index.items()):
        match = re.fullmatch(r"api/(v1)|apis/([^/]+)/([^/]+)", path)
        if not match:
            continue
        group, version = ("", "v1") if match.group(1) else (match.group(2), match.group(3))
        doc = json.loads(get_raw(entry["serverRelativeURL"]))
        schemas = doc.get("components", {}).get("schemas", {})
        for name, schema in schemas.items():
            gvks = schema.get("x-kubernetes-group-version-kind") or []
            # Kinds of this group-version only (DeleteOptions & co. list every group: skipped).
            if len(gvks) != 1 or gvks[0].get("group", "") != group or gvks[0].get("version") != version:
                continue
            kind = gvks[0]["kind"]
            if kind.endswith("List") or "properties" not in schema:
                continue
            (out / file_name(kind, group, version)).write_text(json.dumps(standalone(name, schemas)))
            count += 1
    return count


def from_crd(crd_path: Path, out: Path) -> list[str]:
    """Writes the schema of each served version of a CRD; returns the file names."""
    crd = yaml.safe_load(crd_path.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    written = []
    for version in crd["spec"]["versions"]:
        schema = convert(version["schema"]["openAPIV3Schema"])
        # metadata is validated by the API server itself (ObjectMeta); keep it open here.
        schema.setdefault("properties", {})["metadata"] = {"type": "object"}
        name = file_name(kind, group, version["name"])
        (out / name).write_text(json.dumps(schema))
        written.append(name)
    return written


def generate(kubectl: list[str], out: Path) -> int:
    """All built-in kinds of the cluster kubectl talks to, into `out` (marked complete at the end)."""
    out.mkdir(parents=True, exist_ok=True)

    def get_raw(url: str) -> str:
        return subprocess.run([*kubectl, "get", "--raw", url], check=True, capture_output=True,
                              text=True, timeout=120).stdout

    count = from_openapi_v3(get_raw, out)
    (out / MARKER).write_text(f"{count} schemas\n")
    return count


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(generate(["kubectl"], target), "schemas in", target)
    root = Path(__file__).resolve().parents[2]
    print(from_crd(root / "crds" / "gemmadeployments.yaml", target))
