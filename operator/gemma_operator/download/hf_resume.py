"""Byte-level resume for Hugging Face downloads, which huggingface_hub does not do across processes.

huggingface_hub (>= 1.18) streams each file into a process-unique "<hash>.<etag>.<id>.incomplete" under
<local_dir>/.cache/huggingface/download and deletes it on failure. After a SIGKILL (a preempted pod) the
partial file stays behind but no later run ever reuses it, so every kill would cost the whole file again.
Before the client runs, this module finishes such partial files with the client's own `http_get` (a Range
request from the partial size), checks them against the hub's sha256 and moves them into place with the
client's download metadata, so the client then sees them as done.

The downloader holds the revision's lock (lock.py) around this, so a leftover partial file belongs to a
dead process, not to a concurrent one. tests/download/test_client_contract.py checks the naming against the
installed client.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from gemma_operator.download.listing import Listing, RepoFile

log = logging.getLogger(__name__)


def resume_partials(model_dir: str, listing: Listing, repo_id: str, endpoint: str | None,
                    token: str | bool) -> None:
    assert listing.commit is not None
    for entry in listing.files:
        partials = _partials(Path(model_dir), entry)
        if not partials:
            continue
        best, *stale = sorted(partials, key=lambda p: p.stat().st_size, reverse=True)
        for path in stale:
            path.unlink(missing_ok=True)
        if entry.sha256 is None or not 0 < best.stat().st_size < entry.size:
            # Without a published sha256 a resumed file could not be checked; small git files are cheap.
            best.unlink(missing_ok=True)
            continue
        _finish(Path(model_dir), entry, best, repo_id, listing.commit, endpoint, token)


def _partials(local_dir: Path, entry: RepoFile) -> list[Path]:
    from huggingface_hub._local_folder import get_local_download_paths

    etag = entry.sha256 or entry.git_oid
    if etag is None or (local_dir / entry.path).is_file():
        return []
    pattern = get_local_download_paths(local_dir, entry.path).incomplete_path(etag)
    # pattern is "<hash>.<etag>.incomplete"; the client inserts a random id before ".incomplete".
    return sorted(pattern.parent.glob(f"{pattern.with_suffix('').name}.*.incomplete"))


def _finish(local_dir: Path, entry: RepoFile, partial: Path, repo_id: str, commit: str,
            endpoint: str | None, token: str | bool) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub._local_folder import get_local_download_paths, write_download_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils._headers import build_hf_headers

    done = partial.stat().st_size
    log.info("resuming %s from byte %d of %d", entry.path, done, entry.size)
    url = hf_hub_url(repo_id, entry.path, revision=commit, endpoint=endpoint)
    headers = build_hf_headers(token=token)
    headers["Accept-Encoding"] = "identity"  # a compressed body would not continue the raw bytes on disk
    with partial.open("ab") as fh:
        http_get(url, fh, resume_size=done, headers=headers, expected_size=entry.size)
    if _sha256(partial) != entry.sha256:
        log.warning("resumed %s does not match the hub's sha256; it will be fetched again", entry.path)
        partial.unlink(missing_ok=True)
        return
    target = get_local_download_paths(local_dir, entry.path).file_path
    os.replace(partial, target)
    assert entry.sha256 is not None
    # The etag of an LFS file is its sha256; with this metadata the client takes the file as current.
    write_download_metadata(local_dir=local_dir, filename=entry.path, commit_hash=commit, etag=entry.sha256)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()
