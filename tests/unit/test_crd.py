"""Static checks of the CRD (crds/gemmadeployments.yaml): it teaches (descriptions), its rules explain
themselves (messages that name the field), and its lists of what the operator owns agree with the builders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gemma_operator import builders
from gemma_operator.settings import Settings
from gemma_operator.spec import GemmaDeployment

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "gemmadeployments.yaml").read_text())
ROOT = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
Schema = dict[str, Any]


def walk(schema: Schema, path: str) -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path: spec.gpu.count, spec.vllm.env[], spec.nodeSelector{}."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


NODES = list(walk(ROOT, ""))
RULES = [(path, rule) for path, node in NODES for rule in node.get("x-kubernetes-validations") or []]


def rule_pattern(rule: str) -> re.Pattern[str]:
    """The regular expression of an `a.matches('...')` CEL rule, as Python sees it."""
    found = re.search(r"matches\('((?:[^'\\]|\\.)*)'\)", rule)
    assert found, rule
    return re.compile(found.group(1).replace("\\\\", "\\"))


def test_every_property_is_described() -> None:
    skip = ("", "apiVersion", "kind", "metadata")
    undescribed = [path for path, node in NODES
                   if path not in skip and not path.endswith(("[]", "{}")) and not node.get("description")]
    assert undescribed == []


def test_there_are_rules() -> None:
    assert len(RULES) >= 30


@pytest.mark.parametrize("path,rule", RULES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(RULES)])
def test_every_rule_explains_itself(path: str, rule: dict[str, Any]) -> None:
    message = rule.get("message") or rule.get("messageExpression") or ""
    assert message, f"rule {rule['rule']!r} at {path or 'the root'} has no message"
    # The message names the field it is about (as a user writes it: spec.x.y or metadata.name) ...
    assert re.search(r"\b(spec\.[A-Za-z.]+|metadata\.name)\b", message), message
    # ... and says what to do, or what is allowed, beyond "invalid".
    assert len(message.split()) >= 8, message


def test_fields_moved_from_patterns_to_rules_keep_their_bounds() -> None:
    """A string checked by a CEL rule has a maxLength, which keeps the rule's estimated cost bounded."""
    for path, node in NODES:
        if node.get("type") == "string" and node.get("x-kubernetes-validations"):
            assert "maxLength" in node or "enum" in node, path


def _node(path: str) -> Schema:
    return dict(NODES)[path]


def _full_deployment(settings: Settings) -> dict[str, Any]:
    gd = GemmaDeployment.from_body({
        "metadata": {"name": "gemma", "namespace": "ml"},
        "spec": {
            "model": {"id": "LLM-Research/gemma-3-4b-it"},
            "maxModelLen": 2048,
            "gpu": {"count": 2, "memoryUtilization": 0.9},
            "apiKeySecretRef": {"name": "keys", "key": "api-key"},
        },
    })
    deployment: dict[str, Any] = builders.build_server_deployment(gd, settings)
    return deployment


def test_env_names_the_operator_sets_are_refused_in_spec_vllm_env() -> None:
    settings = Settings(vllm_image="vllm/vllm-openai:test", downloader_image="downloader:test")
    container = _full_deployment(settings)["spec"]["template"]["spec"]["containers"][0]
    operator_env = {e["name"] for e in container["env"]}
    rules = _node("spec.vllm.env")["x-kubernetes-validations"]
    reserved_rule = next(r["rule"] for r in rules if "HF_HUB_OFFLINE" in r["rule"])
    reserved = set(re.findall(r"'([A-Z_]+)'", reserved_rule))
    # Both ways: a name the builder adds must be refused (server-side apply refuses a duplicate env name),
    # and the CRD refuses nothing the operator does not set.
    assert reserved == operator_env


def test_flags_the_operator_sets_are_refused_in_spec_vllm_extra_args() -> None:
    settings = Settings(vllm_image="vllm/vllm-openai:test", downloader_image="downloader:test")
    container = _full_deployment(settings)["spec"]["template"]["spec"]["containers"][0]
    flags = [a for a in container["args"] if a.startswith("-")] + ["--api-key", "--model"]
    patterns = [rule_pattern(r["rule"]) for r in _node("spec.vllm.extraArgs")["x-kubernetes-validations"]]
    for flag in flags:
        # vLLM's parser also takes --max_model_len for --max-model-len.
        underscored = "--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag
        for form in (flag, f"{flag}=1", f"{flag} 1", underscored, f"{underscored}=1"):
            assert any(p.search(form) for p in patterns), f"spec.vllm.extraArgs lets {form!r} through"
    allowed = ("--enable-prefix-caching", "--portal", "--model-impl=vllm", "--max-num-seqs=8",
               "--enforce-eager")
    for arg in allowed:
        assert not any(p.search(arg) for p in patterns), arg


@pytest.mark.parametrize("name,ok", [
    ("gemma", True), ("gemma-3-4b", True), ("g" * 45, True),
    ("g" * 46, False), ("3gemma", False), ("gemma.v1", False), ("Gemma", False), ("gemma-", False),
])
def test_names_that_make_valid_children(name: str, ok: bool) -> None:
    """The name rules accept exactly the names whose children (Service <name>, Job <name>-download-<8>)
    are valid."""
    rules = ROOT["x-kubernetes-validations"]
    length_ok = len(name) <= 45
    pattern_ok = all(rule_pattern(r["rule"]).search(name) for r in rules if "matches" in r["rule"])
    assert (length_ok and pattern_ok) == ok
    if ok:
        settings = Settings(vllm_image="v:1", downloader_image="d:1")
        gd = GemmaDeployment.from_body({"metadata": {"name": name, "namespace": "ml"},
                                        "spec": {"model": {"id": "LLM-Research/gemma-3-4b-it"}}})
        job = builders.download_job_name(gd, settings)
        assert len(job) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job), job


def test_download_stall_timeout_is_bounded_described_and_defaults_like_the_spec_model() -> None:
    node = _node("spec.download.stallTimeoutSeconds")
    assert node["type"] == "integer"
    assert (node["minimum"], node["maximum"], node["default"]) == (60, 86400, 600)
    assert "DownloadStalled" in node["description"] and "retries" in node["description"]
    gd = GemmaDeployment.from_body({"metadata": {"name": "g", "namespace": "n"}, "spec": {"model": {"id": "a/b"}}})
    assert gd.spec.download.stall_timeout_seconds == node["default"]


def test_multimodal_images_are_bounded_described_and_default_to_text_only() -> None:
    images = _node("spec.multimodal.images")
    enabled, per_prompt = _node("spec.multimodal.images.enabled"), _node("spec.multimodal.images.maxPerPrompt")
    assert enabled["type"] == "boolean" and enabled["default"] is False
    assert (per_prompt["type"], per_prompt["minimum"], per_prompt["maximum"]) == ("integer", 1, 128)
    assert "default" not in per_prompt  # a default would trip the rule below with images off
    assert "--limit-mm-per-prompt" in images["description"] and "vision tower" in images["description"]
    [rule] = images["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".maxPerPrompt" and "spec.multimodal.images.enabled" in rule["message"]
    # The spec model has the CRD's defaults: text only, one image per prompt once enabled.
    gd = GemmaDeployment.from_body({"metadata": {"name": "g", "namespace": "n"}, "spec": {"model": {"id": "a/b"}}})
    assert gd.spec.multimodal.images.enabled is enabled["default"] and gd.spec.multimodal.images.limit == 0
    on = GemmaDeployment.from_body({"metadata": {"name": "g", "namespace": "n"},
                                    "spec": {"model": {"id": "a/b"}, "multimodal": {"images": {"enabled": True}}}})
    assert on.spec.multimodal.images.limit == per_prompt["minimum"]


def test_extra_args_cannot_change_the_image_limit() -> None:
    patterns = [rule_pattern(r["rule"]) for r in _node("spec.vllm.extraArgs")["x-kubernetes-validations"]]
    # vLLM also parses dotted JSON fields (--limit-mm-per-prompt.image 2), and --language-model-only sets
    # every limit to 0.
    for arg in ('--limit-mm-per-prompt={"image":8}', "--limit-mm-per-prompt.image=8", "--limit_mm_per_prompt",
                "--limit-mm-per-prompt.image 8", "--language-model-only", "--language_model_only=true"):
        assert any(p.search(arg) for p in patterns), arg
    for arg in ("--mm-processor-kwargs={}", "--limit-mm-per-prompts", "--mm-processor-cache-gb=4"):
        assert not any(p.search(arg) for p in patterns), arg


def test_the_server_pod_fields_default_like_the_spec_model() -> None:
    """Issue 15: spec.topologySpread, spec.disruptionBudget, spec.priorityClassName, spec.vllm.compileCache."""
    gd = GemmaDeployment.from_body({"metadata": {"name": "g", "namespace": "n"},
                                    "spec": {"model": {"id": "a/b"}, "topologySpread": {}}})
    spread = gd.spec.topology_spread
    assert spread is not None
    assert _node("spec.topologySpread.topologyKey")["default"] == spread.topology_key
    assert _node("spec.topologySpread.maxSkew")["default"] == spread.max_skew
    when = _node("spec.topologySpread.whenUnsatisfiable")
    assert when["default"] == spread.when_unsatisfiable and set(when["enum"]) == {"DoNotSchedule", "ScheduleAnyway"}
    budget = _node("spec.disruptionBudget.maxUnavailable")
    assert budget["x-kubernetes-int-or-string"] is True and "default" not in budget
    assert gd.spec.disruption_budget.max_unavailable == 1 and "default 1" in budget["description"]
    assert _node("spec.priorityClassName")["type"] == "string" and gd.spec.priority_class_name is None
    # Unset compileCache.enabled means "decide by the source" (builders.compile_cache_enabled): no CRD default.
    assert "default" not in _node("spec.vllm.compileCache.enabled") and gd.spec.vllm.compile_cache.enabled is None
