"""Figures and the docs/benchmarks.md section of bench/gateway.py (issue 13)."""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

from bench.report import table

Result = dict[str, Any]
BEGIN, END = "<!-- bench.gateway: begin -->", "<!-- bench.gateway: end -->"
# Issue 13's targets for the gateway against direct, at concurrency 64.
TARGET_LEVEL, ADDED_P50_MS, ADDED_P99_MS, MIN_RATIO = 64, 1.0, 5.0, 0.95


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def spread(values: list[float]) -> dict[str, float | None]:
    xs = sorted(values)
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99), "max": xs[-1] if xs else None}


def bucket_quantiles(before: dict[str, float] | None, after: dict[str, float] | None) -> Result | None:
    """p50/p99 of a Prometheus histogram over a run, as the upper bound (ms) of the bucket they fall in."""
    if not before or not after:
        return None
    edges = sorted((float(le), after[le] - before.get(le, 0.0)) for le in after)
    total = edges[-1][1] if edges else 0.0
    if not total:
        return None
    out: Result = {"count": total}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        out[name] = next((le * 1000 for le, n in edges if n >= q * total), None)
    return out


def summarize(load: Result, stats: list[Result], before: Result, after: Result, rss_peak: float) -> Result:
    """One run: the generator's records, the stand-ins' counts and the /proc readings around it."""
    records = load["records"]
    ok = [r for r in records if r[4] is None]
    wall = load["wall_seconds"]
    hits, misses = sum(s["hits"] for s in stats), sum(s["misses"] for s in stats)
    busy = after["machine"][0] - before["machine"][0]
    total = after["machine"][1] - before["machine"][1]
    proxy = None
    if before["proxy"] and after["proxy"]:
        proxy = {"cpu_seconds": after["proxy"]["cpu_seconds"] - before["proxy"]["cpu_seconds"],
                 "peak_rss_mb": max(rss_peak, after["proxy"]["rss_mb"]), "hwm_mb": after["proxy"]["hwm_mb"],
                 "threads": after["proxy"]["threads"]}
    return {
        "requests": len(records), "ok": len(ok), "errors_total": len(records) - len(ok),
        "errors": dict(Counter(r[4] for r in records if r[4] is not None)),
        "warmup_errors": load.get("warmup_errors", 0), "cut_by_time": load["cut_by_time"],
        "wall_seconds": wall,
        "ttft_ms": spread([r[0] for r in ok if r[0] is not None]),
        "net_ttft_ms": spread([r[0] - r[1] for r in ok if r[0] is not None and r[1] is not None]),
        "prefill_missing": sum(1 for r in ok if r[1] is None),
        "total_ms": spread([r[2] for r in ok]),
        "rps": len(ok) / wall if wall else 0.0, "tokens_per_second": sum(r[3] for r in records) / wall if wall else 0.0,
        "hits": hits, "misses": misses, "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
        "per_server_requests": [s["requests"] for s in stats],
        "per_server_max_in_flight": [s["max_in_flight"] for s in stats],
        "renders": sum(s.get("renders", 0) for s in stats),
        "gateway_added_ms": bucket_quantiles(before.get("added_buckets"), after.get("added_buckets")),
        "proxy": proxy, "standins_cpu_seconds": after["standins_cpu"] - before["standins_cpu"],
        "client_cpu_seconds": load["client_cpu_seconds"],
        "machine_cores_busy": (busy / total) * (os.cpu_count() or 1) if total else None,
        # The benchmark's own processes over the measured window; the rest of the machine's use is others' work.
        "bench_cores_busy": (load["client_cpu_seconds"] + after["standins_cpu"] - before["standins_cpu"]
                             + ((proxy or {}).get("cpu_seconds") or 0.0)) / wall if wall else None,
        "records": records,
    }


def f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def added(run: Result, direct: Result, q: str) -> float | None:
    a, b = run["net_ttft_ms"].get(q), direct["net_ttft_ms"].get(q)
    return a - b if a is not None and b is not None else None


def level_table(runs: dict[str, Result]) -> str:
    direct = runs["direct"]
    rows = []
    for name, r in runs.items():
        proxy = r.get("proxy") or {}
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        cpu = proxy.get("cpu_seconds")
        own = r.get("gateway_added_ms")
        rows.append([
            name, f"{r['ok']}/{r['requests']}" + (" (time cap)" if r["cut_by_time"] else ""), errors,
            f"{f(r['ttft_ms']['p50'])} / {f(r['ttft_ms']['p99'])}",
            f"{f(r['net_ttft_ms']['p50'])} / {f(r['net_ttft_ms']['p99'])}",
            "-" if name == "direct" else f"{f(added(r, direct, 'p50'), 2)} / {f(added(r, direct, 'p99'), 2)}",
            f"<= {f(own['p50'], 2)} / <= {f(own['p99'], 2)}" if own else "-",
            f"{r['rps']:.0f} ({r['rps'] / direct['rps']:.2f}x)" if direct["rps"] else f"{r['rps']:.0f}",
            f"{r['tokens_per_second']:.0f}", f"{r['hit_rate']:.0%}",
            "/".join(str(n) for n in r["per_server_requests"]),
            "-" if cpu is None else f"{cpu:.1f} ({1000 * cpu / max(r['ok'], 1):.2f})",
            f(proxy.get("peak_rss_mb"), 0),
            f"{f(r.get('machine_cores_busy'), 2)} ({f(r.get('bench_cores_busy'), 2)})",
        ])
    return table(["target", "ok / sent", "errors", "TTFT p50 / p99 (ms)", "TTFT - prefill p50 / p99 (ms)",
                  "added vs direct p50 / p99 (ms)", "gateway's own added p50 / p99 (ms)", "req/s (vs direct)", "tokens/s", "prefix-cache hits",
                  "requests per stand-in", "proxy CPU s (ms / request)", "proxy peak RSS (MB)",
                  "machine cores busy (the benchmark's)"], rows)


def cancel_table(cancel: Result) -> str:
    rows = []
    for name, r in cancel["runs"].items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        rows.append([name, f"{r['ok']}/{r['requests']}", errors, "/".join(str(n) for n in r["per_server_requests"]),
                     f"{r['hit_rate']:.0%}", f"{r['rps']:.0f}"])
    return table(["target", "ok / sent", "errors", "requests per stand-in", "prefix-cache hits", "req/s"], rows)


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def reading(result: Result) -> list[str]:
    """Plain sentences from the numbers; nothing the tables do not show."""
    levels = result["levels"]
    out = []
    at = levels.get(str(TARGET_LEVEL))
    if at:
        d = at["direct"]
        for name, r in at.items():
            if name == "direct":
                continue
            p50, p99 = added(r, d, "p50"), added(r, d, "p99")
            ratio = r["rps"] / d["rps"] if d["rps"] else 0.0
            p99_text = (verdict(p99 is not None and p99 <= ADDED_P99_MS) if p99 is None or p99 >= 0 else
                        f"not settled by this run: direct's own p99 ({f(d['net_ttft_ms']['p99'])} ms) was the higher")
            out.append(
                f"- At concurrency {TARGET_LEVEL}, **{name}** adds {f(p50, 2)} ms at p50 and {f(p99, 2)} ms at p99 "
                f"to TTFT net of the simulated prefill (targets <= {ADDED_P50_MS:g} / <= {ADDED_P99_MS:g} ms: "
                f"{verdict(p50 is not None and p50 <= ADDED_P50_MS)} / {p99_text}) "
                f"and completes {ratio:.2f}x direct's requests per second (target >= {MIN_RATIO}: "
                f"{verdict(ratio >= MIN_RATIO)}), with {r['errors_total']} errors."
                + (f" Its own histogram puts its added time at p50 <= {f(own['p50'], 2)} ms and p99 <= "
                   f"{f(own['p99'], 2)} ms." if (own := r.get("gateway_added_ms")) else ""))
    top = max(levels, key=int)
    for name, r in levels[top].items():
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
        d = levels[top]["direct"]
        out.append(f"- At concurrency {top}, {name}: {r['ok']} of {r['requests']} requests completed, errors "
                   f"{errs}; {r['rps']:.0f} req/s ({r['rps'] / d['rps']:.2f}x direct)"
                   + (f", proxy peak RSS {f((r.get('proxy') or {}).get('peak_rss_mb'), 0)} MB" if r.get("proxy") else "")
                   + ".")
    names = list(levels[top])
    hit_ranges = []
    for name in names:
        rates = [levels[lv][name]["hit_rate"] for lv in levels if name in levels[lv]]
        hit_ranges.append(f"{name} {min(rates):.0%}-{max(rates):.0%}")
    out.append("- Prefix-cache hit rate across the stand-ins, lowest to highest over the levels: "
               + "; ".join(hit_ranges) + ".")
    cancel = result.get("cancel")
    if cancel:
        for name, r in cancel["runs"].items():
            errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "no errors"
            out.append(f"- After {cancel['cancels']} streams cut by their client, {name}: {r['ok']} of {r['requests']} "
                       f"requests completed ({errs}), spread over the stand-ins as "
                       f"{'/'.join(str(n) for n in r['per_server_requests'])}.")
    cpus = result["host"]["cpus"]
    full = [lv for lv in levels if (levels[lv]["direct"].get("machine_cores_busy") or 0) >= 0.95 * cpus]
    if full:
        out.append(f"- At concurrency {', '.join(full)} the machine's cores were busy throughout even the direct run "
                   "(see the last column): TTFT there includes waiting for CPU, and \"added vs direct\" includes "
                   "the CPU the proxy takes from the client and the stand-ins, not only its own forwarding.")
    others = [f"{lv} {name} {r['machine_cores_busy'] - r['bench_cores_busy']:.2f}" for lv in levels
              for name, r in levels[lv].items()
              if r.get("bench_cores_busy") is not None and r["machine_cores_busy"] - r["bench_cores_busy"] > 0.25]
    if others:
        out.append("- Other work on the machine took more than a quarter of a core during these runs (level, target, "
                   f"cores): {'; '.join(others)}. Their figures are the least comparable.")
    busy = [f"{lv}: {f(levels[lv]['direct'].get('machine_cores_busy'), 2)}" for lv in levels]
    out.append(f"- Cores busy on the whole machine during direct, by level: {', '.join(busy)} of "
               f"{result['host']['cpus']}. The client, the stand-ins and the proxy share them, so when they are "
               "full a proxy's own CPU comes out of everyone's time, and its throughput ratio says how much "
               "CPU it needs per request on this machine as much as how fast it forwards.")
    return out


def render_section(result: Result) -> str:
    s, host = result["settings"], result["host"]
    git = result.get("git") or {}
    lines = [
        BEGIN,
        "## The model-aware gateway against direct and vllm-router (issue 13)",
        "",
        f"`{result['command']}`, run {result['started']} (commit {git.get('commit', '-')}"
        + (f", gateway code modified in the working tree: files' digest {git.get('gateway_sha256', '-')}"
           if git.get("gateway_dirty") else "")
        + f"), vllm-router {result.get('vllm_router_version') or '-'}. Machine: {host['cpus']} CPUs, "
        + ("pinned (`--pin`): the proxy alone on the last CPU, the load generator and the stand-ins on the others; "
           if result.get("pinned") else "shared by the load generator, the stand-ins and the proxy; ")
        + "other work on the machine (another engineer's tests) shares them too: load average "
        f"at start {', '.join(f'{x:.2f}' for x in host['loadavg_start'])}. The numbers are noisy; each run's "
        "load average is in the JSON.",
        "",
        (f"{s['servers']} stand-in servers (bench/gateway_standin.py, aiohttp): {s['tokens']} tokens per answer, "
        f"{s['delay_ms']:g} ms apart, after a simulated prefill of {s['miss_ms']:g} ms on a prefix-cache miss and "
        f"{s['hit_ms']:g} ms on a hit; each keeps an LRU of {s['cache']} prompt prefixes (the first 256 characters "
        f"of the messages). The workload: {s['prompts']} shared system prompts of about 1.5 KB, drawn uniformly, each "
        "followed by a distinct user turn; streaming chat completions at a fixed concurrency from one aiohttp "
        "process (bench/gateway_load.py), with a warm-up wave first; every target gets the same requests. "
        "**direct** is that client spreading requests round-robin over the stand-ins itself. "
        "TTFT is to the first content chunk; \"TTFT - prefill\" subtracts the prefill the stand-in reports it "
        "simulated, so that a policy's cache hits do not hide what the proxy adds; \"added vs direct\" is the "
        "difference of those percentiles. \"gateway's own added\" is the gateway's histogram "
         "`gemma_gateway_added_latency_seconds` (its time before the request leaves and in passing the answer's "
         "head on) over the run, as the upper bounds of the buckets p50 and p99 fall in. Proxy CPU and peak RSS are the gateway's or vllm-router's process "
        "(/proc), over the measured requests; machine cores busy is /proc/stat over the same window, in brackets the part of the "
         "client, the stand-ins and the proxy (the rest is other work on the machine)."),
    ]
    for level, runs in result["levels"].items():
        lines += ["", f"### Concurrency {level}", "", level_table(runs)]
    cancel = result.get("cancel")
    if cancel:
        lines += ["", f"### Concurrency {cancel['level']} right after {cancel['cancels']} streams cut by their client",
                  "", (f"After the warm-up, {cancel['cancels']} requests, one after another, whose client reads 3 "
                      "chunks and closes its connection (a user pressing stop); then the same measured requests as "
                      "the level above, within the next seconds."), "", cancel_table(cancel)]
    lines += ["", "### What these numbers say", "", *reading(result), "", END]
    return "\n".join(lines)
