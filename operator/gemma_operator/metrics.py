"""Prometheus metrics of the operator process, served on /metrics beside /healthz."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "gemma_operator_reconciles_total", "Reconcile passes, by resource kind and result.", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "gemma_operator_reconcile_duration_seconds", "Duration of one reconcile pass.", ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter(
    "gemma_operator_api_requests_total", "Requests the operator's client sent to the API server.", ["verb", "resource"]
)
QUEUE_DEPTH = Gauge("gemma_operator_queue_depth", "GemmaDeployments waiting for a reconcile pass.")
MANAGED = Gauge("gemma_operator_managed_resources", "GemmaDeployments the operator knows of.")
IS_LEADER = Gauge("gemma_operator_leader", "1 when this replica holds the leader Lease and acts.")
WATCH_EVENTS = Counter(
    "gemma_operator_watch_objects_total",
    "Objects the operator's lists and watches received, by kind and event type (LISTED: in a list).",
    ["kind", "type"],
)
CACHED = Gauge("gemma_operator_cached_objects", "Objects in the operator's watch cache, by kind.", ["kind"])
