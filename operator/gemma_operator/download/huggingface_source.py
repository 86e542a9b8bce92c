"""Hugging Face through its own client (huggingface_hub's HfApi and snapshot_download)."""

from __future__ import annotations

from gemma_operator.download.errors import DownloadError, Reason, describe
from gemma_operator.download.hf_resume import resume_partials
from gemma_operator.download.listing import Listing, RepoFile
from gemma_operator.download.request import Request, causes, short

NAME = "huggingface"
# huggingface_hub streams HTTP downloads in 10 MiB chunks and writes nothing to disk before a chunk is
# complete: a dropped connection or a killed pod loses up to 10 MiB per file and progress moves in 10 MiB
# steps. 1 MiB (what ModelScope's client uses) bounds both.
HTTP_CHUNK_BYTES = 1024 * 1024


class HuggingFaceSource:
    name = NAME

    def __init__(self, request: Request) -> None:
        self._req = request
        # False, not None: with None the client would fall back to a token file or HF_TOKEN.
        self._token: str | bool = request.token or False

    def list_files(self) -> Listing:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile as HfRepoFile

        api = HfApi(endpoint=self._req.endpoint, token=self._token)
        # Resolve the branch or tag once: the files are then fetched from that immutable commit, so a
        # push during the download cannot mix two revisions in one directory.
        commit = api.model_info(self._req.model_id, revision=self._req.revision).sha
        if not commit:
            raise self._error(Reason.HUB_UNAVAILABLE, "the hub did not name the revision's commit")
        entries = api.list_repo_tree(self._req.model_id, recursive=True, revision=commit)
        files = tuple(_repo_file(e) for e in entries if isinstance(e, HfRepoFile))
        if not files:
            raise self._error(Reason.EMPTY_REPOSITORY, "the hub listed an empty tree")
        return Listing(files, commit=commit)

    def fetch(self, listing: Listing) -> None:
        from huggingface_hub import constants, snapshot_download

        if hasattr(constants, "DOWNLOAD_CHUNK_SIZE"):
            constants.DOWNLOAD_CHUNK_SIZE = HTTP_CHUNK_BYTES
        assert listing.commit is not None  # list_files always resolves it
        resume_partials(self._req.model_dir, listing, self._req.model_id, self._req.endpoint, self._token)
        # local_dir keeps files and partials (.cache/huggingface/download/*.incomplete) in the model's
        # directory on the cache volume.
        snapshot_download(
            self._req.model_id,
            revision=listing.commit,
            local_dir=self._req.model_dir,
            endpoint=self._req.endpoint,
            token=self._token,
        )

    def classify(self, exc: BaseException) -> DownloadError:
        for cause in causes(exc):
            if isinstance(cause, DownloadError):
                return cause
            verdict = self._classify_one(cause)
            if verdict is not None:
                return verdict
        return self._error(Reason.HUB_UNAVAILABLE, short(exc))

    def _classify_one(self, exc: BaseException) -> DownloadError | None:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, RemoteEntryNotFoundError):
            return self._error(Reason.INTEGRITY, "a file of the hub's own listing is missing on the hub")
        if isinstance(exc, RevisionNotFoundError):
            return self._error(Reason.REVISION_NOT_FOUND)
        if isinstance(exc, GatedRepoError):
            return self._error(Reason.FORBIDDEN, "the model is gated")
        if isinstance(exc, RepositoryNotFoundError):
            # The hub answers 401 both for a missing repository and for a private one without a token.
            hint = "or it is private or gated and needs a token" if _status(exc) == 401 else ""
            return self._error(Reason.MODEL_NOT_FOUND, hint)
        if isinstance(exc, HfHubHTTPError):
            status = _status(exc)
            if status == 401:
                return self._error(Reason.UNAUTHORIZED)
            if status == 403:
                return self._error(Reason.FORBIDDEN)
            if status == 404:
                return self._error(Reason.MODEL_NOT_FOUND)
        return None

    def _error(self, reason: Reason, detail: str = "") -> DownloadError:
        return describe(reason, source=NAME, model_id=self._req.model_id, revision=self._req.revision,
                        detail=detail)


def _repo_file(entry: object) -> RepoFile:
    from huggingface_hub.hf_api import RepoFile as HfRepoFile

    assert isinstance(entry, HfRepoFile)
    if entry.lfs is not None:
        return RepoFile(entry.path, entry.size, sha256=entry.lfs.sha256)
    return RepoFile(entry.path, entry.size, git_oid=entry.blob_id)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None
