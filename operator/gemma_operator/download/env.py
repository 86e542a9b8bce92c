"""The process environment the hub clients see, set before they are imported.

The Job runs with a read-only root filesystem: only the cache volume and TMPDIR are writable. Both clients
default to caches and config files under HOME, so their homes are pinned under the cache root, where their
lock files are also shared by any other downloader of the same volume. Ambient hub tokens are removed so
that the only credential is GEMMA_HUB_TOKEN, which the caller passes explicitly.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TOKEN_ENV = "GEMMA_HUB_TOKEN"
ENDPOINT_ENV = "GEMMA_HUB_ENDPOINT"
HUB_HOME = ".hub-clients"

_AMBIENT_TOKENS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "MODELSCOPE_TOKEN")


def client_home(cache_root: str) -> str:
    return os.path.join(cache_root, HUB_HOME)


def prepare(cache_root: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Point both clients' state at the cache root and quiet them; must run before importing them."""
    home = client_home(cache_root)
    environ["MODELSCOPE_CACHE"] = os.path.join(home, "modelscope")
    # modelscope_hub keeps a session id file under ~/.modelscope even without a login.
    environ["MODELSCOPE_HOME"] = os.path.join(home, "modelscope-home")
    environ["HF_HOME"] = os.path.join(home, "huggingface")
    # The Xet chunk cache defaults to 10 GB under HF_HOME; the model itself is the only copy we want.
    environ["HF_XET_CHUNK_CACHE_SIZE_BYTES"] = "0"
    # The server pods set HF_HUB_OFFLINE=1; a downloader that inherited it would fetch nothing.
    environ["HF_HUB_OFFLINE"] = "0"
    environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    # Progress is reported by us as JSON lines; the clients' tqdm bars would only flood the pod log.
    environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    environ["TQDM_DISABLE"] = "1"
    # Our own retry loop owns listing retries (configurable, with backoff); the client's extra layer
    # would multiply the time a dead hub takes to be reported.
    environ.setdefault("MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS", "1")
    environ.setdefault("MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS", "10")
    for name in _AMBIENT_TOKENS:
        environ.pop(name, None)


def token(environ: MutableMapping[str, str] = os.environ) -> str | None:
    return environ.get(TOKEN_ENV) or None
