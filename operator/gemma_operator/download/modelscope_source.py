"""ModelScope through its own client (modelscope's snapshot_download, modelscope_hub's HubApi)."""

from __future__ import annotations

from gemma_operator.download.errors import DownloadError, Reason, describe
from gemma_operator.download.listing import Listing, RepoFile
from gemma_operator.download.request import Request, causes, short

NAME = "modelscope"


class ModelScopeSource:
    name = NAME

    def __init__(self, request: Request) -> None:
        self._req = request
        self._endpoint = request.endpoint

    def list_files(self) -> Listing:
        from modelscope_hub import HubApi

        api = HubApi(endpoint=self._endpoint, token=self._req.token)
        if self._endpoint is None:
            # Without a configured endpoint the client picks modelscope.cn or modelscope.ai by probing;
            # pin its choice so that the listing and the files come from the same site.
            self._endpoint = api.resolve_endpoint_for_read(self._req.model_id)
            api = HubApi(endpoint=self._endpoint, token=self._req.token)
        entries = api.list_repo_files(self._req.model_id, "model", revision=self._req.revision, recursive=True)
        files = tuple(RepoFile(e.path, e.size, e.sha256 or None) for e in entries if not e.is_dir and e.path)
        if not files:
            # The hub answers some failures with HTTP 200 and "Success": false; the client then lists
            # nothing and would download nothing "successfully". An empty revision is never a model.
            raise self._error(Reason.EMPTY_REPOSITORY, 'the hub answered without files ("Success": false?)')
        return Listing(files)

    def fetch(self, listing: Listing) -> None:
        # The modelscope package ships no type information; this is the call the seed recipe makes.
        from modelscope.hub.snapshot_download import snapshot_download  # type: ignore[import-untyped]

        # local_dir puts the files, and the client's "<file>.incomplete" partials that let a killed
        # download resume, straight into the model's directory on the cache volume.
        snapshot_download(
            self._req.model_id,
            revision=self._req.revision,
            local_dir=self._req.model_dir,
            endpoint=self._endpoint,
            token=self._req.token,
        )

    def classify(self, exc: BaseException) -> DownloadError:
        from modelscope_hub.errors import FileDownloadError

        for cause in causes(exc):
            if isinstance(cause, DownloadError):
                return cause
            if isinstance(cause, FileDownloadError) and cause.failed_files:
                # The client tries every file before failing; the worst per-file failure decides.
                verdicts = [self.classify(e) for e in cause.failed_files.values()]
                return next((v for v in verdicts if v.permanent), verdicts[0])
            verdict = self._classify_one(cause)
            if verdict is not None:
                return verdict
        return self._error(Reason.HUB_UNAVAILABLE, short(exc))

    def _classify_one(self, exc: BaseException) -> DownloadError | None:
        from modelscope_hub.errors import (
            AuthenticationError,
            FileIntegrityError,
            NotExistError,
            PermissionDeniedError,
        )

        if isinstance(exc, FileIntegrityError):
            return self._error(Reason.INTEGRITY, short(exc))
        if isinstance(exc, NotExistError):
            # One 404 for both; the hub's own message (not the URL, which always names the revision)
            # is the only thing that tells a bad revision apart.
            wrong_revision = "revision" in str(getattr(exc, "message", "")).lower()
            return self._error(Reason.REVISION_NOT_FOUND if wrong_revision else Reason.MODEL_NOT_FOUND)
        if isinstance(exc, AuthenticationError):
            return self._error(Reason.UNAUTHORIZED)
        if isinstance(exc, PermissionDeniedError):
            return self._error(Reason.FORBIDDEN)
        return None

    def _error(self, reason: Reason, detail: str = "") -> DownloadError:
        return describe(reason, source=NAME, model_id=self._req.model_id, revision=self._req.revision,
                        detail=detail)
