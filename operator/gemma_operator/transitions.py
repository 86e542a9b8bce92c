"""Which status changes deserve an Event (pure): old status and new status in, events out."""

from __future__ import annotations

from .kinds import Manifest

EventSpec = tuple[str, str, str]  # (type, reason, message)

_MODEL_EVENTS = {
    "Downloading": ("Normal", "DownloadStarted"),
    "DownloadRetrying": ("Warning", "DownloadRetrying"),
    "Downloaded": ("Normal", "DownloadSucceeded"),
    "DownloadFailed": ("Warning", "DownloadFailed"),
    "CacheVolumePending": ("Warning", "CacheVolumePending"),
    "DownloadBlocked": ("Warning", "DownloadBlocked"),
    "AdaptersDownloading": ("Normal", "AdaptersDownloading"),
    "AdapterDownloadFailed": ("Warning", "AdapterDownloadFailed"),
    # The message names spec.adapters[i], its rank and the fix (spec.adapterSettings.maxRank).
    "AdapterRankTooLarge": ("Warning", "AdapterRankTooLarge"),
}


def _condition(status: Manifest, ctype: str) -> Manifest:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def events_between(old: Manifest, new: Manifest) -> list[EventSpec]:
    found: list[EventSpec] = []
    old_model, new_model = _condition(old, "ModelReady"), _condition(new, "ModelReady")
    if new_model.get("reason") != old_model.get("reason") and new_model.get("reason") in _MODEL_EVENTS:
        type_, reason = _MODEL_EVENTS[new_model["reason"]]
        found.append((type_, reason, new_model.get("message", "")))
    old_deg, new_deg = _condition(old, "Degraded"), _condition(new, "Degraded")
    if new_deg.get("status") == "True" and new_deg.get("reason") != old_deg.get("reason") \
            and new_deg.get("reason") not in _MODEL_EVENTS:
        found.append(("Warning", new_deg.get("reason", "Degraded"), new_deg.get("message", "")))
    if new.get("phase") == "Ready" and old.get("phase") != "Ready":
        avail = _condition(new, "Available")
        found.append(("Normal", "ServersReady", avail.get("message") or f"{new.get('ready')} ready"))
    if old.get("phase") == "Degraded" and new.get("phase") != "Degraded" and new.get("phase") != "Failed":
        found.append(("Normal", "Recovered", f"no longer degraded: {new.get('ready')} ready"))
    return found


def merge_patch(old: Manifest, new: Manifest) -> Manifest:
    """A JSON merge patch that turns old into new (keys gone from new become null)."""
    patch: Manifest = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch
