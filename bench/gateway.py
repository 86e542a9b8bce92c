"""The model-aware gateway against direct and vllm-router, on fast stand-in servers (issue 13).

    .venv/bin/python -m bench.gateway                       # levels 1, 64, 256, 1024; about 8 minutes
    .venv/bin/python -m bench.gateway --quick               # small levels, under a minute: a smoke check
    .venv/bin/python -m bench.gateway --levels 64 --servers 4 --targets direct,gateway-prefixhash

Starts --servers OpenAI-compatible stand-ins (bench/gateway_standin.py: --tokens tokens --delay-ms apart,
prefill 20 ms on a prefix-cache miss and 2 ms on a hit), then the targets, all on 127.0.0.1:

- direct: the load generator spreads requests round-robin over the stand-ins itself (the floor);
- gateway-prefixhash / gateway-leastloaded: `python -m gemma_operator.gateway --static-route` with that policy;
- vllm-router-cache_aware / vllm-router-round_robin: vllm-router from --vllm-router (its own venv).

For each level, every target (a fresh process each time) gets the same requests (bench/gateway_load.py, its own process: a warm-up wave,
then the measured requests, streaming, at that concurrency). Recorded per run: TTFT and its part not spent in
the stand-in's simulated prefill (what a proxy adds shows there), throughput, errors, the stand-ins'
prefix-cache hits, the proxy's CPU seconds and peak RSS (/proc), and the whole machine's CPU use (/proc/stat).

Result: bench/results/gateway-<time>.json, bench/gateway.md, and that section of docs/benchmarks.md (between
its markers). Every process started is stopped on exit, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.gateway_report import BEGIN, END, render_section, summarize
from bench.report import splice_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = REPO / "bench" / "gateway.md"
PY = str(REPO / ".venv" / "bin" / "python")
# vllm-router from PyPI in a venv of its own (its wheel pins nothing of ours); made on first use.
VLLM_ROUTER_VERSION = "0.1.17"
VLLM_ROUTER = str(Path(os.environ.get("GEMMA_CACHE", Path.home() / ".cache" / "gemma-operator"))
                  / f"vllm-router-{VLLM_ROUTER_VERSION}" / "bin" / "vllm-router")
TARGETS = ("direct", "gateway-prefixhash", "gateway-leastloaded", "vllm-router-cache_aware",
           "vllm-router-round_robin")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CANCEL_LEVEL = 64
MODEL = "gemma"
# Never through a proxy: every request of the benchmark stays on 127.0.0.1.
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return env | NO_PROXY | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Procs:
    """Every process the benchmark started, each in its own session so that its group can be stopped."""
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], stdout: int | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process's life)
        proc = subprocess.Popen(cmd, stdout=stdout or log, stderr=log, cwd=REPO, env=child_env(),
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(grace)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)
        self.started.clear()


def get(url: str, timeout: float = 2.0) -> bytes:
    with LOCAL.open(url, timeout=timeout) as r:
        return bytes(r.read())


def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{str(proc.args)[:200]} exited with {proc.returncode} before {url} answered")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s")


def proc_reading(pid: int) -> dict[str, float]:
    """CPU seconds (all threads) and memory of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kb = {k: int(status[k].split()[0]) for k in ("VmRSS", "VmHWM") if k in status}
    return {"cpu_seconds": (int(fields[11]) + int(fields[12])) / CLK_TCK, "rss_mb": kb.get("VmRSS", 0) / 1024,
            "hwm_mb": kb.get("VmHWM", 0) / 1024, "threads": int(status.get("Threads", "0").strip() or 0)}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class RssSampler(threading.Thread):
    """The proxy's peak VmRSS during one run (VmHWM is the process's peak since it started)."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0.0, threading.Event()

    def run(self) -> None:
        while self.pid and not self.stopped.wait(0.2):
            try:
                self.peak = max(self.peak, proc_reading(self.pid)["rss_mb"])
            except (OSError, IndexError, ValueError):
                return


@dataclass
class Target:
    name: str
    urls: list[str]
    proc: subprocess.Popen[bytes] | None = None
    metrics_url: str | None = None  # the gateway's /metrics (its own added-latency histogram, if it has one)


def added_buckets(target: Target) -> dict[str, float] | None:
    """The gateway's gemma_gateway_added_latency_seconds buckets (le -> count), or None without them."""
    if not target.metrics_url:
        return None
    try:
        text = get(target.metrics_url).decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gemma_gateway_added_latency_seconds_bucket{"):
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            out[le] = out.get(le, 0.0) + float(value)
    return out or None


def pin(proc: subprocess.Popen[bytes], proxy: bool, args: argparse.Namespace) -> None:
    """--pin: the proxy gets the last CPU to itself and everything else shares the others, so that what a
    proxy adds is not its wait for a CPU that the load generator and the stand-ins hold."""
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(proc.pid, {cpus[-1]} if proxy else set(cpus[:-1]))


def start_standins(procs: Procs, args: argparse.Namespace) -> list[tuple[str, subprocess.Popen[bytes]]]:
    out = []
    for i in range(args.servers):
        port = free_port()
        proc = procs.start(f"standin-{i}", [PY, "-m", "bench.gateway_standin", "--port", str(port),
                                            "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms),
                                            "--miss-ms", str(args.miss_ms), "--hit-ms", str(args.hit_ms),
                                            "--cache", str(args.cache), "--model", MODEL])
        pin(proc, False, args)
        out.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in out:
        wait_ready(url + "/health", proc)
    return out


def start_target(procs: Procs, name: str, servers: list[str], args: argparse.Namespace) -> Target:
    if name == "direct":
        return Target(name, servers)
    port, http_port = free_port(), free_port()
    if name.startswith("gateway-"):
        policy = {"gateway-prefixhash": "PrefixHash", "gateway-leastloaded": "LeastLoaded"}[name]
        run = [args.gateway_wrapper] if args.gateway_wrapper else ["-m", "gemma_operator.gateway"]
        cmd = [PY, *run, "--static-route", f"{MODEL}={','.join(servers)}",
               "--port", str(port), "--http-port", str(http_port), "--policy", policy, "--log-level", "WARNING"]
        ready = f"http://127.0.0.1:{port}/v1/models"
    else:
        policy = name.removeprefix("vllm-router-")
        # --worker-startup-check-interval 1: its default (30 s) waits that long when a worker is not up yet.
        cmd = [args.vllm_router, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *servers,
               "--policy", policy, "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
               "--worker-startup-check-interval", "1", "--log-level", "warning"]
        ready = f"http://127.0.0.1:{port}/health"
    proc = procs.start(name, cmd)
    pin(proc, True, args)
    wait_ready(ready, proc)
    metrics = f"http://127.0.0.1:{http_port}/metrics" if name.startswith("gateway-") else None
    return Target(name, [f"http://127.0.0.1:{port}"], proc, metrics)


def requests_for(level: int, quick: bool) -> int:
    """Enough requests for a p99 at every level; the generator's time cap bounds the big ones."""
    if quick:
        return max(16, 4 * level)
    return min(max(200, 16 * level), 8192)


def run_once(procs: Procs, target: Target, level: int, standins: list[tuple[str, subprocess.Popen[bytes]]],
             args: argparse.Namespace, cancels: int = 0) -> dict[str, Any]:
    name = f"{target.name}-{level}" + (f"-cancel{cancels}" if cancels else "")
    out = procs.logs / f"load-{name}.json"
    cmd = [PY, "-m", "bench.gateway_load", "--concurrency", str(level), "--cancels", str(cancels),
           "--requests", str(requests_for(level, args.quick)), "--max-seconds", str(args.max_seconds),
           "--prompts", str(args.prompts), "--expect-tokens", str(args.tokens), "--model", MODEL, "--out", str(out)]
    for url in target.urls:
        cmd += ["--url", url]
    for url, _ in standins:
        cmd += ["--reset-url", url]
    loadavg = os.getloadavg()
    gen = procs.start(f"load-{name}", cmd, stdout=subprocess.PIPE)
    pin(gen, False, args)
    before, after, peak = measure(procs, gen, name, target, lambda: readings(target, standins),
                                  2 * args.max_seconds + 90)
    load = json.loads(out.read_text())
    stats = [json.loads(get(url + "/stats")) for url, _ in standins]
    return summarize(load, stats, before, after, peak) | {"loadavg_start": loadavg}


def measure(procs: Procs, gen: subprocess.Popen[bytes], name: str, target: Target, read: Callable[[], Any],
            limit: float) -> tuple[Any, Any, float]:
    """read() when the load generator starts measuring and when it is done, and the proxy's peak RSS in
    between; the generator is stopped after `limit` s, so a hung run cannot hang the benchmark."""
    assert gen.stdout is not None
    timer = threading.Timer(limit, lambda: procs.stop(gen))
    timer.start()
    try:
        line = gen.stdout.readline()  # "MEASURE" after the warm-up, if any
        before = read()
        sampler = RssSampler(target.proc.pid if target.proc else None)
        sampler.start()
        line = gen.stdout.readline()  # "DONE"
        after = read()
        sampler.stopped.set()
        gen.wait()
    finally:
        timer.cancel()
    if gen.returncode != 0 or line.strip() != b"DONE":
        raise RuntimeError(f"load generator {name} failed ({gen.returncode}); see {procs.logs}/load-{name}.log")
    return before, after, sampler.peak


def readings(target: Target, standins: list[tuple[str, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    return {"time": time.monotonic(), "machine": machine_cpu(),
            "proxy": proc_reading(target.proc.pid) if target.proc else None,
            "standins_cpu": sum(proc_reading(p.pid)["cpu_seconds"] for _, p in standins),
            "added_buckets": added_buckets(target)}


def each_target(procs: Procs, level: int, standins: list[tuple[str, subprocess.Popen[bytes]]], servers: list[str],
                args: argparse.Namespace, cancels: int = 0) -> Iterator[tuple[Target, dict[str, Any]]]:
    """Each target in turn, a fresh process for this level: no run inherits another's routing state (a
    cache-aware router's tree) or memory."""
    for name in args.targets:
        print(f"level {level}{f' after {cancels} cancelled streams' if cancels else ''}: {name} ...", flush=True)
        target = start_target(procs, name, servers, args)
        try:
            yield target, run_once(procs, target, level, standins, args, cancels)
        finally:
            if target.proc:
                procs.stop(target.proc)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    logs = RESULTS / f"gateway-{started}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = Procs(logs)
    result: dict[str, Any] = {
        "started": started, "command": " ".join([".venv/bin/python -m bench.gateway", *sys.argv[1:]]),
        "pinned": bool(args.pin),
        "host": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "python": platform.python_version(),
                 "kernel": platform.release()},
        "git": git_state(), "settings": {k: v for k, v in vars(args).items() if k != "render"},
        "levels": {},
    }
    try:
        standins = start_standins(procs, args)
        servers = [u for u, _ in standins]
        result["vllm_router_version"] = router_version(args)
        for level in args.levels:
            result["levels"][str(level)] = runs = {}
            for target, r in each_target(procs, level, standins, servers, args):
                runs[target.name] = r
                print(f"  {r['ok']} ok, {r['errors_total']} errors, {r['rps']:.0f} req/s, TTFT p50 "
                      f"{r['ttft_ms']['p50']:.1f} ms p99 {r['ttft_ms']['p99']:.1f} ms, hits {r['hit_rate']:.0%}",
                      flush=True)
        if args.cancels:  # clients that go away mid-answer, then the same load as the level
            level = CANCEL_LEVEL if CANCEL_LEVEL in args.levels else args.levels[-1]
            result["cancel"] = {"level": level, "cancels": args.cancels, "runs": {}}
            for target, r in each_target(procs, level, standins, servers, args, args.cancels):
                result["cancel"]["runs"][target.name] = r
                print(f"  {r['ok']} ok, {r['errors_total']} errors {r['errors']}, per stand-in "
                      f"{r['per_server_requests']}", flush=True)
        result["standin_unknown_paths"] = [json.loads(get(u + "/stats"))["unknown_paths"] for u in servers]
    finally:
        procs.stop_all()
    result["logs"] = str(logs.relative_to(REPO))
    return result


def ensure_router(path: str) -> None:
    """The default vllm-router: installed from PyPI into its venv when missing (a given --vllm-router is
    used as it is)."""
    if Path(path).exists() or path != VLLM_ROUTER:
        return
    venv = Path(path).parent.parent
    print(f"installing vllm-router {VLLM_ROUTER_VERSION} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"vllm-router=={VLLM_ROUTER_VERSION}"], check=True)


def router_version(args: argparse.Namespace) -> str:
    if not any(t.startswith("vllm-router") for t in args.targets):
        return ""
    ensure_router(args.vllm_router)
    pip = Path(args.vllm_router).parent / "pip"
    out = subprocess.run([str(pip), "show", "vllm-router"], check=False, capture_output=True, text=True, env=child_env())
    return next((line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("Version")), "")


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], check=False, cwd=REPO, capture_output=True, text=True).stdout.strip()
    # The gateway is being edited while benchmarks run: a digest of its files says which code was measured.
    digest = hashlib.sha256()
    for path in sorted((REPO / "operator" / "gemma_operator" / "gateway").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "gateway_dirty": bool(git("status", "--porcelain", "operator/gemma_operator/gateway")),
            "gateway_sha256": digest.hexdigest()[:12]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default=None, help="concurrency levels, comma-separated (default 1,64,256,1024)")
    p.add_argument("--servers", type=int, default=3, help="stand-in servers (default 3)")
    p.add_argument("--quick", action="store_true", help="levels 1,16,64 with few requests: a smoke check")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--tokens", type=int, default=32, help="tokens per answer (default 32)")
    p.add_argument("--delay-ms", type=float, default=5.0, help="between tokens (default 5)")
    p.add_argument("--miss-ms", type=float, default=20.0, help="simulated prefill on a prefix-cache miss")
    p.add_argument("--hit-ms", type=float, default=2.0, help="simulated prefill on a hit")
    p.add_argument("--cache", type=int, default=16, help="prefixes each stand-in's LRU holds (default 16)")
    p.add_argument("--prompts", type=int, default=32, help="distinct shared system prompts (default 32)")
    p.add_argument("--max-seconds", type=float, default=45.0, help="a run starts no request after this")
    p.add_argument("--cancels", type=int, default=3,
                   help="then a run at 64 after this many streams cut by their client (0: none)")
    p.add_argument("--vllm-router", default=VLLM_ROUTER, help="the vllm-router executable")
    p.add_argument("--gateway-wrapper", metavar="SCRIPT",
                   help="run this Python script with the gateway's arguments instead of -m gemma_operator.gateway "
                        "(e.g. one that logs what the gateway does not)")
    p.add_argument("--pin", action="store_true",
                   help="give the proxy the last CPU to itself, and the stand-ins and the load generator the others")
    p.add_argument("--render", metavar="JSON", help="only print and write the section of this result")
    p.add_argument("--no-doc", action="store_true", help="do not write bench/gateway.md and docs/benchmarks.md")
    args = p.parse_args(argv)
    levels = args.levels or ("1,16,64" if args.quick else "1,64,256,1024")
    args.levels = [int(x) for x in levels.split(",")]
    args.targets = [t for t in args.targets.split(",") if t]
    unknown = set(args.targets) - set(TARGETS)
    if unknown or "direct" not in args.targets:
        p.error(f"--targets: unknown {sorted(unknown)}" if unknown else "--targets must include direct")
    if args.quick:
        args.max_seconds = min(args.max_seconds, 8.0)
    return args


def interrupted(signum: int, _frame: Any) -> None:
    """A signal ends the run like Ctrl-C does, so that the finally blocks stop every process started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job ignores it
        signal.signal(sig, interrupted)
    if args.render:
        result = json.loads(Path(args.render).read_text())
    else:
        result = run(args)
        out = RESULTS / f"gateway-{result['started']}.json"
        out.write_text(json.dumps(result) + "\n")
        print(f"wrote {out.relative_to(REPO)}")
    section = render_section(result)
    print(section)
    if not args.no_doc and not args.quick:
        SECTION.write_text(section + "\n")
        DOC.write_text(splice_section(DOC.read_text(), section, BEGIN, END))
        print(f"wrote {SECTION.relative_to(REPO)} and its section in {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
