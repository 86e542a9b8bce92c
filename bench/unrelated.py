"""The operator in a cluster full of others' objects (issue 12).

    .venv/bin/python -m bench.unrelated                 # 20 GDs, 5,000 unrelated objects: about 5 minutes
    .venv/bin/python -m bench.unrelated --n 20 --pods 2500 --services 1500 --jobs 1000

The operator watches its children (Pods, Jobs, Deployments, Services, PVCs, ConfigMaps) with the server-side
label selector app.kubernetes.io/managed-by=gemma-operator, so others' objects never reach it. This proves it:
the operator runs for all namespaces (no --namespace) twice, with the same N GemmaDeployments (source pvc, on
the two benchmark-only KWOK nodes of bench.scale), once on the cluster as it is ("without") and once after
5,000 unrelated objects were added in a namespace of their own ("with"): Pods (with a scheduling gate and a
nodeSelector that matches nothing, so no scheduler or kwok works on them; they are still Pods the API server
would send), headless Services without a selector (no ClusterIP, no EndpointSlices) and Jobs with
`suspend: true` (no pods). For each run: the operator's peak RSS (VmHWM) and CPU seconds from /proc, the time
to its caches synced and to all N Ready, and the objects it received by kind from its own /metrics
(gemma_operator_watch_objects_total: LISTED counts the objects in lists; gemma_operator_cached_objects).

Isolation: other tests may run operators of their own, namespaced, on the same cluster. So that an
all-namespaces operator of the benchmark never writes to their GemmaDeployments, it runs as a ServiceAccount
of its own that may read the operator's kinds cluster-wide but write only in the benchmark's namespace (a
RoleBinding there); elsewhere its writes are refused (403) and change nothing.

Result: bench/results/unrelated-<time>.json, and bench/unrelated.md (a section of docs/benchmarks.md, spliced in
between markers; bench/report.py keeps it when it re-renders the page). Everything created is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import measure
from bench.access import READ_ROLE, WRITE_ROLE, meta, operator_kubeconfig, rbac_objects, write_binding
from bench.kubeapi import ApiError, Client, gather_bounded, path_of
from bench.measure import Recorder, log
from bench.report import splice_section
from bench.scale import (
    BENCH_LABEL,
    BENCH_NODES,
    CRD,
    REPO,
    RESULTS,
    Setup,
    bench_node,
    git_revision,
    other_operators,
    run_driver,
)
from tests.support import kube
from tests.support.operator import OperatorProcess

DOC = REPO / "docs" / "benchmarks.md"
SECTION = REPO / "bench" / "unrelated.md"
BEGIN, END = "<!-- bench.unrelated: begin -->", "<!-- bench.unrelated: end -->"
CHILD_KINDS = ("Pod", "Job", "Deployment", "Service", "PersistentVolumeClaim", "ConfigMap")
KINDS = ("GemmaDeployment", *CHILD_KINDS)
OBJECT_EVENTS = ("LISTED", "ADDED", "MODIFIED", "DELETED")  # BOOKMARK and ERROR carry no object
TARGET = 0.10


# ------------------------------------------------------------------ the unrelated objects

UNRELATED_LABELS = {BENCH_LABEL: "true", "app": "unrelated"}
NOWHERE = {"gemma.ai/bench-nowhere": "true"}  # no node has it
POD_SPEC = {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            "automountServiceAccountToken": False, "nodeSelector": NOWHERE}


def unrelated_pod(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"unrelated-{i:05d}", "namespace": ns, "labels": UNRELATED_LABELS},
            "spec": POD_SPEC | {"schedulingGates": [{"name": "gemma.ai/bench-never"}]}}


def unrelated_service(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"unrelated-{i:05d}", "namespace": ns, "labels": UNRELATED_LABELS},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def unrelated_job(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"unrelated-{i:05d}", "namespace": ns, "labels": UNRELATED_LABELS},
            "spec": {"suspend": True, "backoffLimit": 0,
                     "template": {"metadata": {"labels": UNRELATED_LABELS},
                                  "spec": POD_SPEC | {"restartPolicy": "Never"}}}}


async def create_unrelated(ns: str, pods: int, services: int, jobs: int, concurrency: int) -> dict[str, Any]:
    async with Client("gemma-bench-unrelated", limit=concurrency) as client:
        async def create(obj: dict[str, Any]) -> None:
            try:
                await client.request("POST", path_of(obj["kind"], ns), obj)
            except ApiError as err:
                if err.status != 409:
                    raise

        objects = ([unrelated_pod(ns, i) for i in range(pods)] + [unrelated_service(ns, i) for i in range(services)]
                   + [unrelated_job(ns, i) for i in range(jobs)])
        started = time.time()
        await gather_bounded([create(o) for o in objects], concurrency)
        return {"objects": len(objects), "pods": pods, "services": services, "jobs": jobs,
                "seconds": round(time.time() - started, 1)}


async def cluster_counts() -> dict[str, dict[str, int]]:
    """Objects of each watched kind in the whole cluster, and those with the operator's label selector: what
    a list without the selector would return, against what the operator's list asks for."""
    from gemma_operator.kinds import KINDS as OP_KINDS

    out: dict[str, dict[str, int]] = {}
    async with Client("gemma-bench-recorder", limit=4) as client:
        for kind in KINDS:
            counts = {}
            for key, selector in (("all", ""), ("selected", OP_KINDS[kind].label_selector)):
                if key == "selected" and not selector:
                    counts[key] = counts["all"]
                    continue
                total, cont = 0, ""
                while True:
                    params = {"limit": "500"} | ({"labelSelector": selector} if selector else {}) | (
                        {"continue": cont} if cont else {})
                    listing = await client.list(kind, None, params)
                    total += len(listing.get("items") or [])
                    cont = (listing.get("metadata") or {}).get("continue") or ""
                    if not cont:
                        break
                counts[key] = total
            out[kind] = counts
    return out


# ------------------------------------------------------------------ one run of the operator


def received(metrics: dict[str, float]) -> dict[str, dict[str, int]]:
    """gemma_operator_watch_objects_total by kind and type."""
    out: dict[str, dict[str, int]] = {}
    for key, value in metrics.items():
        m = re.fullmatch(r"gemma_operator_watch_objects_total\{kind=([^,]*),type=([^}]*)\}", key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = int(value)
    return out


def cached(metrics: dict[str, float]) -> dict[str, int]:
    out = {}
    for key, value in metrics.items():
        m = re.fullmatch(r"gemma_operator_cached_objects\{kind=([^}]*)\}", key)
        if m:
            out[m.group(1)] = int(value)
    return out


class Shadow:
    """The operator's own lists and watches (all namespaces, the same selectors), made by the benchmark: which
    namespaces the objects the operator receives come from. Other tests running meanwhile show up as
    "other"; an unrelated object that got through would show up as "unrelated"."""

    def __init__(self, client: Client, bench_ns: str, unrelated_ns: str) -> None:
        from gemma_operator.kinds import KINDS as OP_KINDS

        self.client, self.bench_ns, self.unrelated_ns = client, bench_ns, unrelated_ns
        self.selectors = {k: OP_KINDS[k].label_selector for k in KINDS}
        self.counts: dict[str, dict[str, int]] = {k: {"bench": 0, "unrelated": 0, "other": 0} for k in KINDS}
        self._tasks: list[asyncio.Task[None]] = []

    def _count(self, kind: str, obj: dict[str, Any]) -> None:
        ns = (obj.get("metadata") or {}).get("namespace")
        where = "bench" if ns == self.bench_ns else "unrelated" if ns == self.unrelated_ns else "other"
        self.counts[kind][where] += 1

    async def start(self) -> None:
        for kind in KINDS:
            params = {"labelSelector": self.selectors[kind]} if self.selectors[kind] else {}
            listing = await self.client.list(kind, None, params)
            for obj in listing.get("items") or []:
                self._count(kind, obj)
            self._tasks.append(asyncio.create_task(self._watch(kind, listing["metadata"]["resourceVersion"], params)))

    async def _watch(self, kind: str, rv: str, params: dict[str, str]) -> None:
        try:
            async for event in self.client.watch(kind, None, rv, params=params):
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                    self._count(kind, event.get("object") or {})
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - a count, not a test: say so and stop
            log.warning("shadow watch of %s ended: %s", kind, err)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Run:
    def __init__(self, args: argparse.Namespace, cluster: kube.Cluster, setup: Setup, kubeconfig: str,
                 sa_namespace: str, label: str) -> None:
        self.args, self.cluster, self.setup = args, cluster, setup
        self.kubeconfig, self.sa_namespace, self.label = kubeconfig, sa_namespace, label

    async def drive(self, ns: str) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.driver", "create", "--namespace", ns, "--n", str(self.args.n),
               "--concurrency", "32", "--max-model-len", "2048"]
        return await run_driver(self.cluster, cmd)

    async def run(self) -> dict[str, Any]:
        ns = await asyncio.to_thread(self.setup.namespace, f"unrel-{self.label}")
        await asyncio.to_thread(self.cluster.apply, write_binding(ns, self.sa_namespace))
        result: dict[str, Any] = {"label": self.label, "namespace": ns, "loadavg_start": os.getloadavg()}
        log_path = RESULTS / f"operator-{ns}.log"
        op = OperatorProcess(self.kubeconfig, log_path, args=[])  # no --namespace: all namespaces
        try:
            async with Client("gemma-bench-recorder", limit=8) as client:
                rec = Recorder(client, ns)
                await rec.start()
                shadow = Shadow(client, ns, self.args.unrelated_namespace)
                await shadow.start()
                try:
                    t_start = time.time()
                    await asyncio.to_thread(op.start, 60)
                    assert op.proc is not None
                    pid = op.proc.pid
                    synced = await self._synced(op, timeout=120)
                    result["caches_synced_seconds"] = round(synced - t_start, 2) if synced else None
                    await asyncio.sleep(1)
                    m_synced = measure.parse_metrics(op.metrics())
                    result["at_sync"] = {"received": received(m_synced), "cached": cached(m_synced),
                                         "cpu_seconds": measure.cpu_seconds(pid)} | measure.memory_mb(pid)
                    log.info("[%s] caches synced after %ss; %s MB, %s CPU s", self.label,
                             result["caches_synced_seconds"], result["at_sync"]["peak_rss_mb"],
                             result["at_sync"]["cpu_seconds"])
                    t0 = time.time()
                    driver = await self.drive(ns)
                    ok = await rec.wait("all Ready", lambda: rec.count(
                        "GemmaDeployment", lambda f: f[2] == "Ready" and f[1] >= f[0]) >= self.args.n, self.args.timeout)
                    ready = [t for name in rec.timeline["GemmaDeployment"]
                             if (t := rec.first("GemmaDeployment", name, lambda f: f[2] == "Ready" and f[1] >= f[0]))]
                    result["timed_out"] = not ok
                    result["ready_count"] = len(ready)
                    result["all_ready_seconds"] = round(max(ready) - t0, 2) if ready else None
                    result["driver_seconds"] = round(driver["ended"] - driver["started"], 2)
                    log.info("[%s] %d/%d Ready after %ss; quiet window %ss", self.label, len(ready), self.args.n,
                             result["all_ready_seconds"], self.args.idle_seconds)
                    await asyncio.sleep(self.args.idle_seconds)
                    m_end = measure.parse_metrics(op.metrics())
                    result["end"] = {"received": received(m_end), "cached": cached(m_end),
                                     "cpu_seconds": measure.cpu_seconds(pid),
                                     "api_requests": measure.api_requests(m_end),
                                     "seconds_since_start": round(time.time() - t_start, 1)} | measure.memory_mb(pid)
                finally:
                    result["shadow"] = shadow.counts
                    await shadow.stop()
                    await rec.stop()
        finally:
            await asyncio.to_thread(op.stop)
            text = op.log()
            result["operator_log"] = str(log_path.relative_to(REPO))
            result["operator_tracebacks"] = text.count("Traceback")
            result["operator_forbidden_lines"] = text.count("403")
        result["loadavg_end"] = os.getloadavg()
        await asyncio.to_thread(self._delete_namespace, ns)
        return result

    async def _synced(self, op: OperatorProcess, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "caches synced" in op.log():
                return time.time()
            op.assert_running()
            await asyncio.sleep(0.1)
        log.warning("operator did not log 'caches synced' within %ss", timeout)
        return None

    def _delete_namespace(self, ns: str) -> None:
        def gone() -> bool:  # the API server may be restarted by others meanwhile: ask again until it answers
            self.cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)
            try:
                return self.cluster.get("namespace", ns) is None
            except kube.KubectlError:
                return False

        kube.wait_for(gone, timeout=300, interval=2, message=f"namespace {ns} gone")


# ------------------------------------------------------------------ report


def total(received_by_kind: dict[str, dict[str, int]], types: tuple[str, ...] = OBJECT_EVENTS) -> int:
    return sum(v for by_type in received_by_kind.values() for t, v in by_type.items() if t in types)


def change(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    if a == 0:
        return "0%" if b == 0 else "+inf"
    return f"{100 * (b - a) / a:+.1f}%"


def verdict(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return "yes" if abs(b - a) <= TARGET * a else "**no**"


def summary_rows(r: dict[str, Any]) -> list[list[str]]:
    wo, wi = r["runs"]["without"], r["runs"]["with"]

    def row(name: str, a: float | None, b: float | None, target: bool) -> list[str]:
        return [name, measure_fmt(a), measure_fmt(b), change(a, b), verdict(a, b) if target else "(not a target)"]

    return [
        row("operator peak RSS (MB)", wo["end"]["peak_rss_mb"], wi["end"]["peak_rss_mb"], True),
        row("operator CPU (s), whole run (median run)", wo["end"]["cpu_seconds"], wi["end"]["cpu_seconds"], True),
        ["  every run's CPU (s)", each_cpu(r, "without"), each_cpu(r, "with"), "", "(the median counts)"],
        row("objects received (lists + watch events)", total(wo["end"]["received"]), total(wi["end"]["received"]), True),
        row("  of which in the lists at start", total(wo["at_sync"]["received"], ("LISTED",)),
            total(wi["at_sync"]["received"], ("LISTED",)), True),
        row("objects in its cache at the end", sum(wo["end"]["cached"].values()), sum(wi["end"]["cached"].values()), False),
        row("operator CPU (s) until caches synced", wo["at_sync"]["cpu_seconds"], wi["at_sync"]["cpu_seconds"], False),
        row("start until caches synced (s)", wo["caches_synced_seconds"], wi["caches_synced_seconds"], False),
        row(f"apply until all {r['n']} Ready (s)", wo["all_ready_seconds"], wi["all_ready_seconds"], False),
    ]


def each_cpu(r: dict[str, Any], label: str) -> str:
    return ", ".join(measure_fmt(run["end"]["cpu_seconds"]) for run in r["runs"].get(f"{label}_all", [r["runs"][label]]))


def kind_rows(r: dict[str, Any]) -> list[list[str]]:
    wo, wi = r["runs"]["without"], r["runs"]["with"]
    rows = []
    for kind in KINDS:
        def got(run: dict[str, Any], kind: str = kind) -> str:
            by_type = run["end"]["received"].get(kind, {})
            return f"{sum(v for t, v in by_type.items() if t in OBJECT_EVENTS)} ({by_type.get('LISTED', 0)})"

        def origin(run: dict[str, Any], kind: str = kind) -> str:
            c = (run.get("shadow") or {}).get(kind)
            return f"{c['bench']} / {c['unrelated']} / {c['other']}" if c else "-"

        counts = r["cluster_with"].get(kind, {})
        rows.append([kind, got(wo), got(wi), origin(wo), origin(wi), str(wo["end"]["cached"].get(kind, "-")),
                     str(wi["end"]["cached"].get(kind, "-")), str(counts.get("all", "-")), str(counts.get("selected", "-"))])
    return rows


def measure_fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 or v == int(v) else f"{v:.2f}"
    return str(v)


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render_section(r: dict[str, Any]) -> str:
    u = r["unrelated"]
    wo, wi = r["runs"]["without"], r["runs"]["with"]
    targets = [row for row in summary_rows(r) if row[4] in ("yes", "**no**")][:3]
    met = all(row[4] == "yes" for row in targets)
    return "\n".join([
        BEGIN,
        "## Unrelated objects in the cluster (issue 12)",
        "",
        "The operator lists and watches its children with the server-side label selector "
        "`app.kubernetes.io/managed-by=gemma-operator`, so others' objects never reach it. **Target:** with "
        f"{u['objects']:,} unrelated objects in the cluster, the operator's peak RSS, CPU and objects received "
        "are within 10% of the run without them.",
        "",
        "```sh",
        f".venv/bin/python -m bench.unrelated --n {r['n']} --pods {u['pods']} --services {u['services']} "
        f"--jobs {u['jobs']}   # about {max(1, round(r['wall_seconds'] / 60))} minutes",
        "```",
        "",
        f"The operator runs for all namespaces (no `--namespace`) with {r['n']} GemmaDeployments (as in bench.scale: "
        f"`source: pvc`, replicas 1, on the benchmark's KWOK nodes), {len(r['runs'].get('without_all', [wo]))} times "
        "on the cluster as it is, then as many times after "
        f"{u['pods']:,} Pods (scheduling-gated, never scheduled), {u['services']:,} headless Services and "
        f"{u['jobs']:,} suspended Jobs were created in a namespace of their own ({u['seconds']} s to create). "
        f"Each run (after the 1-minute load average fell below {r.get('max_load', 1.0)}): start, caches synced, "
        f"apply the {r['n']}, all Ready, {r['idle_seconds']:.0f} s quiet; figures at the end of the run, of the "
        "run with the median CPU. Objects received are `gemma_operator_watch_objects_total` of the types LISTED, "
        "ADDED, MODIFIED, DELETED (bookmarks left out).",
        "",
        f"Run {r['started']} (commit {r['git']['commit']}{', operator modified' if r['git'].get('operator_dirty') else ''}; "
        f"load average at start {wo['loadavg_start'][0]:.2f} / {wi['loadavg_start'][0]:.2f}).",
        "",
        table(["figure", "without", f"with {u['objects']:,} unrelated", "change", "within 10%"], summary_rows(r)),
        "",
        table(["kind", "received without (in lists)", "received with (in lists)",
               "same selector, by namespace, without: bench / unrelated / other",
               "with: bench / unrelated / other", "cached without", "cached with",
               "in the cluster (with)", "of them selected"], kind_rows(r)),
        "",
        "\"In the cluster\" is what a list of all namespaces without the selector returned during the second run; "
        "\"selected\" what the operator's selector matches (its own children, and those of other tests' "
        "operators running meanwhile).",
        "",
        ("**Result: within the target** on all three." if met else
         "**Result: NOT within the target**: " + "; ".join(f"{row[0]} {row[1]} -> {row[2]} ({row[3]})"
                                                          for row in targets if row[4] != "yes") + "."),
        END,
    ])


def print_tables(r: dict[str, Any]) -> None:
    print(table(["figure", "without", "with", "change", "within 10%"], summary_rows(r)))
    print()
    print(table(["kind", "recv without (lists)", "recv with (lists)", "origin w/o b/u/o", "origin with b/u/o",
                 "cached w/o", "cached with", "cluster", "selected"], kind_rows(r)))


# ------------------------------------------------------------------ main


async def main_async(args: argparse.Namespace) -> None:
    started = time.time()
    os.environ.setdefault("KUBECONFIG", str(kube.LOCAL_KUBECONFIG))  # never `hack/cluster.sh up` from here
    cluster = await asyncio.to_thread(kube.connect)
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    RESULTS.mkdir(parents=True, exist_ok=True)
    setup = Setup(cluster)
    result: dict[str, Any] = {
        "benchmark": "unrelated", "n": args.n, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_revision(), "idle_seconds": args.idle_seconds, "max_load": args.max_load, "host": {"cpus": os.cpu_count()},
        "clusterwide_operators_seen": other_operators(),
    }
    if result["clusterwide_operators_seen"]:
        log.warning("operators watching all namespaces are running: %s", result["clusterwide_operators_seen"])
    unrelated_ns = args.unrelated_namespace
    sa_ns = "gbench-unrelated-operator"
    tmp = Path(tempfile.mkdtemp(prefix="gemma-bench-"))
    try:
        if cluster.get("crd", "gemmadeployments.gemma.ai") is None:
            cluster.kubectl("apply", "--server-side", "-f", str(CRD))
            cluster.kubectl("wait", "--for=condition=Established", "crd/gemmadeployments.gemma.ai", "--timeout=60s")
        await asyncio.to_thread(setup.delete_namespaces, 600)  # leftovers of an interrupted run
        cluster.apply([bench_node(n) for n in BENCH_NODES])
        kube.wait_for(lambda: all(setup._node_ready(n) for n in BENCH_NODES), timeout=60, message="bench nodes Ready")
        for ns in (sa_ns, unrelated_ns):
            cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns)})
        cluster.apply(rbac_objects(sa_ns))
        kubeconfig = operator_kubeconfig(cluster, sa_ns, tmp)
        runs: dict[str, Any] = {}
        result["runs"] = runs
        result["cluster_without"] = await cluster_counts()
        runs["without"] = await repeated_runs(args, cluster, setup, kubeconfig, sa_ns, "without", runs)

        kube.wait_for(lambda: cluster.get("serviceaccount", "default", unrelated_ns), timeout=60,
                      message="ServiceAccount default of the unrelated namespace")
        log.info("creating %d Pods, %d Services, %d Jobs in %s", args.pods, args.services, args.jobs, unrelated_ns)
        result["unrelated"] = await create_unrelated(unrelated_ns, args.pods, args.services, args.jobs, args.concurrency)
        log.info("  created %d objects in %ss; settling %ss", result["unrelated"]["objects"],
                 result["unrelated"]["seconds"], args.settle)
        await asyncio.sleep(args.settle)  # the job controller marks the Jobs suspended
        result["cluster_with"] = await cluster_counts()
        runs["with"] = await repeated_runs(args, cluster, setup, kubeconfig, sa_ns, "with", runs)
        result["wall_seconds"] = round(time.time() - started, 1)

        path = RESULTS / f"unrelated-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        log.info("wrote %s", path.relative_to(REPO))
        print_tables(result)
        if not args.no_doc:
            write_doc(result)
    finally:
        log.info("cleaning up: unrelated objects, benchmark namespaces, RBAC, nodes")
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        await asyncio.to_thread(cleanup, cluster, setup)


async def settled(limit: float, timeout: float) -> tuple[float, float, float]:
    """Wait until the 1-minute load average is below limit (the control plane done with the last run's
    deletions), so that one run's CPU figure does not carry the previous run's work."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        await asyncio.sleep(5)
    return os.getloadavg()


async def repeated_runs(args: argparse.Namespace, cluster: kube.Cluster, setup: Setup, kubeconfig: str,
                        sa_ns: str, label: str, runs: dict[str, Any]) -> dict[str, Any]:
    """args.repeat runs of one configuration; the one with the median whole-run CPU stands for it (CPU
    seconds of a one-second run move by a tenth from run to run), all are kept in runs[label + "_all"]."""
    done: list[dict[str, Any]] = []
    for i in range(args.repeat):
        load = await settled(args.max_load, timeout=180)
        log.info("[%s] run %d/%d, load average %.2f", label, i + 1, args.repeat, load[0])
        done.append(await Run(args, cluster, setup, kubeconfig, sa_ns, f"{label}{i}").run())
    runs[f"{label}_all"] = done
    return sorted(done, key=lambda r: r["end"]["cpu_seconds"])[len(done) // 2]


def write_doc(result: dict[str, Any]) -> None:
    section = render_section(result)
    SECTION.write_text(section + "\n")
    DOC.write_text(splice_section(DOC.read_text(), section, BEGIN, END))
    log.info("wrote %s and its section in %s", SECTION.relative_to(REPO), DOC.relative_to(REPO))


def cleanup(cluster: kube.Cluster, setup: Setup) -> None:
    cluster.kubectl("delete", "clusterrolebinding", READ_ROLE, "--ignore-not-found", check=False)
    cluster.kubectl("delete", "clusterrole", READ_ROLE, WRITE_ROLE, "--ignore-not-found", check=False)
    try:
        setup.delete_namespaces(timeout=600)  # the unrelated objects' namespace and the SA's are labelled too
    finally:
        cluster.kubectl("delete", "node", *BENCH_NODES, "--ignore-not-found", "--wait=false", check=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.unrelated", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="GemmaDeployments (default 20)")
    p.add_argument("--pods", type=int, default=2500)
    p.add_argument("--services", type=int, default=1500)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32, help="creates in flight for the unrelated objects")
    p.add_argument("--idle-seconds", type=float, default=15.0, help="quiet window after all Ready")
    p.add_argument("--settle", type=float, default=20.0, help="seconds after creating the unrelated objects")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for all Ready")
    p.add_argument("--repeat", type=int, default=3, help="runs of each configuration; the median CPU run counts")
    p.add_argument("--max-load", type=float, default=1.0, help="wait for a 1-minute load average below this")
    p.add_argument("--unrelated-namespace", default="gbench-unrelated-objects")
    p.add_argument("--render", metavar="JSON", help="only print the tables and write the section of this result")
    p.add_argument("--no-doc", action="store_true", help="do not write bench/unrelated.md and docs/benchmarks.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        print_tables(result)
        if not args.no_doc:
            write_doc(result)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
