"""Where a model lives on the cache volume: one function shared by the builders and the downloader."""

from __future__ import annotations

import posixpath

CACHE_ROOT = "/models"
# LoRA adapters (spec.adapters) live beside the models, under <root>/adapters/<source>/<owner>--<name>/<revision>.
ADAPTERS_DIR = "adapters"
MANIFEST_NAME = ".gemma-manifest.json"


def _safe(part: str) -> str:
    # A revision may be a branch such as "feature/x"; a path segment may not contain "/".
    return part.replace("/", "--")


def model_dir(source: str, model_id: str, revision: str, root: str = CACHE_ROOT) -> str:
    """The stable directory of one model revision: <root>/<source>/<owner>--<name>/<revision>."""
    return posixpath.join(root, source, _safe(model_id), _safe(revision))


def manifest_path(source: str, model_id: str, revision: str, root: str = CACHE_ROOT) -> str:
    return posixpath.join(model_dir(source, model_id, revision, root), MANIFEST_NAME)


def adapter_dir(source: str, adapter_id: str, revision: str, root: str = CACHE_ROOT) -> str:
    """The directory of one adapter revision: <root>/adapters/<source>/<owner>--<name>/<revision>. Apart from
    the models' so that an adapter repository and a model repository of one id never share a directory."""
    return model_dir(source, adapter_id, revision, posixpath.join(root, ADAPTERS_DIR))
