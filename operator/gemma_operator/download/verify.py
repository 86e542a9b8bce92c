"""Verification of a downloaded revision against the hub's listing, and the manifest that records it."""

from __future__ import annotations

import concurrent.futures
import datetime
import hashlib
import json
import os
from typing import Any

from gemma_operator.download.listing import Listing, RepoFile, is_weight_file

_BLOCK = 4 * 1024 * 1024


class VerificationFailed(Exception):
    """The directory is not the listed revision; the message says which file and how."""


def file_digests(path: str, size: int, with_git_oid: bool) -> tuple[str, str]:
    """sha256 of the content and, if asked, the git blob sha1 (what Hugging Face lists for non-LFS
    files), in one read."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode()) if with_git_oid else None
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            sha256.update(block)
            if git is not None:
                git.update(block)
    return sha256.hexdigest(), git.hexdigest() if git is not None else ""


ADAPTER_CONFIG = "adapter_config.json"


def check_shape(listing: Listing, adapter: bool = False) -> None:
    """A revision vLLM can serve has a config.json (a LoRA adapter: adapter_config.json, PEFT's format) and at
    least one weight file."""
    paths = listing.paths()
    config = ADAPTER_CONFIG if adapter else "config.json"
    if config not in paths:
        raise VerificationFailed(f"the repository has no {config}" + (" (not a PEFT LoRA adapter)" if adapter else ""))
    if not any(is_weight_file(p) for p in paths):
        raise VerificationFailed("the repository has no weight files (*.safetensors, *.bin, ...)")


def verify_file(model_dir: str, entry: RepoFile) -> str:
    """Check one file's presence, size and published digests; return its sha256."""
    path = os.path.join(model_dir, *entry.path.split("/"))
    if not os.path.isfile(path):
        raise VerificationFailed(f"{entry.path} is missing")
    size = os.path.getsize(path)
    problem = None
    sha256 = git_oid = ""
    if size != entry.size:
        problem = f"{entry.path} has {size} bytes, the hub lists {entry.size}"
    else:
        sha256, git_oid = file_digests(path, size, entry.git_oid is not None)
        if entry.sha256 and sha256 != entry.sha256.lower():
            problem = f"{entry.path} sha256 {sha256[:12]}... differs from the hub's {entry.sha256[:12]}..."
        elif entry.git_oid and git_oid != entry.git_oid.lower():
            problem = f"{entry.path} git blob id differs from the hub's"
    if problem:
        # Removed so that the Job's next attempt fetches it again instead of trusting it.
        os.remove(path)
        raise VerificationFailed(problem)
    return sha256


def remove_wrong_sized(model_dir: str, listing: Listing) -> None:
    """Delete listed files whose size is wrong: Hugging Face's client keeps a local file whose metadata
    says it is current without looking at it, so a truncated file would otherwise never be repaired."""
    for entry in listing.files:
        path = os.path.join(model_dir, *entry.path.split("/"))
        if os.path.isfile(path) and os.path.getsize(path) != entry.size:
            os.remove(path)


def verify(model_dir: str, listing: Listing, adapter: bool = False) -> list[dict[str, Any]]:
    """Verify every listed file; return the manifest's file records."""
    check_shape(listing, adapter)
    entries = sorted(listing.files, key=lambda f: f.path)
    # hashlib releases the GIL on large blocks: hashing the shards side by side uses every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda f: verify_file(model_dir, f), entries))
    return [{"path": f.path, "size": f.size, "sha256": d} for f, d in zip(entries, digests, strict=True)]


def build_manifest(source: str, model_id: str, revision: str, listing: Listing,
                   files: list[dict[str, Any]]) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "source": source,
        "modelId": model_id,
        "revision": revision,
        "files": files,
        "totalBytes": sum(int(f["size"]) for f in files),
        "completedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if listing.commit:
        manifest["commit"] = listing.commit
    return manifest


def write_manifest(path: str, manifest: dict[str, Any]) -> None:
    # Written to a temporary name and renamed: a reader sees no manifest or a whole one, never half.
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def manifest_is_complete(manifest: dict[str, Any], model_dir: str, source: str, model_id: str,
                         revision: str) -> bool:
    """True when the manifest is for this model and revision and every file it lists is on disk at size.

    Sizes, not hashes, are rechecked: the files were hashed when the manifest was written, and a rerun
    must be quick. A truncated or deleted file still sends the run back to the hub.
    """
    if (manifest.get("source"), manifest.get("modelId"), manifest.get("revision")) != (source, model_id, revision):
        return False
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        return False
    for record in files:
        path = os.path.join(model_dir, *str(record.get("path", "")).split("/"))
        if not os.path.isfile(path) or os.path.getsize(path) != record.get("size"):
            return False
    return True
