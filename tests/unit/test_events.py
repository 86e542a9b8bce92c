"""The Recorder correlates repeated events like client-go: one Event whose count grows (issue 12)."""

from __future__ import annotations

import asyncio
from typing import Any

from gemma_operator import events
from gemma_operator.kube import ApiError

Manifest = dict[str, Any]


class FakeEventsClient:
    """Stands in for KubeClient: create and the generic request (merge patch) on Events, in memory."""

    def __init__(self) -> None:
        self.events: dict[str, Manifest] = {}
        self.calls: list[tuple[str, str]] = []

    async def create(self, kind: str, namespace: str | None, body: Manifest) -> Manifest:
        assert kind == "Event"
        self.calls.append(("create", body["metadata"]["name"]))
        self.events[body["metadata"]["name"]] = dict(body)
        return dict(body)

    async def _request(self, verb: str, method: str, path: str, resource: str, *, body: Any = None,
                       content_type: str = "application/json", params: Any = None) -> Any:
        assert (verb, method, resource, content_type) == ("patch", "PATCH", "events", "application/merge-patch+json")
        name = path.rsplit("/", 1)[-1]
        assert path == f"/api/v1/namespaces/ml/events/{name}"
        self.calls.append(("patch", name))
        if name not in self.events:
            raise ApiError(404, "NotFound", f'events "{name}" not found')
        self.events[name] |= body
        return self.events[name]


def gd_body(name: str = "gemma", uid: str = "uid-1", rv: str = "1") -> Manifest:
    return {"metadata": {"name": name, "namespace": "ml", "uid": uid, "resourceVersion": rv}}


def emit(recorder: events.Recorder, body: Manifest, reason: str = "PodsUnschedulable", message: str = "0/1 ready",
         type_: str = "Warning") -> None:
    asyncio.run(recorder.emit(body, type_, reason, message))


def test_a_repeated_event_is_one_event_whose_count_grows() -> None:
    client = FakeEventsClient()
    recorder = events.Recorder(client)  # type: ignore[arg-type]
    for rv in ("1", "2", "3"):  # the object changes between the repeats; its resourceVersion is not in the key
        emit(recorder, gd_body(rv=rv))
    assert [c[0] for c in client.calls] == ["create", "patch", "patch"]
    (event,) = client.events.values()
    assert event["count"] == 3 and event["reason"] == "PodsUnschedulable"
    assert event["firstTimestamp"] <= event["lastTimestamp"]


def test_other_reason_message_type_or_object_is_another_event() -> None:
    client = FakeEventsClient()
    recorder = events.Recorder(client)  # type: ignore[arg-type]
    emit(recorder, gd_body())
    emit(recorder, gd_body(), reason="Recovered", type_="Normal")
    emit(recorder, gd_body(), message="1/2 ready")
    emit(recorder, gd_body(), type_="Normal")
    emit(recorder, gd_body(name="other", uid="uid-2"))
    emit(recorder, gd_body(uid="uid-3"))  # a new object of the same name
    assert [c[0] for c in client.calls] == ["create"] * 6
    assert all(e["count"] == 1 for e in client.events.values())


def test_an_expired_event_is_written_anew() -> None:
    client = FakeEventsClient()
    recorder = events.Recorder(client)  # type: ignore[arg-type]
    emit(recorder, gd_body())
    client.events.clear()  # the API server's event TTL
    emit(recorder, gd_body())
    emit(recorder, gd_body())
    assert [c[0] for c in client.calls] == ["create", "patch", "create", "patch"]
    (event,) = client.events.values()
    assert event["count"] == 2


def test_the_cache_of_written_events_is_bounded() -> None:
    client = FakeEventsClient()
    recorder = events.Recorder(client, max_cached=2)  # type: ignore[arg-type]
    for message in ("a", "b", "c"):
        emit(recorder, gd_body(), message=message)
    emit(recorder, gd_body(), message="c")  # recent: correlated
    emit(recorder, gd_body(), message="a")  # pushed out of the cache: a new Event
    assert [c[0] for c in client.calls] == ["create", "create", "create", "patch", "create"]


def test_a_failed_write_does_not_fail_the_pass() -> None:
    class Refusing(FakeEventsClient):
        async def create(self, kind: str, namespace: str | None, body: Manifest) -> Manifest:
            raise ApiError(403, "Forbidden", "events is forbidden")

    emit(events.Recorder(Refusing()), gd_body())  # type: ignore[arg-type]
