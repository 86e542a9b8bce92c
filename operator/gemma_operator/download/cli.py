"""Command line of the downloader: arguments and environment in, exit status and events out."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import IO, NoReturn

from gemma_operator.download import env
from gemma_operator.download.adapters import Adapter
from gemma_operator.download.adapters import parse as parse_adapters
from gemma_operator.download.adapters import run_all as run_adapters
from gemma_operator.download.errors import EXIT_OK, DownloadError, UsageError, cache_error
from gemma_operator.download.progress import EventWriter
from gemma_operator.download.request import Request
from gemma_operator.download.retry import RetryPolicy
from gemma_operator.download.stall import DEFAULT_STALL_TIMEOUT_SECONDS
from gemma_operator.paths import CACHE_ROOT

DEFAULT_REVISION = {"modelscope": "master", "huggingface": "main"}
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
STALL_TIMEOUT_ENV = "GEMMA_DOWNLOAD_STALL_TIMEOUT_SECONDS"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
log = logging.getLogger("gemma_operator.download")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A usage error is a failure like any other: exit 2, a `failed` event, the termination log.
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m gemma_operator.download",
                description="Download a model revision into the cache volume, verified, with a manifest.")
    # Required unless --adapters is given (checked in parse: argparse cannot say "one of these groups").
    p.add_argument("--source", choices=sorted(DEFAULT_REVISION))
    p.add_argument("--model-id", help="OWNER/NAME")
    p.add_argument("--adapters", help="instead of a model: a JSON list of LoRA adapters "
                   '[{"field","name","source","id","revision","endpoint","token"}] (the operator\'s adapters Job)')
    p.add_argument("--max-lora-rank", type=int, default=16,
                   help="with --adapters: fail (exit 5) on an adapter of a larger rank (default 16, vLLM's)")
    p.add_argument("--revision", help="branch, tag or commit (default: master on modelscope, main on huggingface)")
    p.add_argument("--cache-root", default=CACHE_ROOT)
    p.add_argument("--endpoint", default=os.environ.get(env.ENDPOINT_ENV) or None,
                   help=f"hub base URL (default: ${env.ENDPOINT_ENV}, else the client's own default)")
    p.add_argument("--termination-log", default=DEFAULT_TERMINATION_LOG)
    p.add_argument("--attempts", type=int, default=os.environ.get("GEMMA_DOWNLOAD_ATTEMPTS", "5"),
                   help="tries for a transient failure (default: $GEMMA_DOWNLOAD_ATTEMPTS or 5)")
    # String defaults go through `type` too, so a malformed environment value is a usage error.
    p.add_argument("--backoff-seconds", type=float,
                   default=os.environ.get("GEMMA_DOWNLOAD_BACKOFF_SECONDS", "2"),
                   help="first retry delay, doubled per retry up to 60 s "
                   "(default: $GEMMA_DOWNLOAD_BACKOFF_SECONDS or 2)")
    p.add_argument("--stall-timeout-seconds", type=float,
                   default=os.environ.get(STALL_TIMEOUT_ENV, f"{DEFAULT_STALL_TIMEOUT_SECONDS:g}"),
                   help="fail an attempt (transient, retried) when no byte reached the volume for this long "
                   f"(default: ${STALL_TIMEOUT_ENV} or {DEFAULT_STALL_TIMEOUT_SECONDS:g})")
    return p


@dataclasses.dataclass(frozen=True)
class Options:
    request: Request | None
    policy: RetryPolicy
    termination_log: str
    stall_timeout: float
    adapters: tuple[Adapter, ...] = ()
    max_lora_rank: int = 16
    cache_root: str = CACHE_ROOT


def parse(argv: Sequence[str]) -> Options:
    args = _parser().parse_args(argv)
    if args.attempts < 1 or args.backoff_seconds < 0:
        raise UsageError("--attempts must be >= 1 and --backoff-seconds >= 0")
    if not args.stall_timeout_seconds > 0:
        raise UsageError("--stall-timeout-seconds must be > 0")
    policy = RetryPolicy(attempts=args.attempts, initial_delay=args.backoff_seconds)
    cache_root = os.path.abspath(args.cache_root)
    if args.adapters is not None:
        if args.model_id or args.source:
            raise UsageError("--adapters downloads adapters only: no --source or --model-id with it")
        if args.max_lora_rank < 1:
            raise UsageError("--max-lora-rank must be >= 1")
        adapters = tuple(parse_adapters(args.adapters, cache_root, env.token()))
        return Options(None, policy, args.termination_log, args.stall_timeout_seconds, adapters,
                       args.max_lora_rank, cache_root)
    if not args.source or not args.model_id:
        raise UsageError("--source and --model-id are required (or --adapters)")
    if not _MODEL_ID.match(args.model_id):
        raise UsageError(f"--model-id {args.model_id!r} is not OWNER/NAME")
    if args.revision is not None and (args.revision.strip() in ("", ".", "..") or "\0" in args.revision):
        # The revision becomes a directory name on the cache volume; "." or ".." would leave the model's.
        raise UsageError(f"--revision {args.revision!r} is not a branch, tag or commit")
    if args.endpoint and not re.match(r"^https?://[^/\s]+", args.endpoint):
        raise UsageError(f"--endpoint {args.endpoint!r} is not an http(s) URL")
    request = Request(
        source=args.source,
        model_id=args.model_id,
        revision=args.revision or DEFAULT_REVISION[args.source],
        cache_root=cache_root,
        endpoint=args.endpoint.rstrip("/") if args.endpoint else None,
        token=env.token(),
    )
    return Options(request, policy, args.termination_log, args.stall_timeout_seconds, cache_root=cache_root)


def _claim_stdout() -> IO[str]:
    """Keep stdout for our JSON lines only; anything the clients print goes to stderr instead."""
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return events


def write_termination_log(path: str, message: str) -> None:
    target = path if os.path.exists(path) else os.path.dirname(path) or "."
    if not os.access(target, os.W_OK):
        log.warning("termination log %s is not writable; message: %s", path, message)
        return
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"download failed: {message}\n")


def _termination_log_arg(argv: Sequence[str]) -> str:
    # Usage errors happen before parsing succeeds, yet still belong in the termination log.
    for i, arg in enumerate(argv):
        if arg == "--termination-log" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--termination-log="):
            return arg.split("=", 1)[1]
    return DEFAULT_TERMINATION_LOG


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # huggingface_hub's HTTP library logs every request at INFO; our progress events say more, once a second.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    writer = EventWriter(_claim_stdout())
    termination_log = _termination_log_arg(argv)
    cache_root = CACHE_ROOT
    try:
        options = parse(argv)
        termination_log, cache_root = options.termination_log, options.cache_root
        env.prepare(cache_root)
        from gemma_operator.download.runner import run

        if options.request is None:
            run_adapters(list(options.adapters), options.max_lora_rank, writer, options.policy, options.stall_timeout)
        else:
            run(options.request, writer, options.policy, options.stall_timeout)
    except DownloadError as error:
        return _fail(error, writer, termination_log)
    except OSError as err:
        classified = cache_error(err, cache_root)
        if classified is None:
            raise
        return _fail(classified, writer, termination_log)
    return EXIT_OK


def _fail(error: DownloadError, writer: EventWriter, termination_log: str) -> int:
    log.error("download failed: %s", error.message)
    writer.emit("failed", reason=error.reason.value, message=error.message)
    write_termination_log(termination_log, error.message)
    return error.exit_code
