"""LoRA adapters (spec.adapters): each downloaded like a model, into its own directory, then its rank checked.

The operator's adapters Job passes them as one JSON list (builders.adapter_requests). An adapter is a hub
repository like a model, so the same runner lists, fetches, verifies and records it; only its shape differs
(adapter_config.json, PEFT's format, instead of config.json). vLLM needs every served adapter's rank to be
at most its --max-lora-rank and finds out only at start, in a crash loop on every replica: the rank is known
once adapter_config.json is on the volume, so it is checked here and a larger one fails the Job with
EXIT_ADAPTER_RANK, the entry's field and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

from gemma_operator.download.errors import DownloadError, Reason, UsageError
from gemma_operator.download.progress import EventWriter
from gemma_operator.download.request import Request
from gemma_operator.download.retry import RetryPolicy
from gemma_operator.download.verify import ADAPTER_CONFIG

_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
SOURCES = ("modelscope", "huggingface")


@dataclasses.dataclass(frozen=True)
class Adapter:
    field: str  # e.g. "spec.adapters[0]": named in every message about it
    name: str
    request: Request

    @property
    def label(self) -> str:
        return f"{self.field} ({self.name}, {self.request.model_id}@{self.request.revision} from {self.request.source})"


def parse(text: str, cache_root: str, token: str | None) -> list[Adapter]:
    """The --adapters JSON list; a malformed entry is a usage error."""
    try:
        entries = json.loads(text)
    except ValueError as err:
        raise UsageError(f"--adapters is not JSON: {err}") from None
    if not isinstance(entries, list) or not entries:
        raise UsageError("--adapters must be a non-empty JSON list")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsageError(f"--adapters[{i}] is not an object")
        field = str(entry.get("field") or f"adapters[{i}]")
        source, model_id, revision = entry.get("source"), entry.get("id"), entry.get("revision")
        if source not in SOURCES:
            raise UsageError(f"{field}: source {source!r} is not one of {', '.join(SOURCES)}")
        if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
            raise UsageError(f"{field}: id {model_id!r} is not OWNER/NAME")
        if not isinstance(revision, str) or revision.strip() in ("", ".", "..") or "\0" in revision:
            raise UsageError(f"{field}: revision {revision!r} is not a branch, tag or commit")
        endpoint = entry.get("endpoint") or None
        if endpoint is not None and not re.match(r"^https?://[^/\s]+", str(endpoint)):
            raise UsageError(f"{field}: endpoint {endpoint!r} is not an http(s) URL")
        request = Request(source=source, model_id=model_id, revision=revision, cache_root=cache_root,
                          endpoint=str(endpoint).rstrip("/") if endpoint else None,
                          token=token if entry.get("token") else None, adapter=True)
        out.append(Adapter(field, str(entry.get("name") or model_id), request))
    return out


def adapter_rank(config: dict[str, Any]) -> int:
    """The largest LoRA rank of an adapter_config.json: `r`, or a larger one of `rank_pattern` (PEFT's
    per-module ranks), which vLLM also checks against --max-lora-rank."""
    ranks = [config.get("r")] + list((config.get("rank_pattern") or {}).values())
    return max(int(r) for r in ranks if isinstance(r, int | float) and not isinstance(r, bool))


def check_rank(adapter: Adapter, max_rank: int) -> int:
    """The adapter's rank; DownloadError(ADAPTER_RANK) when the servers could not load it."""
    path = os.path.join(adapter.request.model_dir, ADAPTER_CONFIG)
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
        rank = adapter_rank(config)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise DownloadError(Reason.INTEGRITY, f"{adapter.label}: {ADAPTER_CONFIG} has no LoRA rank r: {err}") from None
    if rank > max_rank:
        raise DownloadError(Reason.ADAPTER_RANK, (
            f"{adapter.label}: LoRA rank {rank} (r in {ADAPTER_CONFIG}) is larger than the servers' "
            f"--max-lora-rank {max_rank} (spec.adapterSettings.maxRank); set spec.adapterSettings.maxRank to "
            f"{next_rank(rank)} or more, or use an adapter of rank {max_rank} or less"))
    return rank


# vLLM's accepted --max-lora-rank values (spec.MAX_LORA_RANKS).
_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def next_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds `rank`."""
    return next((r for r in _RANKS if r >= rank), _RANKS[-1])


def run_all(adapters: list[Adapter], max_rank: int, writer: EventWriter, policy: RetryPolicy,
            stall_timeout: float) -> None:
    """Download every adapter (a complete one is skipped by its manifest), then check its rank."""
    from gemma_operator.download.runner import run

    for adapter in adapters:
        writer.emit("adapter", field=adapter.field, name=adapter.name, adapterId=adapter.request.model_id,
                    revision=adapter.request.revision)
        try:
            run(adapter.request, writer, policy, stall_timeout)
        except DownloadError as err:
            # The model's wording ("model X from Y failed ..."), prefixed with the spec field it came from.
            raise DownloadError(err.reason, f"{adapter.field} ({adapter.name}): {err.message}") from err
        rank = check_rank(adapter, max_rank)
        writer.emit("adapterReady", field=adapter.field, name=adapter.name, rank=rank,
                    path=adapter.request.model_dir)
