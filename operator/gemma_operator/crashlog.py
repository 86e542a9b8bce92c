"""The root cause of a crashed server, from the tail of its log (pure: text in, one line out).

When vLLM cannot start, its log ends with the tracebacks of two processes: the engine core's, whose last
line is the real cause (``ValueError: ...``), then the API server's, which only says ``RuntimeError: Engine
core initialization failed. See root cause above.`` A configuration error instead ends with pydantic's
``ValidationError: 1 validation error for ModelConfig`` and the reason on the indented line after it. The
kubelet keeps only the last 2 KiB of the log as the termination message, which often holds the wrapper
alone, so the operator reads the crashed container's log and finds the cause with `root_cause`.
"""

from __future__ import annotations

import re

# "(EngineCore pid=19) ERROR 12-03 08:41:08 [core.py:1510] " and similar prefixes of vLLM's log lines.
_PROCESS_PREFIX = re.compile(r"^\((?:APIServer|EngineCore|Worker|VllmWorker)[^)]*\)\s*")
_LOG_PREFIX = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?")
_EXCEPTION = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failed|Failure|Timeout|NotFound))(?::\s*(.*))?$")
# Exceptions that only point at another one.
_WRAPPERS = re.compile(r"see root cause above|engine core initialization failed|EngineCore failed to start", re.IGNORECASE)
_PYDANTIC_TAIL = re.compile(r"\s*\[type=[^\]]*\]\s*$")
MAX_CAUSE = 500


def _clean(line: str) -> str:
    return _LOG_PREFIX.sub("", _PROCESS_PREFIX.sub("", line.rstrip()))


def root_cause(log: str) -> str | None:
    """The last exception line of `log` that is not a mere pointer to another one, with pydantic's
    validation detail when that is the exception; None when the log names no exception."""
    lines = [_clean(line) for line in log.splitlines()]
    cause = None
    for i, line in enumerate(lines):
        match = _EXCEPTION.match(line.strip()) if not line.startswith((" ", "\t")) else None
        if match is None or _WRAPPERS.search(line):
            continue
        # The exception's own name, without its module path (pydantic_core._pydantic_core.ValidationError).
        text = match.group(1) + (f": {match.group(2)}" if match.group(2) else "")
        if match.group(1) == "ValidationError":
            details = [d.strip() for d in lines[i + 1:i + 4] if d.startswith("  ") and not d.strip().startswith("For further")]
            if details:
                text = f"{text}: " + "; ".join(_PYDANTIC_TAIL.sub("", d) for d in details)
        cause = text
    return cause[:MAX_CAUSE] if cause else None
