"""Who may take the leader Lease (gemma_operator.leader.LeaseObserver): judged on the local clock, from
when this replica saw the Lease change, never from the holder's renewTime (nodes' clocks differ)."""

from __future__ import annotations

from gemma_operator.leader import LeaseObserver


def lease(holder: str, renew_time: str, version: str, duration: int = 15) -> dict:
    return {"metadata": {"resourceVersion": version},
            "spec": {"holderIdentity": holder, "renewTime": renew_time, "leaseDurationSeconds": duration}}


def test_a_lease_that_keeps_being_renewed_is_held_however_old_its_renew_time_looks() -> None:
    # The holder's clock is an hour behind: its renewTime always looks expired to a naive comparison.
    observer = LeaseObserver()
    for i in range(10):
        assert not observer.free(lease("op-a", f"2026-12-03T11:00:{i * 5:02d}.000000Z", str(100 + i)), now=i * 5.0)


def test_a_lease_not_renewed_for_its_duration_since_it_was_seen_is_free() -> None:
    observer = LeaseObserver()
    held = lease("op-a", "2026-12-03T12:00:00.000000Z", "7")
    assert not observer.free(held, now=1000.0)
    assert not observer.free(held, now=1015.0)  # exactly the duration: not yet
    assert observer.free(held, now=1015.5)


def test_a_standby_that_just_started_waits_a_full_duration() -> None:
    # A renewTime far in the past says nothing on its own: the holder may run on a clock that is behind.
    observer = LeaseObserver()
    stale = lease("op-a", "2020-01-01T00:00:00.000000Z", "7")
    assert not observer.free(stale, now=5.0)
    assert observer.free(stale, now=20.1)


def test_a_released_lease_is_free_at_once() -> None:
    # What LeaderElector.release leaves: no holder.
    assert LeaseObserver().free(lease("", "2026-12-03T12:00:00.000000Z", "8", duration=1), now=0.0)
    assert LeaseObserver().free({"spec": {}}, now=0.0)
