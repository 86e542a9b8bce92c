"""What the scale benchmark measures with: a watch recorder with one clock, process CPU and memory from
/proc, the API server's audit log and the operator's /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gemma_operator.status import rollout_done

from bench.kubeapi import ApiError, Client

log = logging.getLogger("bench")
Manifest = dict[str, Any]
CLK_TCK = os.sysconf("SC_CLK_TCK")
OPERATOR_AGENTS = ("gemma-operator", "kopf")
DRIVER_AGENT = "gemma-bench-driver"


# ------------------------------------------------------------------ watch recorder


def max_model_len(dep: Manifest) -> int | None:
    containers = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    args = list(containers[0].get("args") or []) if containers else []
    if "--max-model-len" in args and args.index("--max-model-len") + 1 < len(args):
        return int(args[args.index("--max-model-len") + 1])
    return None


def fact_of(kind: str, obj: Manifest) -> tuple[Any, ...]:
    """The few fields the benchmark times; an event is recorded only when these change."""
    if kind == "GemmaDeployment":
        st = obj.get("status") or {}
        return (int(obj["metadata"].get("generation") or 0), int(st.get("observedGeneration") or 0), st.get("phase"))
    if kind == "Deployment":
        replicas = int((obj.get("spec") or {}).get("replicas") or 0)
        return (max_model_len(obj), rollout_done(obj, replicas))
    return ("exists",)


class Recorder:
    """Watches GemmaDeployments, Deployments and Services of one namespace, or of several (then one watch of
    all namespaces, kept to those), and keeps, per object, the times (time.time() at receipt) at which its
    fact changed. One process, one clock, for operator and floor. Names are unique across the namespaces."""

    KINDS = ("GemmaDeployment", "Deployment", "Service")

    def __init__(self, client: Client, namespace: str | list[str]) -> None:
        self.client = client
        many = isinstance(namespace, list) and len(namespace) > 1
        self.namespace: str | None = None if many else (namespace[0] if isinstance(namespace, list) else namespace)
        self.namespaces = set(namespace) if isinstance(namespace, list) else {namespace}
        self.timeline: dict[str, dict[str, list[tuple[float, tuple[Any, ...]]]]] = {k: {} for k in self.KINDS}
        self.latest: dict[str, dict[str, tuple[Any, ...]]] = {k: {} for k in self.KINDS}
        self._tasks: list[asyncio.Task[None]] = []
        self.events = 0

    def _record(self, kind: str, obj: Manifest, t: float) -> None:
        if obj["metadata"].get("namespace") not in self.namespaces:
            return
        name = obj["metadata"]["name"]
        fact = fact_of(kind, obj)
        if self.latest[kind].get(name) != fact:
            self.latest[kind][name] = fact
            self.timeline[kind].setdefault(name, []).append((t, fact))

    async def start(self) -> None:
        for kind in self.KINDS:
            listing = await self.client.list(kind, self.namespace)
            for obj in listing.get("items") or []:
                self._record(kind, obj, time.time())
            rv = listing["metadata"]["resourceVersion"]
            self._tasks.append(asyncio.create_task(self._watch(kind, rv), name=f"watch-{kind}"))
        await asyncio.sleep(0.5)  # let the watches connect

    async def _watch(self, kind: str, rv: str) -> None:
        for _attempt in range(1000):  # bounded: a watch lasts up to 30 min, reconnects are rare
            try:
                async for event in self.client.watch(kind, self.namespace, rv):
                    t = time.time()
                    obj = event.get("object") or {}
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.events += 1
                        self._record(kind, obj, t)
                    elif event.get("type") == "ERROR":
                        # 410 Gone: relist (the recorder only ever adds facts, so nothing is lost but time)
                        listing = await self.client.list(kind, self.namespace)
                        for item in listing.get("items") or []:
                            self._record(kind, item, time.time())
                        rv = listing["metadata"]["resourceVersion"]
                        break
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a broken watch is re-established
                log.warning("watch of %s broke: %s", kind, err)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def count(self, kind: str, pred: Callable[[tuple[Any, ...]], bool]) -> int:
        return sum(1 for fact in self.latest[kind].values() if pred(fact))

    async def wait(self, what: str, done: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        last_log = 0.0
        while time.monotonic() < deadline:
            if done():
                return True
            if time.monotonic() - last_log > 15:
                last_log = time.monotonic()
                log.info("  waiting for %s ...", what)
            await asyncio.sleep(0.1)
        log.warning("timed out after %.0fs waiting for %s", timeout, what)
        return False

    def first(self, kind: str, name: str, pred: Callable[[tuple[Any, ...]], bool], after: float = 0.0) -> float | None:
        for t, fact in self.timeline[kind].get(name, []):
            if t >= after and pred(fact):
                return t
        return None


# ------------------------------------------------------------------ statistics


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def summary(values: list[float]) -> dict[str, float | int | None]:
    r = _round
    return {
        "count": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
    }


# ------------------------------------------------------------------ processes


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def memory_mb(pid: int) -> dict[str, float]:
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return {"peak_rss_mb": round(found.get("VmHWM", 0.0), 1), "rss_mb": round(found.get("VmRSS", 0.0), 1)}


def control_plane_pids(cluster_dir: Path) -> dict[str, int]:
    pids = {}
    for pid_file in sorted((cluster_dir / "kwok" / "clusters" / "gemma" / "pids").glob("*.pid")):
        try:
            pids[pid_file.stem] = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
    return pids


# ------------------------------------------------------------------ audit log


def audit_offset(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def actor_of(user_agent: str) -> str:
    if user_agent.startswith(OPERATOR_AGENTS):
        return "operator"
    if user_agent.startswith(DRIVER_AGENT):
        return "driver"
    return "controllers"


def audit_writes(path: Path | None, start: int, end: int, namespace: str) -> dict[str, Counter[str]]:
    """Write requests in `namespace` (or in every namespace whose name starts with it, when it ends with "-")
    between two offsets of the audit log, by actor and by "verb resource[/subresource]"."""
    found: dict[str, Counter[str]] = {"operator": Counter(), "driver": Counter(), "controllers": Counter()}
    if path is None or end == start:
        return found
    if end < start:  # the log was truncated or replaced meanwhile: what is left of the window is from 0
        found["controllers"]["(audit log was reset during this phase: counts incomplete)"] = 1
        start = 0
    prefix = namespace.endswith("-")
    needle = f'"namespace":"{namespace}' + ("" if prefix else '"')
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "replace")
        if needle not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        ref = event.get("objectRef") or {}
        ns = ref.get("namespace") or ""
        if not (ns.startswith(namespace) if prefix else ns == namespace):
            continue
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found[actor_of(event.get("userAgent") or "")][f"{event.get('verb')} {resource}"] += 1
    return found


# ------------------------------------------------------------------ operator /metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{a=x,b=y}": value} for the gemma_operator_* series."""
    samples = {}
    for line in text.splitlines():
        if not line.startswith("gemma_operator_"):
            continue
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        labels = ",".join(f"{k}={v}" for k, v in sorted(_LABEL.findall(m.group(2) or "")))
        samples[m.group(1) + ("{" + labels + "}" if labels else "")] = float(m.group(3))
    return samples


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items() if v - before.get(k, 0.0)}


def api_requests(delta: dict[str, float]) -> dict[str, int]:
    """gemma_operator_api_requests_total deltas as {"verb resource": count}."""
    found = {}
    for key, value in delta.items():
        if key.startswith("gemma_operator_api_requests_total{"):
            labels = dict(part.split("=", 1) for part in key[key.index("{") + 1:-1].split(","))
            found[f"{labels.get('verb')} {labels.get('resource')}"] = int(value)
    return dict(sorted(found.items()))


_APISERVER = re.compile(r'^apiserver_request_duration_seconds_(sum|count)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def apiserver_latency_samples(text: str) -> dict[str, float]:
    """kube-apiserver's request duration sums and counts by "VERB resource[/sub]" (all clients)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = _APISERVER.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(2)))
        key = f"{labels.get('verb')} {labels.get('resource')}" + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        found[f"{m.group(1)}|{key}"] = found.get(f"{m.group(1)}|{key}", 0.0) + float(m.group(3))
    return found


def apiserver_means(before: dict[str, float], after: dict[str, float], min_count: int = 5) -> dict[str, Any]:
    out = {}
    for key, total in after.items():
        if not key.startswith("sum|"):
            continue
        name = key[4:]
        count = after.get("count|" + name, 0) - before.get("count|" + name, 0)
        if count >= min_count and name.split(" ", 1)[1].split("/")[0] in (
                "services", "deployments", "gemmadeployments", "pods", "events", "replicasets", "endpointslices"):
            out[name] = {"count": int(count), "mean_ms": round(1000 * (total - before.get(key, 0)) / count, 1)}
    return dict(sorted(out.items()))


def mean_ms(delta: dict[str, float], histogram: str) -> dict[str, float]:
    """Mean of a histogram's observations over a phase, by "verb resource" (or "all" without labels)."""
    found = {}
    for key, total in delta.items():
        if not key.startswith(histogram + "_sum"):
            continue
        labels = key[len(histogram + "_sum"):]
        count = delta.get(histogram + "_count" + labels)
        if count:
            parts = dict(p.split("=", 1) for p in labels.strip("{}").split(",")) if labels else {}
            name = f"{parts.get('verb')} {parts.get('resource')}" if "verb" in parts else "all"
            found[name] = round(1000 * total / count, 1)
    return dict(sorted(found.items()))


async def swallow(coro: Any) -> Any:
    try:
        return await coro
    except (ApiError, OSError) as err:
        log.warning("%s", err)
        return None
