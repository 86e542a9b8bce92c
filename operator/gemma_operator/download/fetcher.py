"""One fetch attempt in a child process, killed when it stalls.

The clients' HTTP reads can block for as long as a hub holds a connection open, and a thread blocked in
a read cannot be stopped; an abandoned thread would also keep writing into the partial files while the
next attempt writes them too. A child process can be killed: SIGKILL leaves its partial files behind
exactly as a preempted pod does, and the next attempt resumes them (both clients' resume paths cover
that case). The child is spawned, not forked, because the parent runs threads (the progress reporter).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection

from gemma_operator.download.errors import DownloadError, Reason, describe
from gemma_operator.download.listing import Listing
from gemma_operator.download.request import Request, Source
from gemma_operator.download.stall import StallWatch

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_EXIT_GRACE_SECONDS = 30.0
# Longer than one read timeout of either client (10 s), which they retry on their own without a failure.
_GAVE_UP_SILENCE_SECONDS = 10.0
# One reply per attempt: None when the fetch finished, else (reason, message) of the classified failure.
_Reply = tuple[str, str] | None


def fetch_watched(request: Request, source: Source, listing: Listing, stall_timeout: float) -> None:
    """`source.fetch(listing)` in a child; raise DownloadStalled when no byte arrives for `stall_timeout`."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(source, listing, sender, os.getpid()), name="fetch")
    child.start()
    sender.close()  # the child holds the only writer: its death is EOF here
    watch = StallWatch(request.model_dir, listing, stall_timeout)
    try:
        try:
            reply = _wait(receiver, watch, request, poll=min(1.0, stall_timeout / 4))
            child.join(_EXIT_GRACE_SECONDS)  # it answered: let it exit on its own
        finally:
            # A stalled child is killed at once: its partial files are what the next attempt resumes.
            if child.is_alive():
                child.kill()
            child.join()
            receiver.close()
    except _NoReply:
        raise _died(source, child.exitcode) from None
    if reply is not None:
        raise _as_stall(DownloadError(Reason(reply[0]), reply[1]), watch, request)


class _NoReply(Exception):
    """The child died without a word (killed from outside, out of memory)."""


def _wait(receiver: Connection, watch: StallWatch, request: Request, poll: float) -> _Reply:
    while not receiver.poll(poll):
        stalled = watch.stalled()
        if stalled is not None:
            log.warning("%s; stopping this attempt", stalled)
            raise describe(Reason.DOWNLOAD_STALLED, source=request.source, model_id=request.model_id,
                           revision=request.revision, detail=stalled)
    try:
        reply: _Reply = receiver.recv()
    except EOFError:
        raise _NoReply() from None
    return reply


def _as_stall(error: DownloadError, watch: StallWatch, request: Request) -> DownloadError:
    """A client whose own read timeouts and reconnects all went unanswered gives up with a network error
    (Hugging Face's after about 6 x 10 s, before the default stall timeout). When no byte had come for a
    while before, that is a stall too, and the reason and message say so and where."""
    silent = watch.since_growth()
    if error.permanent or error.reason is Reason.DOWNLOAD_STALLED or silent < _GAVE_UP_SILENCE_SECONDS:
        return error
    return describe(Reason.DOWNLOAD_STALLED, source=request.source, model_id=request.model_id,
                    revision=request.revision, detail=f"{watch.message(round(silent))}; the client gave up: {error}")


def _died(source: Source, exitcode: int | None) -> DownloadError:
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
    return source.classify(RuntimeError(f"the fetch process ended with {how} without a result"))


def _child(source: Source, listing: Listing, reply: Connection, parent: int) -> None:
    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        source.fetch(listing)
    except DownloadError as error:
        reply.send((error.reason.value, error.message))
    except Exception as exc:  # noqa: BLE001 - classified here: client exceptions need not pickle
        classified = source.classify(exc)
        reply.send((classified.reason.value, classified.message))
    else:
        reply.send(None)


def _die_with_parent(parent: int) -> None:
    """A SIGKILLed downloader must not leave an orphan writing into the volume without the model lock."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
