"""The operator's watch cache (gemma_operator.store): the watch's order wins (resourceVersions are never
ordered), our own write is held until the watch catches up, a list replaces the cache, children by label."""

from __future__ import annotations

from typing import Any

from gemma_operator.store import Store


def pod(name: str, instance: str, component: str, rv: int, ns: str = "ns", uid: str = "") -> dict[str, Any]:
    return {"metadata": {
        "name": name, "namespace": ns, "resourceVersion": str(rv), "uid": uid or f"uid-{name}",
        "labels": {"app.kubernetes.io/instance": instance, "app.kubernetes.io/component": component},
    }}


def names(objs: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_children_by_instance_and_component() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 1))
    s.upsert("Pod", pod("b", "x", "download", 1))
    s.upsert("Pod", pod("c", "y", "server", 1))
    s.upsert("Pod", pod("d", "x", "server", 1, ns="other"))
    assert names(s.children("Pod", "ns", "x")) == ["a", "b"]
    assert names(s.children("Pod", "ns", "x", "server")) == ["a"]
    assert names(s.children("Pod", "other", "x")) == ["d"]
    assert s.children("Pod", "ns", "nobody") == [] and s.children("Job", "ns", "x") == []


def test_the_watch_order_wins_and_updates_keep_their_place() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 5))
    s.upsert("Pod", pod("b", "x", "server", 6))
    # resourceVersions are opaque: a later event wins even when its version reads as a smaller number.
    s.upsert("Pod", pod("a", "x", "server", 40))
    s.upsert("Pod", pod("a", "x", "server", 7))
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "7"
    assert names(s.children("Pod", "ns", "x")) == ["a", "b"]


def test_our_write_is_held_until_the_watch_delivers_it() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 5))
    s.record_write("Pod", pod("a", "x", "server", 9))  # the API server's answer to our apply
    s.upsert("Pod", pod("a", "x", "server", 8))  # an event from before the write, still in flight
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "9"
    s.upsert("Pod", pod("a", "x", "server", 9))  # the watch caught up
    s.upsert("Pod", pod("a", "x", "server", 10))  # someone else's change after ours
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "10"


def test_an_answer_the_watch_was_quicker_than_does_not_undo_a_newer_event() -> None:
    """Under load the watch can deliver our write (9) and a controller's change after it (10) before the
    worker that sent the write gets its answer (9): the answer must not put 9 back over 10, or the cache
    says "not ready" until the next event, which may never come (the benchmark found a GemmaDeployment
    stuck in Starting that way)."""
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 5))
    s.upsert("Pod", pod("a", "x", "server", 9))  # our write, seen by the watch
    s.upsert("Pod", pod("a", "x", "server", 10))  # the deployment controller's status update
    s.record_write("Pod", pod("a", "x", "server", 9))  # the answer to our write arrives only now
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "10"
    s.upsert("Pod", pod("a", "x", "server", 11))  # nothing held back: the next event is taken
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "11"


def test_a_no_op_write_holds_nothing() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 5))
    s.record_write("Pod", pod("a", "x", "server", 5))  # an apply that changed nothing makes no event
    s.upsert("Pod", pod("a", "x", "server", 6))
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "6"


def test_a_hold_ends_after_a_while(monkeypatch: Any) -> None:
    import gemma_operator.store as store

    s = Store()
    s.record_write("Pod", pod("a", "x", "server", 9))
    clock = [store.time.monotonic() + store.WRITE_HOLD_SECONDS + 1]
    monkeypatch.setattr(store.time, "monotonic", lambda: clock[0])
    s.upsert("Pod", pod("a", "x", "server", 12))  # the event of our write was never seen
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "12"


def test_a_list_replaces_the_cache_of_its_scope() -> None:
    s = Store()
    for name, ns in (("a", "ns"), ("b", "ns"), ("c", "other")):
        s.upsert("Pod", pod(name, "x", "server", 1, ns=ns))
    s.record_write("Pod", pod("b", "x", "server", 9))
    gone = s.replace("Pod", "ns", [pod("b", "x", "server", 3), pod("d", "x", "server", 3)])
    assert names(gone) == ["a"]  # deleted while the watch was away: no ghost
    assert names(s.children("Pod", "ns", "x")) == ["b", "d"] and names(s.children("Pod", "other", "x")) == ["c"]
    assert s.get("Pod", "ns", "b")["metadata"]["resourceVersion"] == "3"  # the list is newer than the write
    s.upsert("Pod", pod("b", "x", "server", 4))
    assert s.get("Pod", "ns", "b")["metadata"]["resourceVersion"] == "4"  # and holds nothing back
    assert sorted(names(s.replace("Pod", None, []))) == ["b", "c", "d"] and s.count("Pod") == 0


def test_relabelled_and_removed_objects_leave_the_index() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 1))
    s.upsert("Pod", pod("a", "y", "server", 2))
    assert s.children("Pod", "ns", "x") == [] and names(s.children("Pod", "ns", "y")) == ["a"]
    s.remove("Pod", pod("a", "y", "server", 3, uid="someone-else"))  # a namesake's deletion: kept
    assert names(s.children("Pod", "ns", "y")) == ["a"]
    s.remove("Pod", pod("a", "y", "server", 3))
    assert s.children("Pod", "ns", "y") == [] and s.get("Pod", "ns", "a") is None and s.count("Pod") == 0


def test_the_cache_keeps_no_managed_fields_or_last_applied_copy() -> None:
    s = Store()
    obj = pod("a", "x", "server", 5)
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    obj["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}
    s.upsert("Pod", obj)
    cached = s.get("Pod", "ns", "a")["metadata"]
    assert "managedFields" not in cached and cached["annotations"] == {"keep": "me"}
