"""One download request: what to fetch, from where, into which directory."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Protocol

from gemma_operator.download.errors import DownloadError
from gemma_operator.download.listing import Listing
from gemma_operator.paths import MANIFEST_NAME, adapter_dir, model_dir


@dataclasses.dataclass(frozen=True)
class Request:
    source: str
    model_id: str
    revision: str
    cache_root: str
    endpoint: str | None = None
    # Never logged and never printed: repr is disabled so a stray log of the request cannot leak it.
    token: str | None = dataclasses.field(default=None, repr=False)
    # A LoRA adapter (spec.adapters) rather than a model: its own directory, its own shape check.
    adapter: bool = False

    @property
    def model_dir(self) -> str:
        """The directory of this revision on the volume (an adapter's under <root>/adapters)."""
        where = adapter_dir if self.adapter else model_dir
        return where(self.source, self.model_id, self.revision, root=self.cache_root)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.model_dir, MANIFEST_NAME)


class Source(Protocol):
    """A hub client adapter: list the revision, fetch it into the model dir, name its failures."""

    name: str

    def list_files(self) -> Listing: ...

    def fetch(self, listing: Listing) -> None: ...

    def classify(self, exc: BaseException) -> DownloadError: ...


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it was raised from: clients wrap their HTTP errors in their own types."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
