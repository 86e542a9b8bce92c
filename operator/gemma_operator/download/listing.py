"""What the hub says a revision contains: the reference for progress totals and for verification."""

from __future__ import annotations

import dataclasses
import posixpath

# Weight formats vLLM can load; a model directory without one of them is not a model.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclasses.dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    # The content's sha256 when the hub publishes it (ModelScope: every file; Hugging Face: LFS files).
    sha256: str | None = None
    # Hugging Face's git blob id of a non-LFS file: a sha1 over "blob <size>\0" + content.
    git_oid: str | None = None


@dataclasses.dataclass(frozen=True)
class Listing:
    files: tuple[RepoFile, ...]
    # The immutable commit the revision resolved to, when the hub tells (Hugging Face).
    commit: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def paths(self) -> set[str]:
        return {f.path for f in self.files}


def is_weight_file(path: str) -> bool:
    return posixpath.basename(path).endswith(WEIGHT_SUFFIXES)
