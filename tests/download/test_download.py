"""The downloader with the real ModelScope and Hugging Face clients against stand-in hubs (issue 4,
acceptance 1, 2, 3, 4 and 6). Every test runs once per source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.download.conftest import Case, sha256_file, wait_until
from tests.download.hubs import LoggedRequest

pytestmark = pytest.mark.timeout(120)


def assert_files_match_hub(case: Case) -> None:
    for path in case.repo.files:
        assert sha256_file(case.model_dir / path) == case.repo.sha256(path), path


def served_path(case: Case, request: LoggedRequest) -> str:
    return request.path.split("/resolve/", 1)[1].split("/", 1)[1] if case.source == "huggingface" \
        else request.query["FilePath"]


def partial_files(case: Case) -> list[Path]:
    return [p for p in case.model_dir.rglob("*") if p.is_file() and p.name.endswith(".incomplete")]


# --- acceptance 1: a full download, byte for byte, with its manifest ---------------------------------------
def test_full_download_matches_served_files_and_writes_manifest(case: Case) -> None:
    result = case.run()

    assert result.returncode == 0, result.stderr
    assert_files_match_hub(case)
    manifest = json.loads(case.manifest.read_text())
    assert (manifest["source"], manifest["modelId"], manifest["revision"]) == (
        case.source, case.model_id, case.revision)
    assert manifest["files"] == [{"path": p, "size": len(b), "sha256": case.repo.sha256(p)}
                                 for p, b in sorted(case.repo.files.items())]
    assert manifest["totalBytes"] == case.repo.total_bytes
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["completedAt"])
    assert result.last == {"event": "done", "bytesDone": case.repo.total_bytes,
                           "bytesTotal": case.repo.total_bytes, "percent": 100.0, "alreadyComplete": False,
                           "files": len(case.repo.files)}
    assert not partial_files(case)


def test_nothing_is_written_outside_the_cache_root_and_tmpdir(case: Case) -> None:
    # The Job's root filesystem is read-only; HOME and TMPDIR are one scratch dir the test can inspect.
    result = case.run()

    assert result.returncode == 0, result.stderr
    assert list(case.home.iterdir()) == []
    # The model under <root>/<source>/, the clients' own state (locks, session ids) under .hub-clients.
    assert case.source in {p.name for p in case.cache_root.iterdir()} <= {case.source, ".hub-clients"}


# --- acceptance 2: a rerun downloads nothing ---------------------------------------------------------------
def test_second_run_makes_no_request_and_says_so(case: Case) -> None:
    assert case.run().returncode == 0
    case.hub.clear_log()

    result = case.run()

    assert result.returncode == 0, result.stderr
    assert case.hub.log == []  # no file request, not even a listing
    assert result.events == [{"event": "done", "bytesDone": case.repo.total_bytes,
                              "bytesTotal": case.repo.total_bytes, "percent": 100.0, "alreadyComplete": True}]
    assert "already complete" in result.stderr
    assert result.seconds < 10


def test_rerun_after_a_file_was_damaged_fetches_only_that_file(case: Case) -> None:
    assert case.run().returncode == 0
    shard = case.model_dir / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    case.hub.clear_log()

    result = case.run()

    assert result.returncode == 0, result.stderr
    assert {r.path.rsplit("/", 1)[-1] if case.source == "huggingface" else r.query["FilePath"]
            for r in case.hub.file_requests()} == {shard.name}
    assert_files_match_hub(case)


# --- acceptance 3: SIGKILL part-way, then resume ---------------------------------------------------------
def test_download_killed_part_way_resumes_with_fewer_bytes_and_identical_files(case: Case) -> None:
    total = case.repo.total_bytes
    case.hub.faults.throttle_bps = 600 * 1024
    downloader = case.start()
    wait_until(lambda: downloader.bytes_done() >= 1200 * 1024, 30, "1.2 MB on disk")
    downloader.kill()
    assert not case.manifest.exists()
    # The partial files are on the cache volume, where the next pod finds them.
    assert sum(p.stat().st_size for p in partial_files(case)) > 0
    case.hub.faults.throttle_bps = None
    case.hub.clear_log()

    result = case.run()

    assert result.returncode == 0, result.stderr
    resumed = case.hub.file_bytes_sent()
    assert resumed <= total - 1024 * 1024, f"rerun fetched {resumed} of {total} bytes"
    assert any(r.range_start > 0 for r in case.hub.file_requests()), "no request resumed from an offset"
    assert_files_match_hub(case)
    assert not partial_files(case)


def test_dropped_connection_is_resumed_within_the_run(case: Case) -> None:
    shard = "model-00001-of-00002.safetensors"
    case.hub.faults.drop_after(shard, 1200 * 1024)  # past the clients' 1 MiB write chunk

    result = case.run()

    assert result.returncode == 0, result.stderr
    assert_files_match_hub(case)
    resumes = [r for r in case.hub.file_requests() if r.path.endswith(shard) or r.query.get("FilePath") == shard]
    assert [r.range_start > 0 for r in resumes] == [False, True]


def test_transient_server_errors_on_files_are_retried(case: Case) -> None:
    case.hub.faults.fail(503, kind="file", times=2)

    result = case.run()

    assert result.returncode == 0, result.stderr
    assert_files_match_hub(case)
    assert [r.status for r in case.hub.file_requests()].count(503) == 2


# --- acceptance 4: permanent failures at once, transient ones after retries, no empty success ------------
def test_unknown_model_fails_permanently_within_15s_naming_model_and_source(case: Case) -> None:
    wrong = case.model_id + "x"

    result = case.run(model_id=wrong)

    assert result.returncode == 3
    assert result.seconds < 15
    message = case.termination_message()
    assert message.count("\n") == 1 and message.startswith("download failed: ")
    assert wrong in message and case.source in message and "not found" in message
    assert result.last["event"] == "failed" and result.last["reason"] == "ModelNotFound"
    assert wrong in result.last["message"]
    assert case.hub.file_requests() == []


def test_unknown_revision_fails_permanently(case: Case) -> None:
    result = case.run(revision="v9.9")

    assert result.returncode == 3
    message = case.termination_message()
    assert "revision v9.9" in message and case.model_id in message and case.source in message
    assert result.last["reason"] == "RevisionNotFound"


def test_hub_that_is_down_gives_the_transient_status_after_the_retries(case: Case) -> None:
    endpoint = case.hub.url
    case.hub.stop()

    result = case.run("--attempts", "3", endpoint=endpoint)

    assert result.returncode == 4
    message = case.termination_message()
    assert case.model_id in message and case.source in message and "after 3 attempts" in message
    assert result.last["reason"] == "HubUnavailable"
    assert re.findall(r"retrying in ([\d.]+)s", result.stderr) == ["0.1", "0.2"]  # exponential backoff


def test_hub_answering_5xx_gives_the_transient_status_after_the_retries(case: Case) -> None:
    case.hub.faults.fail(503, kind="api")

    result = case.run("--attempts", "3")

    assert result.returncode == 4
    assert "after 3 attempts" in case.termination_message()
    assert len(case.hub.log) >= 3  # each attempt reached the hub
    assert not case.manifest.exists()


def test_listing_without_files_is_an_error_not_an_empty_success(case: Case) -> None:
    case.hub.faults.empty_listing = True

    result = case.run()

    assert result.returncode == 3
    assert result.last["reason"] == "EmptyRepository"
    assert case.model_id in case.termination_message() and "listed no files" in case.termination_message()
    assert not case.manifest.exists()


@pytest.mark.parametrize("case", ["modelscope"], indirect=True)
def test_modelscope_success_false_is_an_error_not_an_empty_success(case: Case) -> None:
    case.hub.faults.success_false = True

    result = case.run()

    assert result.returncode == 3
    assert result.last["reason"] == "EmptyRepository"
    assert "modelscope" in case.termination_message() and case.model_id in case.termination_message()
    assert not case.manifest.exists()


def test_content_that_contradicts_the_hubs_sha256_is_an_integrity_failure(case: Case) -> None:
    shard = "model-00002-of-00002.safetensors"
    case.hub.faults.corrupt.add(shard)

    result = case.run()

    assert result.returncode == 3
    assert result.last["reason"] == "IntegrityError"
    message = case.termination_message()
    assert case.model_id in message and case.source in message and shard in message
    assert not case.manifest.exists()
    assert not (case.model_dir / shard).exists()  # never left looking finished


def test_gated_model_needs_the_token_from_the_environment_and_never_shows_it(case: Case) -> None:
    token = "hub-token-0123456789abcdef"
    case.hub.faults.require_token = token

    denied = case.run()
    allowed = case.run(env=case.env(GEMMA_HUB_TOKEN=token))

    assert denied.returncode == 3
    assert "token" in case.termination_message() and case.model_id in case.termination_message()
    assert allowed.returncode == 0, allowed.stderr
    assert_files_match_hub(case)
    for text in (denied.stdout, denied.stderr, allowed.stdout, allowed.stderr, case.termination_message(),
                 case.manifest.read_text()):
        assert token not in text


def test_forbidden_model_fails_permanently(case: Case) -> None:
    case.hub.faults.forbidden = True

    result = case.run()

    assert result.returncode == 3
    assert result.last["reason"] == "Forbidden"
    assert "forbidden" in case.termination_message() and case.model_id in case.termination_message()


def test_usage_error_exits_2(case: Case) -> None:
    result = case.run(model_id="not-an-owner-slash-name")

    assert result.returncode == 2
    assert result.last["reason"] == "InvalidArguments"
    assert "not-an-owner-slash-name" in case.termination_message()


# --- acceptance 6: progress -------------------------------------------------------------------------------
def test_progress_rises_monotonically_from_0_to_100_against_the_repository_size(case: Case) -> None:
    total = case.repo.total_bytes
    case.hub.faults.throttle_bps = 800 * 1024  # about 4 s for the whole repository

    downloader = case.start()
    result = downloader.result()

    assert result.returncode == 0, result.stderr
    progress = [(t, e) for t, e in downloader.timed_events if e["event"] == "progress"]
    done = [e["bytesDone"] for _, e in progress]
    assert done[0] == 0
    assert done == sorted(done)
    assert all(e["bytesTotal"] == total for _, e in progress)
    assert all(e["percent"] == round(100 * e["bytesDone"] / total, 1) for _, e in progress)
    assert len([d for d in done if 0 < d < total]) >= 2, done  # it moved while the download ran
    # At most one line a second (counted, not timed: the reading side may see two lines at once).
    assert len(progress) <= result.seconds + 1, (len(progress), result.seconds)
    assert result.last["event"] == "done" and result.last["percent"] == 100.0
    assert result.last["bytesDone"] == result.last["bytesTotal"] == total
    assert all(json.loads(line) for line in result.stdout.splitlines())  # stdout carries only events


# --- issue 12: a stalled download fails (transient) and says where ----------------------------------------
def _stall_detail(message: str, shard: str) -> tuple[int, int]:
    found = re.search(rf"no byte for 2s while downloading {re.escape(shard)} \((\d+) of (\d+) bytes\)", message)
    assert found, message
    return int(found[1]), int(found[2])


def test_stalled_download_fails_as_transient_naming_the_file_and_its_bytes(case: Case) -> None:
    shard = "model-00001-of-00002.safetensors"
    stall_at = 1200 * 1024  # past the clients' 1 MiB write chunk, so part of the file is on disk
    case.hub.faults.stall_at(shard, stall_at)

    # Through the environment, as the Job passes spec.download.stallTimeoutSeconds.
    result = case.run("--attempts", "2", env=case.env(GEMMA_DOWNLOAD_STALL_TIMEOUT_SECONDS="2"), timeout=60)

    assert result.returncode == 4, result.stderr
    assert result.seconds < 30, result.seconds  # 2 attempts x 2 s, not the hub's forever
    assert result.last["event"] == "failed" and result.last["reason"] == "DownloadStalled"
    have, size = _stall_detail(result.last["message"], shard)
    assert size == len(case.repo.files[shard]) and 0 < have <= stall_at
    [partial] = partial_files(case)  # the killed attempt's bytes stay for the next pod
    assert partial.stat().st_size == have
    message = case.termination_message()
    assert _stall_detail(message, shard) == (have, size)
    assert case.model_id in message and case.source in message and "after 2 attempts" in message
    # The second attempt resumed the first one's partial file instead of starting over.
    requests = [r for r in case.hub.file_requests() if served_path(case, r) == shard]
    assert [r.range_start > 0 for r in requests] == [False, True]
    assert not case.manifest.exists()


@pytest.mark.parametrize("case", ["huggingface"], indirect=True)
def test_client_giving_up_on_a_silent_hub_before_the_stall_timeout_is_reported_as_a_stall(case: Case) -> None:
    shard = "model-00001-of-00002.safetensors"
    case.hub.faults.stall_at(shard, 1200 * 1024)
    # The client's own read timeout (10 s, retried 5 times: it gives up long before the default 600 s),
    # shortened so that the test is quick.
    result = case.run("--attempts", "1", env=case.env(HF_HUB_DOWNLOAD_TIMEOUT="2"), timeout=90)

    assert result.returncode == 4, result.stderr
    assert result.last["reason"] == "DownloadStalled", result.stderr[-2000:]
    size = len(case.repo.files[shard])
    assert re.search(rf"stalled: no byte for \d+s while downloading {re.escape(shard)} \(\d+ of {size} bytes\); "
                     "the client gave up", result.last["message"]), result.last["message"]
    assert result.seconds < 60, result.seconds


# --- issue 12: two downloaders of one revision into one volume ------------------------------------------
def test_second_downloader_of_a_revision_waits_for_the_lock_then_finds_it_complete(case: Case) -> None:
    case.hub.faults.throttle_bps = 1024 * 1024  # about 3 s, so the two runs overlap
    first = case.start()
    wait_until(lambda: first.bytes_done() > 0, 30, "the first downloader's bytes on disk")
    second = case.start()

    results = first.result(), second.result()

    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert_files_match_hub(case)
    waiting = [e for e in results[1].events if e["event"] == "waiting"]
    assert waiting and waiting[0]["reason"] == "Locked", results[1].events
    assert results[1].last["event"] == "done" and results[1].last["alreadyComplete"] is True
    # Each file left the hub once, whole: the second run neither fetched nor resumed anything.
    served = sorted((served_path(case, r), r.bytes_sent) for r in case.hub.file_requests())
    assert served == sorted((p, len(b)) for p, b in case.repo.files.items())
