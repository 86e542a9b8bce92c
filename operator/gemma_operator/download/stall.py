"""Stall detection: no byte reached the cache volume for too long.

Measured on disk like the progress (see progress.py), so it works the same for both clients and needs no
hook into their HTTP reads. The clients write in 1 MiB pieces, so "no byte" really means "not one 1 MiB
piece": a timeout of T seconds also fails a transfer slower than 1 MiB per T seconds.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

from gemma_operator.download.listing import Listing, RepoFile
from gemma_operator.download.progress import bytes_on_disk

DEFAULT_STALL_TIMEOUT_SECONDS = 600.0
# ModelScope: "<file>.incomplete", "<file>.parallel_tmp" and ranged parts "<file>_<start>_<end>" next to
# the target. Hugging Face: "<hash>.<etag>.<id>.incomplete" under .cache/huggingface/download.
_MS_PARTIAL = re.compile(r"^(?P<path>.+?)(\.incomplete|\.parallel_tmp|_\d+_\d+)$")
# (the random id before ".incomplete" is new in huggingface_hub 1.18; older clients shared one name).
_HF_PARTIAL = re.compile(r"^[^.]+\.(?P<etag>[0-9a-fA-F]+)(\.[0-9a-fA-F]+)?\.incomplete$")
_HF_DOWNLOAD_DIR = os.path.join(".cache", "huggingface", "download")
_NAMED_AT_MOST = 3


class StallWatch:
    """Tells when the bytes on disk last changed. A shrink counts as a change too: a client that discards
    a rejected partial file is working, not stalled."""

    def __init__(self, model_dir: str, listing: Listing, timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._model_dir = model_dir
        self._listing = listing
        self.timeout = timeout
        self._clock = clock
        self._bytes = bytes_on_disk(model_dir, listing)
        self._changed_at = self._grew_at = clock()
        # The files last seen in progress: a client that gives up deletes its partial file first.
        self._partial: list[tuple[RepoFile, int]] = []

    def _sample(self) -> float:
        now = self._clock()
        current = bytes_on_disk(self._model_dir, self._listing)
        if current > self._bytes:
            self._grew_at = now
        if current != self._bytes:
            self._bytes, self._changed_at = current, now
        self._partial = in_progress(self._model_dir, self._listing) or self._partial
        return now

    def stalled(self) -> str | None:
        """None while bytes keep arriving; once none came for the timeout, the message that says where."""
        return self.message(self.timeout) if self._sample() - self._changed_at >= self.timeout else None

    def since_growth(self) -> float:
        """Seconds since a byte last arrived (a deleted partial file is no arrival)."""
        return self._sample() - self._grew_at

    def message(self, seconds: float) -> str:
        return stall_message(seconds, self._partial, self._bytes, self._listing.total_bytes)


def in_progress(model_dir: str, listing: Listing) -> list[tuple[RepoFile, int]]:
    """The listed files that have a partial copy on disk, with the bytes of it, in listing order."""
    by_path = {f.path: f for f in listing.files}
    by_etag = {e.lower(): f for f in listing.files for e in (f.sha256, f.git_oid) if e}
    found: dict[str, int] = {}
    for root, _dirs, names in os.walk(model_dir):
        rel_root = os.path.relpath(root, model_dir)
        for name in names:
            entry = _owner(rel_root, name, by_path, by_etag)
            if entry is None:
                continue
            try:
                size = os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # finished and renamed meanwhile
                continue
            found[entry.path] = found.get(entry.path, 0) + size  # ModelScope's ranged parts add up
    return [(f, min(found[f.path], f.size)) for f in listing.files if f.path in found]


def _owner(rel_root: str, name: str, by_path: dict[str, RepoFile],
           by_etag: dict[str, RepoFile]) -> RepoFile | None:
    if rel_root == _HF_DOWNLOAD_DIR or rel_root.startswith(_HF_DOWNLOAD_DIR + os.sep):
        hf = _HF_PARTIAL.match(name)
        return by_etag.get(hf.group("etag").lower()) if hf else None
    ms = _MS_PARTIAL.match(name)
    if ms is None:
        return None
    rel = ms.group("path") if rel_root == "." else os.path.join(rel_root, ms.group("path"))
    return by_path.get(rel.replace(os.sep, "/"))


def stall_message(timeout: float, partial: list[tuple[RepoFile, int]], done: int, total: int) -> str:
    seconds = f"{timeout:g}s"
    if not partial:
        # Stuck before the first byte of any file (e.g. a request that never answers).
        return f"no byte for {seconds} while downloading ({done} of {total} bytes of the revision on disk)"
    named = ", ".join(f"{f.path} ({have} of {f.size} bytes)" for f, have in partial[:_NAMED_AT_MOST])
    more = f" and {len(partial) - _NAMED_AT_MOST} more files" if len(partial) > _NAMED_AT_MOST else ""
    return f"no byte for {seconds} while downloading {named}{more}"
