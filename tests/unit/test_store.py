"""The operator's watch cache (gemma_operator.store): newest version wins, children found by instance label."""

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


def test_older_version_is_ignored_and_updates_keep_their_place() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 5))
    s.upsert("Pod", pod("b", "x", "server", 6))
    s.upsert("Pod", pod("a", "x", "server", 4))  # a late watch event after our own write's response
    assert s.get("Pod", "ns", "a")["metadata"]["resourceVersion"] == "5"
    s.upsert("Pod", pod("a", "x", "server", 7))
    assert names(s.children("Pod", "ns", "x")) == ["a", "b"]


def test_relabelled_and_removed_objects_leave_the_index() -> None:
    s = Store()
    s.upsert("Pod", pod("a", "x", "server", 1))
    s.upsert("Pod", pod("a", "y", "server", 2))
    assert s.children("Pod", "ns", "x") == [] and names(s.children("Pod", "ns", "y")) == ["a"]
    s.remove("Pod", pod("a", "y", "server", 3, uid="someone-else"))  # a namesake's deletion: kept
    assert names(s.children("Pod", "ns", "y")) == ["a"]
    s.remove("Pod", pod("a", "y", "server", 3))
    assert s.children("Pod", "ns", "y") == [] and s.get("Pod", "ns", "a") is None and s.count("Pod") == 0
