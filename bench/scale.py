"""The operator at scale, against the floor the API server sets (issue 8).

    .venv/bin/python -m bench.scale --n 50                 # one N (about 3-5 minutes at N=50)
    .venv/bin/python -m bench.scale --n 50 --n 200 --n 500 # several, one after another
    .venv/bin/python -m bench.report                       # re-render docs/benchmarks.md and the plot

For each N, two scenarios run one after the other on the local control plane, each in a fresh namespace:

* floor: `bench.driver floor` applies N GemmaDeployments and, for each as soon as it exists, server-side
  applies its Deployment and Service exactly as the operator's builders render them; no operator runs.
* operator: the operator process (`python -m gemma_operator --namespace NS`) is started, then
  `bench.driver create` applies the same N GemmaDeployments and the operator does the rest.

Then, in both, a fan-out: maxModelLen changes on all N (the floor applies the new Deployments itself) and the
clock runs until every Deployment has rolled. In the operator scenario a quiet window (--idle-seconds, 60 by
default) between the two counts the operator's writes while nothing changes.

Every GemmaDeployment uses `source: pvc` with a shared existing claim, so its children are a Deployment and a
Service and the run measures the operator, not a hub. Its server pods ask for `bench.gemma.ai/gpu` and
tolerate the taint of two benchmark-only KWOK nodes (created here, deleted at the end), so no other test's
pod lands there and no benchmark pod takes a test's GPU.

Times come from one watch in this process (receipt time of the event); API writes come from the API server's
audit log (by user agent, in the scenario's namespace); the operator's reads from its own /metrics; CPU and
peak RSS from /proc. Results: bench/results/scale-<label>-n<N>-<time>.json, then docs/benchmarks.md and
bench/results/ready-over-time.png are regenerated from all results (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import access, measure, report
from bench.driver import CLAIM, RESOURCE_NAME, TAINT_KEY, gd_name
from bench.kubeapi import ApiError, Client, gather_bounded, path_of
from bench.measure import Recorder, log
from tests.support import kube
from tests.support.operator import OperatorProcess

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CRD = REPO / "crds" / "gemmadeployments.yaml"
BENCH_LABEL = "gemma.ai/bench"
INFRA_LABEL = "gemma.ai/bench-infra"  # namespaces that outlive one scenario: the operator's SA, others' pods
BENCH_NODES = ("bench-node-1", "bench-node-2")
UNRELATED_NODE = "bench-unrelated-node"
UNRELATED_PREFIX = "gbench-others-"
SA_NAMESPACE = "gbench-scale-operator"
FIRST_LEN, SECOND_LEN = 2048, 4096
SERVICE_CIDR = {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                "metadata": {"name": "gemma-bench", "labels": {BENCH_LABEL: "true"}},
                "spec": {"cidrs": ["10.0.16.0/20"]}}


def bench_node(name: str, pods: int = 1000) -> dict[str, Any]:
    capacity = {"cpu": "1000", "memory": "10000Gi", "pods": str(pods), RESOURCE_NAME: "1000"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", BENCH_LABEL: "true"},
        },
        "spec": {"taints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def unrelated_pod(namespace: str, i: int) -> dict[str, Any]:
    """Someone else's running pod: bound to a KWOK node of its own (no scheduler work), which KWOK marks
    Running and Ready once; not labelled as the operator's, so its selectors never match it."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"others-{i:05d}", "namespace": namespace, "labels": {"app": "others"}},
            "spec": {"nodeName": UNRELATED_NODE, "automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                     "tolerations": [{"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]}}


def claim(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "operator_dirty": bool(git("status", "--porcelain", "operator/"))}


# ------------------------------------------------------------------ cluster setup and teardown


class Setup:
    def __init__(self, cluster: kube.Cluster) -> None:
        self.cluster = cluster
        self.operator_kubeconfig: str | None = None
        self.unrelated: dict[str, Any] = {}

    def prepare_scale(self, unrelated_pods: int, directory: Path) -> None:
        """What bench.scale adds to prepare(): the operator's restricted ServiceAccount (it watches all
        namespaces, so that others' pods are in its way) and unrelated_pods running pods of others."""
        c = self.cluster
        self.prepare()
        c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SA_NAMESPACE, "labels": {INFRA_LABEL: "true"}}})
        c.apply(access.rbac_objects(SA_NAMESPACE))
        self.operator_kubeconfig = access.operator_kubeconfig(c, SA_NAMESPACE, directory)
        if unrelated_pods:
            c.apply(bench_node(UNRELATED_NODE, pods=unrelated_pods + 1000))
            self.unrelated = asyncio.run(create_unrelated_pods(c, unrelated_pods))

    def prepare(self) -> None:
        c = self.cluster
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        c.kubectl("wait", "--for=condition=Established", "crd/gemmadeployments.gemma.ai", "--timeout=60s")
        self.delete_namespaces(timeout=600)  # leftovers of an interrupted run
        c.apply([bench_node(n) for n in BENCH_NODES])
        # The cluster's Service range (10.0.0.0/24) holds ~250 ClusterIPs: N=500 Services need more. An extra
        # ServiceCIDR (MultiCIDRServiceAllocator, on since 1.33) adds 4096, for the benchmark only.
        name = SERVICE_CIDR["metadata"]["name"]
        kube.wait_for(lambda: not (self.cluster.get("servicecidr", name) or {}).get("metadata", {}).get("deletionTimestamp"),
                      timeout=120, message=f"ServiceCIDR {name} of an earlier run gone")
        c.apply(SERVICE_CIDR)
        kube.wait_for(lambda: all(self._node_ready(n) for n in BENCH_NODES), timeout=60, message="bench nodes Ready")

    def _node_ready(self, name: str) -> bool:
        node = self.cluster.get("node", name) or {}
        conds = (node.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def namespace(self, hint: str) -> str:
        name = kube.unique_name(f"gbench-{hint}", max_len=40)
        self.cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}}})
        kube.wait_for(lambda: self.cluster.get("serviceaccount", "default", name), timeout=60,
                      message=f"ServiceAccount default in {name}")
        self.cluster.apply(claim(name))
        kube.wait_for(lambda: ((self.cluster.get("pvc", CLAIM, name) or {}).get("status") or {}).get("phase") == "Bound",
                      timeout=120, message=f"PVC {CLAIM} Bound in {name}")
        return name

    def namespaces(self, hint: str, k: int) -> list[str]:
        """k fresh namespaces with a common prefix (ending in "-", for the audit log), each with the shared
        claim and the operator's write RoleBinding, created together and waited for together."""
        prefix = kube.unique_name(f"gb-{hint}", max_len=30) + "-"
        names = [f"{prefix}{j:03d}" for j in range(k)]
        c = self.cluster
        c.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {BENCH_LABEL: "true"}}}
                 for n in names])
        c.apply([claim(n) for n in names] + [access.write_binding(n, SA_NAMESPACE) for n in names])

        def ready() -> bool:
            sas = c.kubectl("get", "serviceaccounts", "-A", "--field-selector=metadata.name=default",
                            "-o", "jsonpath={.items[*].metadata.namespace}", check=False).stdout.split()
            pvcs = c.kubectl("get", "pvc", "-A", "--field-selector=metadata.name=" + CLAIM, "-o",
                             "jsonpath={range .items[*]}{.metadata.namespace}={.status.phase}{\"\\n\"}{end}",
                             check=False).stdout.split()
            bound = {line.split("=")[0] for line in pvcs if line.endswith("=Bound")}
            return set(names) <= set(sas) and set(names) <= bound

        kube.wait_for(ready, timeout=300, interval=1, message=f"{k} namespaces with a Bound {CLAIM}")
        return names

    def bench_namespaces(self) -> list[str]:
        out = self.cluster.kubectl("get", "namespaces", "-l", f"{BENCH_LABEL}=true", "-o", "name", check=False).stdout
        return [line.split("/", 1)[1] for line in out.split()]

    def delete_namespaces(self, timeout: float) -> None:
        names = self.bench_namespaces()
        if not names:
            return
        log.info("deleting namespaces %s", " ".join(names))
        self.cluster.kubectl("delete", "namespace", *names, "--wait=false", "--ignore-not-found", check=False)
        kube.wait_for(lambda: not self.bench_namespaces(), timeout=timeout, interval=2,
                      message="benchmark namespaces gone")

    def teardown(self, keep_unrelated: bool = False) -> None:
        c = self.cluster
        try:
            self.delete_namespaces(timeout=900)
            c.kubectl("delete", "clusterrolebinding", access.READ_ROLE, "--ignore-not-found", check=False)
            c.kubectl("delete", "clusterrole", access.READ_ROLE, access.WRITE_ROLE, "--ignore-not-found", check=False)
            c.kubectl("delete", "namespace", SA_NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
            if not keep_unrelated:
                c.kubectl("delete", "namespace", "-l", f"{INFRA_LABEL}=others", "--wait=false", check=False)
                kube.wait_for(lambda: not c.kubectl("get", "namespaces", "-l", f"{INFRA_LABEL}=others", "-o", "name",
                                                    check=False).stdout.strip(), timeout=900, interval=5,
                              message="the unrelated pods' namespaces gone")
                c.kubectl("delete", "node", UNRELATED_NODE, "--ignore-not-found", "--wait=false", check=False)
        finally:
            self.cluster.kubectl("delete", "node", *BENCH_NODES, "--ignore-not-found", "--wait=false", check=False)
            self.cluster.kubectl("delete", "servicecidr", SERVICE_CIDR["metadata"]["name"], "--ignore-not-found",
                                 "--wait=false", check=False)


async def create_unrelated_pods(cluster: kube.Cluster, total: int, per_namespace: int = 1000) -> dict[str, Any]:
    """total running pods of others, per_namespace in each namespace gbench-others-NNN; those already there
    (an earlier run with --keep-unrelated) are kept. Waits until KWOK has marked them all Running."""
    k = -(-total // per_namespace)
    names = [f"{UNRELATED_PREFIX}{j:03d}" for j in range(k)]
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {INFRA_LABEL: "others"}}}
                   for n in names])
    started = time.time()
    async with Client("gemma-bench-unrelated", limit=32) as client:
        async def create(obj: dict[str, Any]) -> None:
            try:
                await client.request("POST", path_of("Pod", obj["metadata"]["namespace"]), obj)
            except ApiError as err:
                if err.status != 409:
                    raise

        pods = [unrelated_pod(names[i // per_namespace], i) for i in range(total)]
        log.info("creating %d running pods of others in %d namespaces", total, k)
        await gather_bounded([create(p) for p in pods], 32)
        created = time.time()

        async def running() -> int:
            count, cont = 0, ""
            while True:
                params = {"limit": "5000", "fieldSelector": f"spec.nodeName={UNRELATED_NODE},status.phase=Running"}
                listing = await client.list("Pod", None, params | ({"continue": cont} if cont else {}))
                count += len(listing.get("items") or [])
                cont = (listing.get("metadata") or {}).get("continue") or ""
                if not cont:
                    return count

        deadline = time.monotonic() + 900
        while (n_running := await running()) < total and time.monotonic() < deadline:
            await asyncio.sleep(5)
    log.info("  %d pods of others Running (created in %.0fs, Running after %.0fs)", n_running, created - started,
             time.time() - started)
    return {"pods": total, "namespaces": k, "running": n_running, "create_seconds": round(created - started, 1),
            "running_seconds": round(time.time() - started, 1)}


# ------------------------------------------------------------------ one scenario


@dataclass
class Snapshot:
    t: float
    audit: int
    operator_cpu: float | None
    control_plane_cpu: dict[str, float | None]
    metrics: dict[str, float] = field(default_factory=dict)
    apiserver: dict[str, float] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


class Scenario:
    def __init__(self, args: argparse.Namespace, cluster: kube.Cluster, n: int, mode: str, namespaces: list[str],
                 operator_kubeconfig: str | None = None) -> None:
        self.args = args
        self.cluster = cluster
        self.n = n
        self.mode = mode  # "floor" or "operator"
        self.namespaces = namespaces
        # The audit log is searched by the namespaces' common prefix ("gb-...-"), or the one namespace's name.
        self.ns = namespaces[0] if len(namespaces) == 1 else os.path.commonprefix(namespaces).rsplit("-", 1)[0] + "-"
        self.operator_kubeconfig = operator_kubeconfig or cluster.kubeconfig
        self.audit = cluster.audit_log if cluster.audit_log and cluster.audit_log.exists() else None
        self.cp_pids = measure.control_plane_pids(kube.LOCAL_CLUSTER_DIR) if cluster.local else {}
        self.operator: OperatorProcess | None = None
        self.names = [gd_name(i) for i in range(n)]
        self.timeout = args.timeout or 120 + 1.5 * n

    # -- measurements

    def snapshot(self) -> Snapshot:
        op = self.operator
        metrics = measure.parse_metrics(op.metrics()) if op else {}
        return Snapshot(
            t=time.time(),
            audit=measure.audit_offset(self.audit),
            operator_cpu=measure.cpu_seconds(op.proc.pid) if op and op.proc else None,
            control_plane_cpu={k: measure.cpu_seconds(pid) for k, pid in self.cp_pids.items()},
            metrics=metrics,
            apiserver=measure.apiserver_latency_samples(
                self.cluster.kubectl("get", "--raw", "/metrics", check=False).stdout),
            pids=measure.control_plane_pids(kube.LOCAL_CLUSTER_DIR) if self.cluster.local else {},
        )

    def costs(self, a: Snapshot, b: Snapshot) -> dict[str, Any]:
        writes = measure.audit_writes(self.audit, a.audit, b.audit, self.ns)
        delta = measure.metrics_delta(a.metrics, b.metrics)
        op_writes = sum(writes["operator"].values())
        result: dict[str, Any] = {
            "seconds": round(b.t - a.t, 3),
            "writes": {actor: dict(sorted(c.items())) for actor, c in writes.items()},
            "operator_writes": op_writes,
            "operator_writes_per_gd": round(op_writes / self.n, 3),
            "control_plane_restarted": a.pids != b.pids,
            "apiserver_latency": measure.apiserver_means(a.apiserver, b.apiserver),
            "control_plane_cpu_seconds": {
                k: round((b.control_plane_cpu.get(k) or 0) - (v or 0), 2) for k, v in a.control_plane_cpu.items()
            },
        }
        if self.operator:
            result["operator_cpu_seconds"] = round((b.operator_cpu or 0) - (a.operator_cpu or 0), 2)
            result["operator_requests"] = measure.api_requests(delta)
            passes = sum(v for k, v in delta.items() if k.startswith("gemma_operator_reconciles_total"))
            dur_sum = delta.get("gemma_operator_reconcile_duration_seconds_sum{kind=GemmaDeployment}", 0.0)
            dur_count = delta.get("gemma_operator_reconcile_duration_seconds_count{kind=GemmaDeployment}", 0.0)
            result["api_mean_ms"] = measure.mean_ms(delta, "gemma_operator_api_request_duration_seconds")
            result["queue_wait_mean_ms"] = measure.mean_ms(delta, "gemma_operator_queue_wait_seconds").get("all")
            result["reconcile_passes"] = int(passes)
            result["reconcile_mean_ms"] = round(1000 * dur_sum / dur_count, 2) if dur_count else None
        return result

    async def drive(self, mode: str, **extra: Any) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.driver", mode, "--n", str(self.n), "--concurrency", str(self.args.concurrency)]
        for ns in self.namespaces:
            cmd += ["--namespace", ns]
        for key, value in extra.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        return await run_driver(self.cluster, cmd)

    # -- the run

    async def run(self) -> dict[str, Any]:
        operator_mode = self.mode == "operator"
        result: dict[str, Any] = {"namespace": self.ns}
        async with Client("gemma-bench-recorder", limit=8) as client:
            rec = Recorder(client, self.namespaces)
            await rec.start()
            try:
                if operator_mode:
                    RESULTS.mkdir(parents=True, exist_ok=True)
                    log_path = RESULTS / f"operator-{self.ns}.log"
                    extra = ["--workers", str(self.args.workers)] if self.args.workers else []
                    env = dict(item.split("=", 1) for item in self.args.operator_env)
                    if self.args.operator_path:
                        # Another tree of the package (e.g. the code before a change) ahead of the installed one.
                        env["PYTHONPATH"] = os.pathsep.join(
                            [str(Path(self.args.operator_path).resolve())] + env.get("PYTHONPATH", "").split(os.pathsep)
                        ).rstrip(os.pathsep)
                    # All namespaces, as a cluster-scale install runs: others' objects are in its way (only
                    # its server-side selectors keep them out). Its ServiceAccount writes only in ours.
                    self.operator = OperatorProcess(self.operator_kubeconfig, log_path, args=extra, env=env)
                    await asyncio.to_thread(self.operator.start)
                    await asyncio.sleep(self.args.operator_warmup)  # kopf's watches connect after /healthz
                    result["operator_log"] = str(log_path.relative_to(REPO))
                    assert self.operator.proc is not None
                    result["operator_start"] = measure.memory_mb(self.operator.proc.pid) | {
                        "cpu_seconds": measure.cpu_seconds(self.operator.proc.pid)}
                result["create"] = await self._create(rec, operator_mode)
                if operator_mode:
                    await asyncio.sleep(self.args.settle)
                    s0 = self.snapshot()
                    log.info("  idle window: %ss with nothing changing", self.args.idle_seconds)
                    await asyncio.sleep(self.args.idle_seconds)
                    await asyncio.sleep(1)  # the audit log is written at ResponseComplete
                    result["idle"] = self.costs(s0, self.snapshot())
                    result["idle"]["seconds"] = self.args.idle_seconds
                    if self.args.relist:
                        result["relist"] = await self._relist()
                result["fanout"] = await self._fanout(rec, operator_mode)
                if self.operator and self.operator.proc:
                    result["process"] = measure.memory_mb(self.operator.proc.pid) | {
                        "cpu_seconds_total": measure.cpu_seconds(self.operator.proc.pid)}
            finally:
                if self.operator:
                    await asyncio.to_thread(self.operator.stop)
                    result["operator_tracebacks"] = self.operator.log().count("Traceback")
                await rec.stop()
        result["watch_events"] = rec.events
        return result

    async def _create(self, rec: Recorder, operator_mode: bool) -> dict[str, Any]:
        def gd_ready(f: tuple[Any, ...]) -> bool:
            return bool(f[2] == "Ready" and f[1] >= f[0])

        def dep_ready(f: tuple[Any, ...]) -> bool:
            return bool(f[1])

        log.info("[%s n=%d] applying %d GemmaDeployments", self.mode, self.n, self.n)
        s0 = self.snapshot()
        driver = await self.drive("create" if operator_mode else "floor", max_model_len=FIRST_LEN)
        if operator_mode:
            done = lambda: rec.count("GemmaDeployment", gd_ready) >= self.n
        else:
            done = lambda: rec.count("Deployment", dep_ready) >= self.n
        ok = await rec.wait("all Ready", done, self.timeout)
        await asyncio.sleep(1)
        s1 = self.snapshot()

        first_child, ready, dep_ready_lat, curve, dep_curve, lag = [], [], [], [], [], []
        for name in self.names:
            created = rec.first("GemmaDeployment", name, lambda f: True)
            if created is None:
                continue
            kids = [t for t in (rec.first("Deployment", name, lambda f: True),
                                rec.first("Service", name, lambda f: True)) if t is not None]
            if kids:
                first_child.append(min(kids) - created)
            t_dep = rec.first("Deployment", name, dep_ready)
            if t_dep is not None:
                dep_ready_lat.append(t_dep - created)
                dep_curve.append(t_dep - s0.t)
            t_ready = rec.first("GemmaDeployment", name, gd_ready) if operator_mode else t_dep
            if t_ready is not None:
                ready.append(t_ready - created)
                curve.append(t_ready - s0.t)
            t_service = rec.first("Service", name, lambda f: True)
            if operator_mode and t_ready is not None and t_dep is not None and t_service is not None:
                # Status lag: from the last child becoming ready (the Deployment rolled out, the Service
                # there) to the status saying Ready.
                lag.append(max(0.0, t_ready - max(t_dep, t_service)))
        curve.sort()
        dep_curve.sort()
        # Status transitions the operator wrote: changes of phase seen per GemmaDeployment (None -> Starting
        # -> Ready is two); the issue's target for writes per GD is the children plus these.
        transitions = [phase_changes(rec, name) for name in self.names] if operator_mode else []
        result = {
            "phase_transitions_per_gd": round(sum(transitions) / len(transitions), 3) if transitions else None,
            "timed_out": not ok,
            "all_ready_seconds": round(curve[-1], 3) if curve else None,
            "ready_count": len(curve),
            "driver": driver,
            "driver_seconds": round(driver["ended"] - driver["started"], 3),
            "first_child_seconds": measure.summary(first_child),
            "ready_seconds": measure.summary(ready),
            "deployment_ready_seconds": measure.summary(dep_ready_lat),
            "status_lag_seconds": measure.summary(lag),
            "all_deployments_ready_seconds": round(dep_curve[-1], 3) if dep_curve else None,
            "ready_curve": [round(t, 3) for t in curve],
        } | self.costs(s0, s1)
        log.info("[%s n=%d] all Ready in %ss (p50 %s p99 %s per resource)", self.mode, self.n,
                 result["all_ready_seconds"], result["ready_seconds"]["p50"], result["ready_seconds"]["p99"])
        return result

    async def _relist(self) -> dict[str, Any]:
        """Restart the kube-apiserver: it comes back with a fresh watch cache, so every watch of the operator
        expires (410) and it lists again, replacing its caches and reconciling every GemmaDeployment. Nothing
        changed, so it must write nothing; the writes from the stop until --relist-seconds after the last
        re-list are counted."""
        from tests.support.apiserver import ApiServer

        assert self.operator is not None
        before = self.operator.log().count("listing again")
        log.info("  re-list: restarting the kube-apiserver")
        s0 = self.snapshot()
        server = ApiServer()
        server.stop()
        server.start()
        kube.wait_for(lambda: self.cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                      timeout=180, interval=0.5, message="kube-apiserver back")
        back = time.time()
        kinds = 7  # the operator's watched kinds (gemma_operator.kinds), one reflector each for all namespaces
        deadline = time.monotonic() + 120
        while not (relisted := self.operator.log().count("listing again") - before >= kinds):
            if time.monotonic() > deadline:
                log.warning("the operator did not list every kind again within 120 s")
                break
            await asyncio.sleep(0.5)
        t_relisted = time.time()
        await asyncio.sleep(self.args.relist_seconds)
        await asyncio.sleep(1)  # the audit log is written at ResponseComplete
        result = self.costs(s0, self.snapshot())
        result |= {"apiserver_back_seconds": round(back - s0.t, 1), "relisted": bool(relisted),
                   "relisted_after_back_seconds": round(t_relisted - back, 1),
                   "relists": self.operator.log().count("listing again") - before,
                   "window_after_relist_seconds": self.args.relist_seconds}
        log.info("  re-list: %d kinds listed again %.1fs after the API server was back; %d writes", result["relists"],
                 result["relisted_after_back_seconds"], result["operator_writes"])
        return result

    async def _fanout(self, rec: Recorder, operator_mode: bool) -> dict[str, Any]:
        def rolled(f: tuple[Any, ...]) -> bool:
            return bool(f[0] == SECOND_LEN and f[1])

        def gd_ready_again(f: tuple[Any, ...]) -> bool:
            return bool(f[0] >= 2 and f[1] >= f[0] and f[2] == "Ready")

        log.info("[%s n=%d] fan-out: maxModelLen %d -> %d on all", self.mode, self.n, FIRST_LEN, SECOND_LEN)
        s0 = self.snapshot()
        driver = await self.drive("patch" if operator_mode else "floor-patch", max_model_len=SECOND_LEN)

        def done() -> bool:
            if rec.count("Deployment", rolled) < self.n:
                return False
            return not operator_mode or rec.count("GemmaDeployment", gd_ready_again) >= self.n

        ok = await rec.wait("all rolled", done, self.timeout)
        await asyncio.sleep(1)
        s1 = self.snapshot()
        rolled_lat, ready_lat, rolled_curve, ready_curve, first_apply = [], [], [], [], []
        for name in self.names:
            patched = rec.first("GemmaDeployment", name, lambda f: f[0] >= 2, after=s0.t)
            if patched is None:
                continue
            t_apply = rec.first("Deployment", name, lambda f: f[0] == SECOND_LEN, after=s0.t)
            if t_apply is not None:
                first_apply.append(t_apply - patched)
            t_rolled = rec.first("Deployment", name, rolled, after=s0.t)
            if t_rolled is not None:
                rolled_lat.append(t_rolled - patched)
                rolled_curve.append(t_rolled - s0.t)
            t_ready = rec.first("GemmaDeployment", name, gd_ready_again, after=s0.t) if operator_mode else t_rolled
            if t_ready is not None:
                ready_lat.append(t_ready - patched)
                ready_curve.append(t_ready - s0.t)
        rolled_curve.sort()
        ready_curve.sort()
        result = {
            "timed_out": not ok,
            "all_rolled_seconds": round(rolled_curve[-1], 3) if rolled_curve else None,
            "all_ready_seconds": round(ready_curve[-1], 3) if ready_curve else None,
            "driver": driver,
            "driver_seconds": round(driver["ended"] - driver["started"], 3),
            "deployment_updated_seconds": measure.summary(first_apply),
            "rolled_seconds": measure.summary(rolled_lat),
            "ready_seconds": measure.summary(ready_lat),
            "rolled_curve": [round(t, 3) for t in rolled_curve],
        } | self.costs(s0, s1)
        log.info("[%s n=%d] all rolled in %ss", self.mode, self.n, result["all_rolled_seconds"])
        return result


async def run_driver(cluster: kube.Cluster, cmd: list[str]) -> dict[str, Any]:
    """Run bench.driver (a process of its own, so its CPU is not the operator's); its last line is JSON."""
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, env=kube.tool_env(cluster.kubeconfig),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def phase_changes(rec: Recorder, name: str) -> int:
    changes, phase = 0, None
    for _, fact in rec.timeline["GemmaDeployment"].get(name, []):
        if fact[2] != phase:
            changes, phase = changes + 1, fact[2]
    return changes


# ------------------------------------------------------------------ main


def other_operators() -> list[str]:
    """Operator processes that watch all namespaces would also act on the benchmark's resources."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmd if a]
        scoped = any(a in ("-n", "--namespace") or a.startswith("--namespace=") for a in args)
        if "gemma_operator" in args and "-m" in args and not scoped:
            found.append(f"{proc.name}: {' '.join(args)}")
    return found


async def run_n(args: argparse.Namespace, cluster: kube.Cluster, setup: Setup, n: int) -> Path:
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "scale", "n": n, "label": args.label, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_revision(), "workers": args.workers, "concurrency": args.concurrency,
        "operator_path": args.operator_path, "operator_env": args.operator_env,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()},
        "clusterwide_operators_seen": other_operators(),
        "namespaces": min(n, args.namespaces), "unrelated": setup.unrelated, "relist": args.relist,
    }
    if result["clusterwide_operators_seen"]:
        log.warning("operators watching all namespaces are running; they may touch the benchmark's resources: %s",
                    result["clusterwide_operators_seen"])
    for mode in (["floor"] if not args.no_floor else []) + ["operator"]:
        names = await asyncio.to_thread(setup.namespaces, f"{mode[:2]}{n}", min(n, args.namespaces))
        try:
            result[mode] = await Scenario(args, cluster, n, mode, names, setup.operator_kubeconfig).run()
        finally:
            await asyncio.to_thread(setup.delete_namespaces, 900)
    result["host"]["loadavg_end"] = os.getloadavg()
    result["wall_seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale-{args.label}-n{n}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    log.info("wrote %s", path.relative_to(REPO))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, action="append", help="number of GemmaDeployments (repeatable; default 50)")
    p.add_argument("--label", default="current", help="names the operator version measured (e.g. before, after)")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=10.0, help="seconds after all Ready before the idle window")
    p.add_argument("--operator-warmup", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=None, help="operator --workers (default: the operator's default)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight of the driver (and the floor)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for all Ready (default 120 + 1.5 N)")
    p.add_argument("--no-floor", action="store_true", help="skip the floor scenario")
    p.add_argument("--operator-path", default=None,
                   help="a directory holding another gemma_operator package to run instead (before/after)")
    p.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of the operator process (repeatable)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    p.add_argument("--namespaces", type=int, default=100, help="GemmaDeployments spread over this many namespaces")
    p.add_argument("--unrelated-pods", type=int, default=20000, help="running pods of others in the cluster")
    p.add_argument("--keep-unrelated", action="store_true", help="leave the unrelated pods for the next run")
    p.add_argument("--no-relist", dest="relist", action="store_false",
                   help="skip the re-list phase (it restarts the kube-apiserver: nothing else may use the cluster)")
    p.add_argument("--relist-seconds", type=float, default=20.0, help="window after the re-list in which writes count")
    args = p.parse_args(argv)
    args.n = args.n or [50]
    return args


async def main_async(args: argparse.Namespace) -> None:
    cluster = await asyncio.to_thread(kube.connect)
    os.environ["KUBECONFIG"] = cluster.kubeconfig
    setup = Setup(cluster)
    tmp = Path(tempfile.mkdtemp(prefix="gemma-bench-"))
    await asyncio.to_thread(setup.prepare_scale, args.unrelated_pods, tmp)
    try:
        for n in args.n:
            await run_n(args, cluster, setup, n)
            if not args.no_report:
                report.main([])  # JSON, table and plot are out before the (slow) teardown
    finally:
        log.info("cleaning up: benchmark namespaces and nodes")
        shutil.rmtree(tmp, ignore_errors=True)
        await asyncio.to_thread(setup.teardown, args.keep_unrelated)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
