"""The downloader's pure parts: progress measured on disk, the retry policy, failure kinds, the manifest."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tests.download.conftest import wait_until
from gemma_operator.download.errors import DownloadError, Reason, describe
from gemma_operator.download.listing import Listing, RepoFile
from gemma_operator.download.progress import (
    EventWriter,
    ProgressReporter,
    bytes_on_disk,
    last_event,
)
from gemma_operator.download.retry import RetryPolicy, with_retries
from gemma_operator.download.stall import StallWatch, in_progress
from gemma_operator.download.verify import manifest_is_complete

LISTING = Listing((RepoFile("config.json", 100), RepoFile("weights/model.safetensors", 1000)))


def test_bytes_on_disk_counts_finished_and_partial_files_of_both_clients(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"x" * 100)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors.incomplete").write_bytes(b"x" * 300)  # ModelScope
    hf = tmp_path / ".cache" / "huggingface" / "download" / "weights"
    hf.mkdir(parents=True)
    (hf / "Zm9v.abc123.1a2b3c4d.incomplete").write_bytes(b"x" * 200)  # Hugging Face
    (hf / "model.safetensors.metadata").write_bytes(b"x" * 50)  # not model bytes
    (tmp_path / "README.md").write_bytes(b"x" * 70)  # not listed

    assert bytes_on_disk(str(tmp_path), LISTING) == 600


def test_bytes_on_disk_never_exceeds_the_listed_total(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"x" * 5000)

    assert bytes_on_disk(str(tmp_path), LISTING) == 100


def test_progress_never_goes_backwards_when_a_partial_file_is_discarded(tmp_path: Path) -> None:
    partial = tmp_path / "config.json.incomplete"
    partial.write_bytes(b"x" * 80)
    out = io.StringIO()

    with ProgressReporter(EventWriter(out), str(tmp_path), LISTING, interval=0.01):
        wait_until(lambda: out.getvalue().count("\n") >= 2, 5, "two progress lines")
        partial.write_bytes(b"x" * 10)  # a client restarting the file from scratch
        lines_before = out.getvalue().count("\n")
        wait_until(lambda: out.getvalue().count("\n") >= lines_before + 2, 5, "two more progress lines")

    done = [json.loads(line)["bytesDone"] for line in out.getvalue().splitlines()]
    assert done[0] == 80 and done == sorted(done)


def test_retry_delays_double_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=10, initial_delay=2, max_delay=60)

    assert [policy.delay(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def _failing(error: Exception, calls: list[int]) -> object:
    calls.append(1)
    raise error


def test_transient_failures_are_retried_with_backoff_then_reported_with_the_attempt_count() -> None:
    calls: list[int] = []
    sleeps: list[float] = []
    transient = describe(Reason.HUB_UNAVAILABLE, source="modelscope", model_id="a/b", revision="master")

    with pytest.raises(DownloadError) as raised:
        with_retries(lambda: _failing(ConnectionError("refused"), calls), lambda _e: transient,
                     RetryPolicy(attempts=4, initial_delay=1), sleep=sleeps.append)

    assert len(calls) == 4 and sleeps == [1, 2, 4]
    assert raised.value.exit_code == 4 and "gave up after 4 attempts" in raised.value.message


def test_permanent_failures_are_not_retried() -> None:
    calls: list[int] = []
    missing = describe(Reason.MODEL_NOT_FOUND, source="huggingface", model_id="a/b", revision="main")

    with pytest.raises(DownloadError) as raised:
        with_retries(lambda: _failing(KeyError("x"), calls), lambda _e: missing, RetryPolicy(attempts=5),
                     sleep=lambda _s: pytest.fail("slept before a permanent failure"))

    assert len(calls) == 1 and raised.value.exit_code == 3
    assert raised.value.message == "model a/b not found on huggingface (revision main)"


def test_failure_messages_are_one_line() -> None:
    error = DownloadError(Reason.HUB_UNAVAILABLE, "first line\nsecond   line")

    assert error.message == "first line second line"


def test_manifest_vouches_only_for_its_own_revision_with_every_file_at_size(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"x" * 100)
    manifest = {"source": "modelscope", "modelId": "a/b", "revision": "master",
                "files": [{"path": "config.json", "size": 100, "sha256": "0" * 64}]}

    assert manifest_is_complete(manifest, str(tmp_path), "modelscope", "a/b", "master")
    assert not manifest_is_complete(manifest, str(tmp_path), "modelscope", "a/b", "v2")
    (tmp_path / "config.json").write_bytes(b"x" * 99)
    assert not manifest_is_complete(manifest, str(tmp_path), "modelscope", "a/b", "master")


def test_last_event_reads_the_newest_event_of_a_log_tail() -> None:
    tail = 'esDone":1,"bytesTotal":4}\n{"event":"progress","bytesDone":2,"bytesTotal":4,"percent":50.0}\n'

    assert last_event(tail) == {"event": "progress", "bytesDone": 2, "bytesTotal": 4, "percent": 50.0}
    assert last_event("no events here\n") is None


# --- stall detection (issue 12) ---------------------------------------------------------------------------
STALL_LISTING = Listing((RepoFile("config.json", 100, sha256="ab" * 32),
                         RepoFile("model-00001.safetensors", 1000, sha256="cd" * 32)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stall_is_reported_only_after_the_timeout_without_any_change_on_disk(tmp_path: Path) -> None:
    partial = tmp_path / "model-00001.safetensors.incomplete"
    partial.write_bytes(b"x" * 300)
    clock = FakeClock()
    watch = StallWatch(str(tmp_path), STALL_LISTING, timeout=10, clock=clock)

    clock.now = 9.9
    assert watch.stalled() is None
    partial.write_bytes(b"x" * 400)  # a byte arrived: the clock starts again
    clock.now = 19.0
    assert watch.stalled() is None
    partial.write_bytes(b"x" * 50)  # a client discarding a partial file is working, not stalled
    clock.now = 28.0
    assert watch.stalled() is None
    clock.now = 38.0
    assert watch.stalled() == "no byte for 10s while downloading model-00001.safetensors (50 of 1000 bytes)"


def test_stall_before_any_file_started_says_how_far_the_revision_got(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"x" * 100)
    clock = FakeClock()
    watch = StallWatch(str(tmp_path), STALL_LISTING, timeout=5, clock=clock)

    clock.now = 5.0
    assert watch.stalled() == "no byte for 5s while downloading (100 of 1100 bytes of the revision on disk)"


def test_in_progress_maps_both_clients_partial_names_to_the_listed_file(tmp_path: Path) -> None:
    hf = tmp_path / ".cache" / "huggingface" / "download"
    hf.mkdir(parents=True)
    (hf / f"Zm9vYmFy_-=.{'cd' * 32}.1a2b3c4d.incomplete").write_bytes(b"x" * 200)  # Hugging Face
    (hf / "model-00001.safetensors.metadata").write_bytes(b"x" * 50)
    (tmp_path / "config.json.incomplete").write_bytes(b"x" * 30)  # ModelScope
    parts = tmp_path / "sub"
    parts.mkdir()
    listing = Listing(STALL_LISTING.files + (RepoFile("sub/big.bin", 500, sha256="ef" * 32),))
    (parts / "big.bin_0_99").write_bytes(b"x" * 100)  # ModelScope's ranged parts add up
    (parts / "big.bin_100_199").write_bytes(b"x" * 60)

    assert in_progress(str(tmp_path), listing) == [
        (listing.files[0], 30), (listing.files[1], 200), (listing.files[2], 160)]
