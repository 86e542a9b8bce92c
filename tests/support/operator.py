"""Runs the operator as a local process against a cluster, the way the e2e and chart tests need it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`python -m gemma_operator` (or another module of the package, e.g. gemma_operator.gateway) with
    its output in a log file; healthy once its /healthz answers; stopped with SIGTERM (or SIGKILL)."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        module: str = "gemma_operator",
    ) -> None:
        self.module = module
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args or []
        self.extra_env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> OperatorProcess:
        env = (
            os.environ
            | {"KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
            | self.extra_env
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed by the child's exit
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--http-port",
                str(self.port),
                *self.args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}:\n{self.log()}"
                )
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy within {timeout}s:\n{self.log()}")

    def assert_running(self) -> None:
        """The process start() started has not exited. A fatal error of the operator is one log line
        ("operator stopped: ...") and exit status 1, not a traceback: a log check alone misses it."""
        assert self.proc is not None, "the operator was never started"
        code = self.proc.poll()
        assert code is None, f"the operator exited (status {code}) before the test ended:\n{self.log()[-4000:]}"

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the /metrics samples called `name` whose labels include `labels` (0 if none).

        A metric's HELP and TYPE lines are there from the import on; only its samples say that
        something happened."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(
            sample.value
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def log(self) -> str:
        return (
            self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        )

    def kill(self) -> None:
        """SIGKILL: the crash the operator must survive."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
