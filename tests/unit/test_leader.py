"""Who may take the leader Lease: judged from the Lease alone (gemma_operator.leader.expired)."""

from __future__ import annotations

import datetime

from gemma_operator.leader import expired

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC)


def lease(holder: str | None, renewed_seconds_ago: float | None, duration: int = 15) -> dict:
    spec: dict = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed_seconds_ago is not None:
        renewed = NOW - datetime.timedelta(seconds=renewed_seconds_ago)
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": spec}


def test_a_lease_renewed_within_its_duration_is_held() -> None:
    assert not expired(lease("op-a", 14), NOW)


def test_a_lease_not_renewed_within_its_duration_is_free() -> None:
    assert expired(lease("op-a", 16), NOW)


def test_a_released_lease_is_free_at_once() -> None:
    # What LeaderElector.release leaves: no holder, renewed just now.
    assert expired(lease("", 0, duration=1), NOW)
    assert expired(lease(None, 0), NOW)


def test_a_lease_never_renewed_is_free() -> None:
    assert expired(lease("op-a", None), NOW)
