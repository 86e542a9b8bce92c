"""One downloader per model revision on a volume.

Two downloaders of one revision (a Job's pod and its replacement after a lost node, two GemmaDeployments
sharing an existingClaim, a ReadWriteMany volume) would otherwise resume, verify and delete each other's
partial files: hf_resume.py appends to any partial file it finds, and verification deletes a file that
does not match yet. The clients' own per-file locks do not cover our steps around them.

flock(2) is released by the kernel when its holder dies, even by SIGKILL, so a dead downloader never
leaves the revision locked; on NFS the kernel maps it to a POSIX lock the server keeps.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

from gemma_operator.download.env import client_home
from gemma_operator.download.progress import EventWriter
from gemma_operator.download.request import Request
from gemma_operator.paths import adapter_dir, model_dir

log = logging.getLogger(__name__)


def lock_path(request: Request) -> str:
    # Under .hub-clients, not in the model directory: the servers read that directory, and a lock file
    # there would also outlive the manifest's list of files.
    root = os.path.join(client_home(request.cache_root), "locks")
    where = adapter_dir if request.adapter else model_dir
    return where(request.source, request.model_id, request.revision, root=root) + ".lock"


@contextlib.contextmanager
def revision_lock(request: Request, writer: EventWriter) -> Iterator[None]:
    """Hold the revision's exclusive lock; wait for it, saying so, when another downloader has it."""
    path = lock_path(request)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Read-only is enough for flock, and lets a pod of another uid lock a file the first pod created.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = (f"another downloader is downloading {request.model_id} (revision {request.revision}) "
                       f"into this volume; waiting for its lock {path}")
            log.info("%s", message)
            writer.emit("waiting", reason="Locked", message=message)
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("got the lock %s", path)
        yield
    finally:
        os.close(fd)
