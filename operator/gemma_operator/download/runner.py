"""One download run: skip if complete, list, fetch with progress, verify, write the manifest."""

from __future__ import annotations

import logging
import os

from gemma_operator.download import verify as v
from gemma_operator.download.errors import DownloadError, Reason, describe
from gemma_operator.download.fetcher import fetch_watched
from gemma_operator.download.listing import Listing
from gemma_operator.download.lock import revision_lock
from gemma_operator.download.progress import EventWriter, ProgressReporter
from gemma_operator.download.request import Request, Source
from gemma_operator.download.retry import RetryPolicy, with_retries
from gemma_operator.download.stall import DEFAULT_STALL_TIMEOUT_SECONDS

log = logging.getLogger(__name__)


def make_source(request: Request) -> Source:
    # Imported here: the client modules must load only after env.prepare() has pinned their homes.
    if request.source == "modelscope":
        from gemma_operator.download.modelscope_source import ModelScopeSource

        return ModelScopeSource(request)
    from gemma_operator.download.huggingface_source import HuggingFaceSource

    return HuggingFaceSource(request)


def already_complete(request: Request, writer: EventWriter, locked: bool = True) -> bool:
    """True (and the `done` event) when the manifest vouches for the directory. Only the holder of the
    revision lock removes a manifest that does not: another downloader may be about to write it."""
    manifest = v.read_manifest(request.manifest_path)
    if manifest is None or not v.manifest_is_complete(
            manifest, request.model_dir, request.source, request.model_id, request.revision):
        # A manifest must only ever vouch for a complete directory; an unreadable or outdated one goes.
        if locked and os.path.lexists(request.manifest_path):
            os.remove(request.manifest_path)
        return False
    total = int(manifest.get("totalBytes", 0))
    log.info("%s (%s, revision %s) is already complete in %s; nothing to download",
             request.model_id, request.source, request.revision, request.model_dir)
    writer.emit("done", bytesDone=total, bytesTotal=total, percent=100.0, alreadyComplete=True)
    return True


def run(request: Request, writer: EventWriter, policy: RetryPolicy,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT_SECONDS) -> None:
    """Download `request` or raise a classified DownloadError."""
    # A complete revision needs neither the lock nor a writable volume.
    if already_complete(request, writer, locked=False):
        return
    with revision_lock(request, writer):
        # Whoever held the lock before may have completed the revision meanwhile.
        if already_complete(request, writer):
            return
        _download(request, writer, policy, stall_timeout)


def _download(request: Request, writer: EventWriter, policy: RetryPolicy, stall_timeout: float) -> None:
    os.makedirs(request.model_dir, exist_ok=True)
    source = make_source(request)
    listing = with_retries(source.list_files, source.classify, policy)
    _check_shape(request, listing)
    log.info("downloading %d files, %d bytes, of %s from %s into %s", len(listing.files),
             listing.total_bytes, request.model_id, source.name, request.model_dir)
    v.remove_wrong_sized(request.model_dir, listing)
    with ProgressReporter(writer, request.model_dir, listing):
        files = _fetch_verified(request, source, listing, policy, stall_timeout)
    v.write_manifest(request.manifest_path, v.build_manifest(
        request.source, request.model_id, request.revision, listing, files))
    total = listing.total_bytes
    writer.emit("done", bytesDone=total, bytesTotal=total, percent=100.0, alreadyComplete=False,
                files=len(files))


def _check_shape(request: Request, listing: Listing) -> None:
    try:
        v.check_shape(listing, request.adapter)
    except v.VerificationFailed as failure:
        raise _integrity(request, failure) from failure


def _fetch_verified(request: Request, source: Source, listing: Listing, policy: RetryPolicy,
                    stall_timeout: float) -> list[dict[str, object]]:
    """Fetch and verify. A file that fails verification is deleted and fetched once more: a file damaged
    on disk before this run looks current to a client that only checks its size. A hub that keeps
    serving bytes that contradict its own listing is an integrity failure."""
    for chance in (1, 2):
        with_retries(lambda: fetch_watched(request, source, listing, stall_timeout), source.classify, policy)
        try:
            return v.verify(request.model_dir, listing, request.adapter)
        except v.VerificationFailed as failure:
            if chance == 2:
                raise _integrity(request, failure) from failure
            log.warning("verification failed (%s); fetching the damaged file again", failure)
    raise AssertionError("unreachable")


def _integrity(request: Request, failure: v.VerificationFailed) -> DownloadError:
    return describe(Reason.INTEGRITY, source=request.source, model_id=request.model_id,
                    revision=request.revision, detail=str(failure))
