"""API keys at the gateway, from Secrets: which caller may use which model.

A key Secret is labelled `gemma.ai/gateway-key=true` and holds `key` (the key) and, optionally, `models`
(comma-separated model names; absent or "*": every model). Keys are compared by SHA-256 digest in
constant time; the key's text is never kept, logged or put in an answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from ..kinds import Manifest

KEY_LABEL = "gemma.ai/gateway-key"
KEY_SELECTOR = f"{KEY_LABEL}=true"
ALL_MODELS = "*"


@dataclass(frozen=True)
class Grant:
    secret: str  # namespace/name: what a log line may say about a caller
    models: frozenset[str]  # {"*"}: every model

    def allows(self, model: str) -> bool:
        return ALL_MODELS in self.models or model in self.models


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _decoded(secret: Manifest, field: str) -> str | None:
    raw = (secret.get("data") or {}).get(field)
    if raw is None:
        return (secret.get("stringData") or {}).get(field)
    try:
        return base64.b64decode(raw, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        return None


def grants_of(secrets: Iterable[Manifest]) -> dict[bytes, Grant]:
    """key digest -> grant. A Secret without a usable key is skipped (it grants nothing)."""
    grants: dict[bytes, Grant] = {}
    for secret in secrets:
        key = _decoded(secret, "key")
        if not key:
            continue
        meta = secret.get("metadata") or {}
        models_text = _decoded(secret, "models") or ALL_MODELS
        models = frozenset(m.strip() for m in models_text.split(",") if m.strip()) or frozenset({ALL_MODELS})
        grants[_digest(key)] = Grant(f"{meta.get('namespace')}/{meta.get('name')}", models)
    return grants


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def grant_for(grants: dict[bytes, Grant], key: str) -> Grant | None:
    digest = _digest(key)
    found = None
    for known, grant in grants.items():  # every digest compared: the time says nothing about which matched
        if hmac.compare_digest(known, digest):
            found = grant
    return found
