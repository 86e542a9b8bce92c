"""Fixtures: a stand-in hub per test and the real downloader run as a subprocess, like the Job runs it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gemma_operator.paths import manifest_path, model_dir
from tests.download.hubs import HuggingFaceHub, ModelScopeHub, Repo, StandInHub, make_repo_files

REPO_ROOT = Path(__file__).resolve().parents[2]
HUBS: dict[str, tuple[type[StandInHub], str, str]] = {
    "modelscope": (ModelScopeHub, "LLM-Research/gemma-3-tiny-it", "master"),
    "huggingface": (HuggingFaceHub, "google/gemma-3-tiny-it", "main"),
}
REPO_FILES = make_repo_files()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `condition` until it is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class Result:
    returncode: int
    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    seconds: float

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


class Downloader:
    """A running downloader whose stdout events are read as they arrive, with their arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO_ROOT)
        self.timed_events: list[tuple[float, dict[str, Any]]] = []
        self.stdout_lines: list[str] = []
        self._stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            self.timed_events.append((time.monotonic(), json.loads(line)))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for _, e in self.timed_events]

    def bytes_done(self) -> int:
        progress = [e["bytesDone"] for e in self.events if e["event"] == "progress"]
        return progress[-1] if progress else 0

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler, no cleanup, like a preempted pod
        self.proc.wait(timeout=10)

    def result(self, timeout: float = 90) -> Result:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # a hung downloader must not outlive its test
            raise
        for reader in self._readers:
            reader.join(timeout=10)
        return Result(returncode, self.events, "".join(self.stdout_lines), "".join(self._stderr),
                      time.monotonic() - self.started)


@dataclasses.dataclass
class Case:
    """One source's stand-in hub plus a fresh cache volume, HOME and termination log."""

    source: str
    hub: StandInHub
    model_id: str
    revision: str
    repo: Repo
    cache_root: Path
    home: Path
    termination_log: Path

    @property
    def model_dir(self) -> Path:
        return Path(model_dir(self.source, self.model_id, self.revision, root=str(self.cache_root)))

    @property
    def manifest(self) -> Path:
        return Path(manifest_path(self.source, self.model_id, self.revision, root=str(self.cache_root)))

    def argv(self, *extra: str, model_id: str | None = None, revision: str | None = None,
             endpoint: str | None = None) -> list[str]:
        return [sys.executable, "-m", "gemma_operator.download", "--source", self.source,
                "--model-id", model_id or self.model_id, "--revision", revision or self.revision,
                "--cache-root", str(self.cache_root), "--endpoint", endpoint or self.hub.url,
                "--termination-log", str(self.termination_log), *extra]

    def env(self, **extra: str) -> dict[str, str]:
        # Like the Job: HOME and TMPDIR on the one writable scratch directory, nothing else but the cache.
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith(("HF_", "MODELSCOPE"))}
        env.update(HOME=str(self.home), TMPDIR=str(self.home), GEMMA_DOWNLOAD_BACKOFF_SECONDS="0.1",
                   PYTHONUNBUFFERED="1")
        env.pop("GEMMA_HUB_TOKEN", None)
        env.update(extra)
        return env

    def start(self, *extra: str, env: dict[str, str] | None = None, **argv_kw: str) -> Downloader:
        return Downloader(self.argv(*extra, **argv_kw), env or self.env())

    def run(self, *extra: str, env: dict[str, str] | None = None, timeout: float = 90, **argv_kw: str) -> Result:
        return self.start(*extra, env=env, **argv_kw).result(timeout)

    def termination_message(self) -> str:
        return self.termination_log.read_text()


@pytest.fixture(params=sorted(HUBS))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    hub_class, model_id, revision = HUBS[request.param]
    repo = Repo(dict(REPO_FILES))
    hub = hub_class({model_id: {revision: repo}}).start()
    home = tmp_path / "home"
    home.mkdir()
    try:
        yield Case(request.param, hub, model_id, revision, repo, tmp_path / "models", home,
                   tmp_path / "termination-log")
    finally:
        hub.stop()
