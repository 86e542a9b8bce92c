"""Failure kinds of a download, their exit status and their one-line message."""

from __future__ import annotations

import enum
import errno
import os

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PERMANENT = 3
EXIT_TRANSIENT = 4
# A LoRA adapter whose rank is larger than the servers' --max-lora-rank: the operator names it in the status.
EXIT_ADAPTER_RANK = 5


class Reason(str, enum.Enum):
    """Machine-readable cause, carried in the `failed` progress event."""

    USAGE = "InvalidArguments"
    MODEL_NOT_FOUND = "ModelNotFound"
    REVISION_NOT_FOUND = "RevisionNotFound"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    EMPTY_REPOSITORY = "EmptyRepository"
    INTEGRITY = "IntegrityError"
    HUB_UNAVAILABLE = "HubUnavailable"
    # No byte reached the volume for the stall timeout: transient, the next attempt resumes.
    DOWNLOAD_STALLED = "DownloadStalled"
    CACHE_NOT_WRITABLE = "CacheNotWritable"
    CACHE_FULL = "CacheFull"
    # An adapter (spec.adapters[i]) the servers could not load: its rank is above spec.adapterSettings.maxRank.
    ADAPTER_RANK = "AdapterRankTooLarge"


# Permanent causes end the Job at once: retrying cannot fix a wrong model id or a missing token.
_PERMANENT = {
    Reason.MODEL_NOT_FOUND,
    Reason.REVISION_NOT_FOUND,
    Reason.UNAUTHORIZED,
    Reason.FORBIDDEN,
    Reason.EMPTY_REPOSITORY,
    Reason.INTEGRITY,
    # A volume that the pod's user may not write, or that is full, stays so until the spec changes.
    Reason.CACHE_NOT_WRITABLE,
    Reason.CACHE_FULL,
    Reason.ADAPTER_RANK,
}


class DownloadError(Exception):
    """A classified failure: `message` is the single human line for the termination log."""

    def __init__(self, reason: Reason, message: str) -> None:
        # One line only: the kubelet shows the termination message verbatim in the pod status.
        super().__init__(" ".join(message.split()))
        self.reason = reason

    @property
    def message(self) -> str:
        return str(self)

    @property
    def permanent(self) -> bool:
        return self.reason in _PERMANENT

    @property
    def exit_code(self) -> int:
        if self.reason is Reason.USAGE:
            return EXIT_USAGE
        if self.reason is Reason.ADAPTER_RANK:
            return EXIT_ADAPTER_RANK
        return EXIT_PERMANENT if self.permanent else EXIT_TRANSIENT


class UsageError(DownloadError):
    def __init__(self, message: str) -> None:
        super().__init__(Reason.USAGE, f"invalid arguments: {message}")


def describe(reason: Reason, *, source: str, model_id: str, revision: str, detail: str = "") -> DownloadError:
    """The error for `reason`, worded so that the model id, the source and the cause are all named."""
    texts = {
        Reason.MODEL_NOT_FOUND: f"model {model_id} not found on {source} (revision {revision})",
        Reason.REVISION_NOT_FOUND: f"revision {revision} of model {model_id} not found on {source}",
        Reason.UNAUTHORIZED: f"model {model_id} on {source} needs a valid hub token (HTTP 401); "
        "check spec.model.tokenSecretRef",
        Reason.FORBIDDEN: f"access to model {model_id} on {source} is forbidden (HTTP 403); "
        "accept the model's license or use a token with access",
        Reason.EMPTY_REPOSITORY: f"{source} listed no files for model {model_id} (revision {revision})",
        Reason.INTEGRITY: f"model {model_id} from {source} (revision {revision}) failed verification",
        Reason.HUB_UNAVAILABLE: f"{source} hub unavailable for model {model_id} (revision {revision})",
        Reason.DOWNLOAD_STALLED: f"download of model {model_id} from {source} (revision {revision}) stalled",
    }
    text = texts[reason]
    return DownloadError(reason, f"{text}: {detail}" if detail else text)


_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL = {errno.ENOSPC, errno.EDQUOT}


def cache_error(err: OSError, cache_root: str) -> DownloadError | None:
    """The classified error for a cache volume the download cannot write, or None for other OS errors."""
    where = err.filename or cache_root
    if err.errno in _NOT_WRITABLE:
        return DownloadError(Reason.CACHE_NOT_WRITABLE, (
            f"cannot write the model cache volume at {where}: {err.strerror}; the volume must be writable by "
            f"the download pod's user (uid {os.getuid()}, which the volume's owner, mode or fsGroup support must allow)"))
    if err.errno in _FULL:
        return DownloadError(Reason.CACHE_FULL, (
            f"the model cache volume is full ({err.strerror} writing {where}); raise spec.cache.size "
            "or free the volume"))
    return None
