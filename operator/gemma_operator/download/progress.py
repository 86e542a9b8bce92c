"""Progress as JSON lines on stdout, measured from the files growing on disk.

Measuring the disk rather than hooking the clients works the same for both of them, counts the bytes a
resumed download already has, and cannot drift from what is really on the volume.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import IO, Any, Self

from gemma_operator.download.listing import Listing

INTERVAL_SECONDS = 1.0

# Partial files of the clients: ModelScope's "<file>.incomplete" next to the target, Hugging Face's
# "<hash>.<etag>.<id>.incomplete" under .cache/huggingface/download, and ModelScope's ranged parts
# "<file>_<start>_<end>" and "<file>.parallel_tmp" when it splits a large file.
_PARTIAL = re.compile(r"(\.incomplete|\.parallel_tmp|_\d+_\d+)$")


class EventWriter:
    """Writes one JSON object per line and flushes it, so a log reader sees each event at once."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def last_event(log_text: str) -> dict[str, Any] | None:
    """The newest event in a downloader's stdout (e.g. a pod log tail), for readers such as the operator.
    Lines that are not events (a truncated first line of a tail) are skipped."""
    for line in reversed(log_text.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            return event
    return None


def bytes_on_disk(model_dir: str, listing: Listing) -> int:
    """Bytes of the listed files present in `model_dir`, finished or partial."""
    sizes = {f.path: f.size for f in listing.files}
    done = 0
    for root, _dirs, names in os.walk(model_dir):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, model_dir).replace(os.sep, "/")
            try:
                size = os.stat(full).st_size
            except FileNotFoundError:  # renamed from partial to final between listing and stat
                continue
            if rel in sizes:
                done += min(size, sizes[rel])
            elif _PARTIAL.search(name):
                done += size
    return min(done, listing.total_bytes)


def percent(done: int, total: int) -> float:
    return 100.0 if total <= 0 else round(100.0 * done / total, 1)


class ProgressReporter:
    """Emits a `progress` event now and then once per interval until stopped."""

    def __init__(self, writer: EventWriter, model_dir: str, listing: Listing,
                 interval: float = INTERVAL_SECONDS) -> None:
        self._writer = writer
        self._model_dir = model_dir
        self._listing = listing
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.reported = 0

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._emit()
            if self._stop.wait(self._interval):
                return

    def _emit(self) -> None:
        total = self._listing.total_bytes
        # A client may restart a file whose partial copy it rejects; the bytes on disk then shrink for a
        # moment. Users and the operator read progress as "how far along", so it never goes backwards.
        self.reported = max(self.reported, bytes_on_disk(self._model_dir, self._listing))
        self._writer.emit("progress", bytesDone=self.reported, bytesTotal=total,
                          percent=percent(self.reported, total))
