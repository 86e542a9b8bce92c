"""Issue 15, LoRA adapters (spec.adapters): the spec, the rendered vLLM flags, the adapters Job, the
downloader's adapter mode and rank check, the status it leads to, and the CRD's static rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from gemma_operator import builders, paths, status, transitions
from gemma_operator.download import cli
from gemma_operator.download.adapters import Adapter, adapter_rank, check_rank, next_rank
from gemma_operator.download.errors import (
    EXIT_ADAPTER_RANK,
    EXIT_PERMANENT,
    DownloadError,
    Reason,
    UsageError,
)
from gemma_operator.download.request import Request
from gemma_operator.settings import Settings
from gemma_operator.spec import MAX_LORA_RANKS, GemmaDeployment

REPO = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((REPO / "crds" / "gemmadeployments.yaml").read_text())
ROOT = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC = ROOT["properties"]["spec"]
NOW = "2026-11-25T00:00:00Z"
ADAPTERS = [{"name": "sql", "id": "my-org/gemma-sql-lora"},
            {"name": "chat", "id": "my-org/gemma-chat-lora", "source": "huggingface", "revision": "abc123"}]


def with_adapters(body: dict[str, Any], adapters: list[dict[str, Any]] | None = None, **settings: Any) -> GemmaDeployment:
    body["spec"]["adapters"] = ADAPTERS if adapters is None else adapters
    if settings:
        body["spec"]["adapterSettings"] = settings
    return GemmaDeployment.from_body(body)


# ------------------------------------------------------------------------------------------ spec and flags


def test_no_adapters_render_no_lora_flags(gd: GemmaDeployment, settings: Settings) -> None:
    assert builders.lora_args(gd) == []
    assert not any("lora" in a for a in builders.server_args(gd))
    assert builders.build_adapter_job(gd, settings) is None


def test_adapters_are_served_under_their_names_from_their_own_directories(gemma_body: dict[str, Any]) -> None:
    gd = with_adapters(gemma_body)
    args = builders.server_args(gd)
    lora = args[args.index("--enable-lora"):]
    assert lora == ["--enable-lora", "--max-lora-rank", "16", "--max-loras", "2", "--lora-modules",
                    "sql=/models/adapters/modelscope/my-org--gemma-sql-lora/master",
                    "chat=/models/adapters/huggingface/my-org--gemma-chat-lora/abc123"]
    # The model's own directory is not among them: models and adapters never share one.
    assert gd.model_dir == "/models/modelscope/LLM-Research--gemma-3-4b-it/master"


def test_adapter_settings_set_the_rank_and_slots_and_extra_args_come_last(gemma_body: dict[str, Any]) -> None:
    gemma_body["spec"]["vllm"] = {"extraArgs": ["--enable-prefix-caching"]}
    gd = with_adapters(gemma_body, maxRank=64, maxLoras=1)
    args = builders.server_args(gd)
    assert args[args.index("--max-lora-rank") + 1] == "64" and args[args.index("--max-loras") + 1] == "1"
    assert args[-1] == "--enable-prefix-caching"


def test_adapter_source_and_revision_default_to_the_models_hub(gemma_body: dict[str, Any]) -> None:
    gemma_body["spec"]["model"] = {"id": "google/gemma-3-4b-it", "source": "huggingface"}
    gd = with_adapters(gemma_body, [{"name": "a", "id": "o/a"}])
    adapter = gd.spec.adapters[0]
    assert (gd.adapter_source(adapter), gd.adapter_revision(adapter)) == ("huggingface", "main")
    assert gd.adapter_dir(adapter) == paths.adapter_dir("huggingface", "o/a", "main") == "/models/adapters/huggingface/o--a/main"


def test_the_lora_flags_change_the_compile_cache_key(gemma_body: dict[str, Any], settings: Settings) -> None:
    plain = GemmaDeployment.from_body(gemma_body)
    assert builders.compile_cache_key(plain, settings) != builders.compile_cache_key(with_adapters(gemma_body), settings)


# ------------------------------------------------------------------------------------------ the adapters Job


def job_args(job: dict[str, Any]) -> list[str]:
    return list(job["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_adapters_job_runs_the_downloader_on_the_cache_volume(gemma_body: dict[str, Any], settings: Settings) -> None:
    gemma_body["spec"]["model"]["tokenSecretRef"] = {"name": "hub", "key": "token"}
    gd = with_adapters(gemma_body, maxRank=32)
    job = builders.build_adapter_job(gd, settings)
    assert job is not None
    name = job["metadata"]["name"]
    assert re.fullmatch(r"gemma-adapters-[0-9a-f]{8}", name) and name == builders.adapter_job_name(gd, settings)
    assert job["metadata"]["labels"][builders.COMPONENT_LABEL] == "adapters"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "downloader:test"
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": gd.cache_claim_name}} in pod["volumes"]
    args = job_args(job)
    assert args[args.index("--max-lora-rank") + 1] == "32"
    requests = json.loads(args[args.index("--adapters") + 1])
    assert [(r["field"], r["name"], r["source"], r["id"], r["revision"]) for r in requests] == [
        ("spec.adapters[0]", "sql", "modelscope", "my-org/gemma-sql-lora", "master"),
        ("spec.adapters[1]", "chat", "huggingface", "my-org/gemma-chat-lora", "abc123")]
    # The model's hub token goes to the model's hub only.
    assert [r["token"] for r in requests] == [True, False]
    assert any(e["name"] == "GEMMA_HUB_TOKEN" for e in pod["containers"][0]["env"])
    # A rank the servers cannot load fails the Job at once, like a wrong model id.
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and {EXIT_ADAPTER_RANK, EXIT_PERMANENT} <= set(rule["onExitCodes"]["values"])
    # What the downloader will parse from it (the Job's args, unchanged).
    options = cli.parse(args)
    assert options.request is None and options.max_lora_rank == 32
    assert [a.request.model_dir for a in options.adapters] == [
        "/models/adapters/modelscope/my-org--gemma-sql-lora/master",
        "/models/adapters/huggingface/my-org--gemma-chat-lora/abc123"]
    assert [a.request.adapter for a in options.adapters] == [True, True]


def test_other_adapters_or_another_max_rank_mean_another_job(gemma_body: dict[str, Any], settings: Settings) -> None:
    first = builders.adapter_job_name(with_adapters(gemma_body), settings)
    assert builders.adapter_job_name(with_adapters(gemma_body), settings) == first
    assert builders.adapter_job_name(with_adapters(gemma_body, maxRank=32), settings) != first
    assert builders.adapter_job_name(with_adapters(gemma_body, ADAPTERS[:1]), settings) != first


def test_the_longest_name_still_makes_a_valid_job_name(gemma_body: dict[str, Any], settings: Settings) -> None:
    gemma_body["metadata"]["name"] = "g" * 45
    name = builders.adapter_job_name(with_adapters(gemma_body), settings)
    assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)


def test_on_a_read_write_once_cache_the_job_prefers_the_servers_node(gemma_body: dict[str, Any], settings: Settings) -> None:
    job = builders.build_adapter_job(with_adapters(gemma_body), settings)
    assert job is not None
    [term] = job["spec"]["template"]["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    gemma_body["spec"]["cache"] = {"accessModes": ["ReadWriteMany"]}
    many = builders.build_adapter_job(with_adapters(gemma_body), settings)
    assert many is not None and "affinity" not in many["spec"]["template"]["spec"]


# ------------------------------------------------------------------------------------------ the downloader


def adapter_at(root: Path, config: dict[str, Any] | None) -> Adapter:
    request = Request(source="modelscope", model_id="o/a", revision="v1", cache_root=str(root), adapter=True)
    Path(request.model_dir).mkdir(parents=True)
    if config is not None:
        (Path(request.model_dir) / "adapter_config.json").write_text(json.dumps(config))
    return Adapter("spec.adapters[2]", "sql", request)


def test_an_adapter_request_has_its_own_directory_manifest_and_lock(tmp_path: Path) -> None:
    from gemma_operator.download.lock import lock_path

    model = Request(source="modelscope", model_id="o/a", revision="v1", cache_root=str(tmp_path))
    adapter = Request(source="modelscope", model_id="o/a", revision="v1", cache_root=str(tmp_path), adapter=True)
    assert adapter.model_dir == str(tmp_path / "adapters" / "modelscope" / "o--a" / "v1")
    assert adapter.manifest_path == adapter.model_dir + "/" + paths.MANIFEST_NAME
    assert model.manifest_path == paths.manifest_path("modelscope", "o/a", "v1", root=str(tmp_path))
    assert len({model.model_dir, adapter.model_dir}) == 2 and lock_path(model) != lock_path(adapter)


def test_the_rank_check_passes_at_and_below_the_max(tmp_path: Path) -> None:
    assert check_rank(adapter_at(tmp_path, {"r": 16, "peft_type": "LORA"}), 16) == 16


def test_a_rank_above_the_max_names_the_field_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as e:
        check_rank(adapter_at(tmp_path, {"r": 8, "rank_pattern": {"q_proj": 48}}), 16)
    err = e.value
    assert err.reason is Reason.ADAPTER_RANK and err.exit_code == EXIT_ADAPTER_RANK and err.permanent
    assert "spec.adapters[2] (sql, o/a@v1 from modelscope)" in err.message
    assert "LoRA rank 48" in err.message and "spec.adapterSettings.maxRank to 64 or more" in err.message


def test_an_adapter_without_a_rank_is_an_integrity_failure(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as e:
        check_rank(adapter_at(tmp_path, None), 16)
    assert e.value.reason is Reason.INTEGRITY and "adapter_config.json" in e.value.message


@pytest.mark.parametrize("config,rank", [({"r": 8}, 8), ({"r": 8, "rank_pattern": {"v": 32, "q": 4}}, 32),
                                         ({"r": 4.0}, 4)])
def test_adapter_rank(config: dict[str, Any], rank: int) -> None:
    assert adapter_rank(config) == rank


def test_next_rank_is_a_value_vllm_accepts() -> None:
    assert [next_rank(r) for r in (1, 2, 9, 16, 17, 300, 321)] == [1, 8, 16, 16, 32, 320, 512]
    assert all(next_rank(r) in MAX_LORA_RANKS for r in range(1, 513))


def test_the_adapter_shape_check_wants_adapter_config_json() -> None:
    from gemma_operator.download import verify
    from gemma_operator.download.listing import Listing, RepoFile

    adapter = Listing((RepoFile("adapter_config.json", 10), RepoFile("adapter_model.safetensors", 10)))
    verify.check_shape(adapter, adapter=True)
    with pytest.raises(verify.VerificationFailed, match="config.json"):
        verify.check_shape(adapter)  # not a model
    model = Listing((RepoFile("config.json", 10), RepoFile("model.safetensors", 10)))
    with pytest.raises(verify.VerificationFailed, match="adapter_config.json .not a PEFT LoRA adapter"):
        verify.check_shape(model, adapter=True)


@pytest.mark.parametrize("args,words", [
    (["--adapters", "[]"], "non-empty"),
    (["--adapters", "{"], "not JSON"),
    (["--adapters", '[{"field":"spec.adapters[0]","source":"pvc","id":"o/a","revision":"m"}]'], "spec.adapters[0]: source"),
    (["--adapters", '[{"field":"spec.adapters[1]","source":"modelscope","id":"a","revision":"m"}]'], "spec.adapters[1]: id"),
    (["--adapters", '[{"source":"modelscope","id":"o/a","revision":".."}]'], "revision"),
    (["--adapters", '[{"source":"modelscope","id":"o/a","revision":"m"}]', "--model-id", "o/b"], "no --source or --model-id"),
    (["--source", "modelscope"], "--model-id are required"),
])
def test_bad_adapter_arguments_are_usage_errors(args: list[str], words: str) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        cli.parse(args)


# ------------------------------------------------------------------------------------------ status


def job(condition: str | None = None, active: int = 0, name: str = "x") -> dict[str, Any]:
    st: dict[str, Any] = {"active": active}
    if condition:
        st["conditions"] = [{"type": condition, "status": "True", "message": "Job has reached the specified backoff limit"}]
    return {"metadata": {"name": name}, "status": st}


def failed_pod(exit_code: int, message: str) -> dict[str, Any]:
    return {"metadata": {"name": "a", "creationTimestamp": NOW}, "status": {"containerStatuses": [
        {"name": "download", "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}


def cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_servers_wait_for_the_adapters(gemma_body: dict[str, Any]) -> None:
    gd = with_adapters(gemma_body)
    obs = status.Observed(job=job("Complete"), adapter_job=job(active=1, name="gemma-adapters-1"),
                          pvc={"status": {"phase": "Bound"}})
    assert status.model_downloaded(gd, obs) and not status.model_ready(gd, obs)
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Downloading" and cond(st, "ModelReady")["reason"] == "AdaptersDownloading"
    assert "sql (my-org/gemma-sql-lora)" in cond(st, "ModelReady")["message"]
    assert st["adapters"] == {"state": "Running", "names": ["sql", "chat"], "jobName": "gemma-adapters-1"}
    done = status.Observed(job=job("Complete"), adapter_job=job("Complete", name="gemma-adapters-1"))
    assert status.model_ready(gd, done)
    st = status.compute_status(gd, done, st, NOW)
    assert cond(st, "ModelReady")["reason"] == "Downloaded" and "adapters sql, chat" in cond(st, "ModelReady")["message"]
    # A finished adapters Job that is gone is remembered, as the model's download is.
    assert status.model_ready(gd, status.Observed(job=job("Complete"), adapters_done_before=True))


def test_a_rank_too_large_fails_with_its_own_reason_and_event(gemma_body: dict[str, Any]) -> None:
    gd = with_adapters(gemma_body)
    said = ("download failed: spec.adapters[1] (chat, my-org/gemma-chat-lora@abc123 from huggingface): LoRA rank 64 "
            "(r in adapter_config.json) is larger than the servers' --max-lora-rank 16 (spec.adapterSettings.maxRank); "
            "set spec.adapterSettings.maxRank to 64 or more, or use an adapter of rank 16 or less")
    obs = status.Observed(job=job("Complete"), adapter_job=job("Failed"), adapter_job_pods=[failed_pod(EXIT_ADAPTER_RANK, said)])
    st = status.compute_status(gd, obs, {}, NOW)
    model = cond(st, "ModelReady")
    assert st["phase"] == "Failed" and model["reason"] == "AdapterRankTooLarge"
    assert "spec.adapters[1]" in model["message"] and "spec.adapterSettings.maxRank to 64" in model["message"]
    assert cond(st, "Degraded")["reason"] == "AdapterRankTooLarge"
    events = transitions.events_between({}, st)
    assert ("Warning", "AdapterRankTooLarge", model["message"]) in events
    assert sum(1 for e in events if e[1] == "AdapterRankTooLarge") == 1  # not again as a Degraded event


def test_another_adapter_failure_is_adapter_download_failed(gemma_body: dict[str, Any]) -> None:
    gd = with_adapters(gemma_body)
    said = "download failed: spec.adapters[0] (sql): model my-org/gemma-sql-lora not found on modelscope (revision master)"
    obs = status.Observed(job=job("Complete"), adapter_job=job("Failed"), adapter_job_pods=[failed_pod(EXIT_PERMANENT, said)])
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Failed" and cond(st, "ModelReady")["reason"] == "AdapterDownloadFailed"
    assert "spec.adapters[0] (sql)" in cond(st, "ModelReady")["message"]
    no_pod = status.compute_status(gd, status.Observed(job=job("Complete"), adapter_job=job("Failed")), {}, NOW)
    assert "adapters sql, chat" in cond(no_pod, "ModelReady")["message"]


def test_no_adapters_no_adapters_block(gd: GemmaDeployment) -> None:
    st = status.compute_status(gd, status.Observed(job=job("Complete")), {}, NOW)
    assert "adapters" not in st


# ------------------------------------------------------------------------------------------ the CRD


def pattern(rule: str) -> re.Pattern[str]:
    found = re.search(r"matches\('((?:[^'\\]|\\.)*)'\)", rule)
    assert found, rule
    return re.compile(found.group(1).replace("\\\\", "\\"))


def test_the_crd_describes_and_bounds_the_adapters() -> None:
    adapters, settings_node = SPEC["properties"]["adapters"], SPEC["properties"]["adapterSettings"]
    item = adapters["items"]
    assert item["required"] == ["name", "id"] and adapters["maxItems"] >= 1
    assert item["properties"]["source"]["enum"] == ["modelscope", "huggingface"]
    assert "default" not in item["properties"]["source"]  # the model's source is the default (spec.py)
    rank = settings_node["properties"]["maxRank"]
    assert tuple(rank["enum"]) == MAX_LORA_RANKS and rank["default"] == 16
    gd = GemmaDeployment.from_body({"metadata": {"name": "g"}, "spec": {"model": {"id": "a/b"}}})
    assert gd.spec.adapter_settings.max_rank == rank["default"]
    for node in (adapters, item, settings_node, rank, settings_node["properties"]["maxLoras"],
                 *item["properties"].values()):
        assert node.get("description"), node
    assert "AdapterRankTooLarge" in adapters["description"] and "AdapterRankTooLarge" in rank["description"]


def test_the_crd_refuses_duplicate_adapter_names_naming_the_field() -> None:
    [rule] = SPEC["properties"]["adapters"]["x-kubernetes-validations"]
    assert "self.exists_one(b, b.name == a.name)" in rule["rule"]  # the API server judges it: tests/e2e
    assert "spec.adapters" in rule["messageExpression"] and "spec.adapters[i].name" in rule["messageExpression"]


def test_the_crd_refuses_an_adapter_named_like_the_served_model() -> None:
    rule = next(r for r in ROOT["x-kubernetes-validations"] if "adapters" in r["rule"])
    assert rule["fieldPath"] == ".spec.adapters"
    assert "self.spec.servedModelName" in rule["rule"] and "self.metadata.name" in rule["rule"]
    assert "spec.adapters[].name must differ" in rule["messageExpression"]


def test_adapter_names_fit_lora_modules_name_equals_path() -> None:
    name_rule = pattern(SPEC["properties"]["adapters"]["items"]["properties"]["name"]["x-kubernetes-validations"][0]["rule"])
    for ok in ("sql", "sql-lora", "org/sql:v1", "A.b_c"):
        assert name_rule.search(ok), ok
    # '=' and ',' would break vLLM's `name=path` parsing (a ',' makes it read the value as JSON).
    for bad in ("a=b", "a,b", "a b", "-a", ""):
        assert not name_rule.search(bad), bad


def test_the_lora_flags_are_refused_in_extra_args_with_adapters() -> None:
    rule = next(r for r in SPEC["x-kubernetes-validations"] if "lora" in r["rule"])
    assert rule["fieldPath"] == ".vllm.extraArgs" and "spec.adapters" in rule["message"]
    assert rule["rule"].startswith("!has(self.adapters) || size(self.adapters) == 0")
    p = pattern(rule["rule"])
    flags = [a for a in builders.lora_args(GemmaDeployment.from_body(
        {"metadata": {"name": "g"}, "spec": {"model": {"id": "a/b"}, "adapters": ADAPTERS}})) if a.startswith("--")]
    assert flags == ["--enable-lora", "--max-lora-rank", "--max-loras", "--lora-modules"]
    for flag in flags + ["--no-enable-lora"]:
        underscored = "--" + flag[2:].replace("-", "_")
        for form in (flag, f"{flag}=1", f"{flag} 1", underscored, f"{underscored}=1"):
            assert p.search(form), form
    for allowed in ("--max-cpu-loras=4", "--lora-dtype=bfloat16", "--fully-sharded-loras", "--enable-lora-bias"):
        assert not p.search(allowed), allowed


def test_a_pvc_models_adapters_name_their_hub() -> None:
    rule = next(r for r in SPEC["x-kubernetes-validations"] if "has(a.source)" in r["rule"])
    assert rule["fieldPath"] == ".adapters" and "spec.adapters[].source" in rule["message"]


def test_the_chart_copy_of_the_crd_is_the_same_file() -> None:
    chart = REPO / "charts" / "gemma-operator" / "files" / "gemmadeployments.yaml"
    assert chart.read_text() == (REPO / "crds" / "gemmadeployments.yaml").read_text(), "run hack/sync-crd.sh"


# ------------------------------------------------------------------------------------------ the reconciler


def test_the_servers_are_made_only_once_the_adapters_job_is_done(gemma_body: dict[str, Any], settings: Settings) -> None:
    import asyncio
    import copy

    from gemma_operator.reconciler import Reconciler
    from gemma_operator.store import Store

    from tests.unit.test_reconciler_auth import FakeClient

    # Weights already on a claim (no model download): only the adapters stand between the spec and the servers.
    gemma_body["spec"] |= {"model": gemma_body["spec"]["model"] | {"source": "pvc"}, "cache": {"existingClaim": "weights"}}
    gd = with_adapters(gemma_body, [{"name": "sql", "id": "my-org/sql-lora", "source": "modelscope"}])
    client, store = FakeClient(), Store()
    reconciler = Reconciler(client, store, settings)  # type: ignore[arg-type]
    asyncio.run(reconciler._apply_children(gd, {}))
    kinds = [kind for kind, _ in client.applied]
    job_name = builders.adapter_job_name(gd, settings)
    assert ("Job", job_name) in client.applied and "Deployment" not in kinds

    job = copy.deepcopy(client.objects[("Job", "ml", job_name)])
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    store.upsert("Job", job)
    client.applied.clear()
    asyncio.run(reconciler._apply_children(gd, {}))
    assert [kind for kind, _ in client.applied] == ["Deployment"]  # the Job is created once, never re-applied
    args = client.objects[("Deployment", "ml", "gemma")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "sql=/models/adapters/modelscope/my-org--sql-lora/master" in args


def test_a_bad_adapter_is_told_while_the_model_still_downloads(gemma_body: dict[str, Any]) -> None:
    gd = with_adapters(gemma_body)
    obs = status.Observed(job=job(active=1), adapter_job=job("Failed"),
                          adapter_job_pods=[failed_pod(EXIT_ADAPTER_RANK, "download failed: spec.adapters[0] (sql): ...")])
    st = status.compute_status(gd, obs, {}, NOW)
    assert st["phase"] == "Failed" and cond(st, "ModelReady")["reason"] == "AdapterRankTooLarge"
