"""Prometheus metrics of the gateway, per model (served on --http-port /metrics).

The model label takes only names the routing table knows: a request for an unknown model counts under
"-", so that callers cannot grow the label set without bound.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN = "-"

REQUESTS = Counter("gemma_gateway_requests_total",
                   "Requests answered by the gateway, by model and HTTP status.", ["model", "code"])
ERRORS = Counter("gemma_gateway_errors_total",
                 "Requests the gateway answered with its own error, by model and error code "
                 "(missing_api_key, model_not_found, model_not_ready, upstream_failed ...).", ["model", "error"])
UPSTREAM_FAILURES = Counter("gemma_gateway_upstream_failures_total",
                            "Replicas that refused a connection or broke off mid-answer (each is ejected).",
                            ["model", "stage"])
CLIENT_GONE = Counter("gemma_gateway_client_disconnects_total",
                      "Answers cut short because the client left (the replica stays in rotation).", ["model"])
IN_FLIGHT = Gauge("gemma_gateway_in_flight_requests", "Requests being forwarded now, by model.", ["model"])
ADDED_SECONDS = Histogram(
    "gemma_gateway_added_latency_seconds",
    "Time the gateway adds to the first token's way: reading and checking the request, picking a replica "
    "and sending it, plus passing the replica's first bytes on to the client (the server's own time excluded).",
    ["model"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)
