"""The routing table, a pure function of what the cluster holds: GemmaDeployments and their server pods in,
served model name -> route out. No I/O: the gateway rebuilds it on every watch event (it is small)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..builders import COMPONENT_LABEL, INSTANCE_LABEL, PORT
from ..kinds import Manifest

PREFIX_HASH = "PrefixHash"
LEAST_LOADED = "LeastLoaded"
POLICIES = (PREFIX_HASH, LEAST_LOADED)


@dataclass(frozen=True)
class Backend:
    """One ready server pod."""
    pod: str
    url: str  # http://<pod IP>:8000


@dataclass(frozen=True)
class ServerKey:
    """The Secret key the servers of a GemmaDeployment want (spec.apiKeySecretRef); the gateway sends it."""
    namespace: str
    name: str
    key: str


@dataclass(frozen=True)
class Route:
    model: str  # the name a request asks for: the served model name or an adapter's
    namespace: str
    deployment: str  # the GemmaDeployment
    backends: tuple[Backend, ...]
    phase: str
    reason: str  # why it is not Ready (a condition's reason), "" when it is
    message: str
    policy: str = PREFIX_HASH
    server_key: ServerKey | None = None
    parent: str | None = None  # an adapter's base model
    created: str = ""

    @property
    def ready(self) -> bool:
        return bool(self.backends)


@dataclass(frozen=True)
class Table:
    routes: dict[str, Route] = field(default_factory=dict)
    # Names asked for by more than one GemmaDeployment: the oldest serves it; the others are listed here.
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _meta(obj: Manifest) -> Manifest:
    return obj.get("metadata") or {}


def pod_ready(pod: Manifest) -> bool:
    """Ready and not going away: a terminating pod takes no new request (its endpoint is leaving too)."""
    status = pod.get("status") or {}
    if _meta(pod).get("deletionTimestamp") or not status.get("podIP") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def backends_by_instance(pods: Iterable[Manifest]) -> dict[tuple[str, str], tuple[Backend, ...]]:
    found: dict[tuple[str, str], list[Backend]] = {}
    for pod in pods:
        labels = _meta(pod).get("labels") or {}
        if labels.get(COMPONENT_LABEL) != "server" or not pod_ready(pod):
            continue
        key = (_meta(pod).get("namespace") or "", labels.get(INSTANCE_LABEL) or "")
        found.setdefault(key, []).append(Backend(_meta(pod)["name"], f"http://{pod['status']['podIP']}:{PORT}"))
    return {k: tuple(sorted(v, key=lambda b: b.pod)) for k, v in found.items()}


def _why_not_ready(status: Manifest) -> tuple[str, str]:
    """The reason and message of the condition that explains the phase: Degraded when it is True (what
    is wrong: PodsUnschedulable, CrashLoopBackOff ...), else the first False one of the others."""
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    degraded = conditions.get("Degraded") or {}
    if degraded.get("status") == "True":
        return str(degraded.get("reason") or ""), str(degraded.get("message") or "")
    for kind in ("ModelReady", "Available", "Progressing"):
        cond = conditions.get(kind)
        if cond and cond.get("status") != "True":
            return str(cond.get("reason") or ""), str(cond.get("message") or "")
    return "", ""


def _phase_text(status: Manifest) -> str:
    phase = str(status.get("phase") or "Pending")
    percent = (status.get("download") or {}).get("percent")
    return f"{phase} {percent}%" if phase == "Downloading" and percent is not None else phase


def routes_of(gemma: Manifest, backends: tuple[Backend, ...]) -> list[Route]:
    meta, spec, status = _meta(gemma), gemma.get("spec") or {}, gemma.get("status") or {}
    served = spec.get("servedModelName") or meta.get("name", "")
    reason, message = ("", "") if backends else _why_not_ready(status)
    key_ref = spec.get("apiKeySecretRef")
    base = Route(
        model=served, namespace=meta.get("namespace") or "", deployment=meta.get("name") or "",
        backends=backends, phase=_phase_text(status), reason=reason, message=message,
        policy=((spec.get("gateway") or {}).get("policy") or PREFIX_HASH),
        server_key=ServerKey(meta.get("namespace") or "", key_ref["name"], key_ref.get("key") or "key")
        if key_ref else None,
        created=meta.get("creationTimestamp") or "",
    )
    adapters = [replace(base, model=a["name"], parent=served)
                for a in spec.get("adapters") or [] if a.get("name")]
    return [base, *adapters]


def routing_table(gemmas: Iterable[Manifest], pods: Iterable[Manifest]) -> Table:
    """Every name a GemmaDeployment serves -> its route. A name two GemmaDeployments claim goes to the
    older one (ties: namespace/name order), so that a new resource cannot take over another's traffic."""
    ready = backends_by_instance(pods)
    routes: dict[str, Route] = {}
    conflicts: dict[str, list[str]] = {}
    ordered = sorted(gemmas, key=lambda g: (_meta(g).get("creationTimestamp") or "",
                                            _meta(g).get("namespace") or "", _meta(g).get("name") or ""))
    for gemma in ordered:
        if _meta(gemma).get("deletionTimestamp"):
            continue
        instance = (_meta(gemma).get("namespace") or "", _meta(gemma).get("name") or "")
        for route in routes_of(gemma, ready.get(instance, ())):
            if route.model in routes:
                conflicts.setdefault(route.model, []).append(f"{route.namespace}/{route.deployment}")
                continue
            routes[route.model] = route
    return Table(routes, {k: tuple(v) for k, v in conflicts.items()})


def static_table(specs: Iterable[str], policy: str = PREFIX_HASH) -> Table:
    """A table from `model=http://host:port[,http://host:port...]` specs, without a cluster: for the
    benchmark (bench/gateway.py) and for trying the gateway against servers started by hand."""
    routes: dict[str, Route] = {}
    for spec in specs:
        model, sep, urls = spec.partition("=")
        if not sep or not model or not urls:
            raise ValueError(f"--static-route {spec!r}: expected model=http://host:port[,http://host:port]")
        backends = tuple(Backend(f"{model}-{i}", url.rstrip("/")) for i, url in enumerate(urls.split(",")))
        routes[model] = Route(model=model, namespace="", deployment=model, backends=backends,
                              phase="Ready", reason="", message="", policy=policy)
    return Table(routes)
