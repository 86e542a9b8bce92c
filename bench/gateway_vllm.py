"""The model-aware gateway against direct and vllm-router, on two real vLLM CPU servers (issue 13).

    .venv/bin/python -m bench.gateway_vllm                    # levels 1, 64, 256, 1024
    .venv/bin/python -m bench.gateway_vllm --levels 1,64 --quick

Starts two vLLM servers (CPU build) of the tiny generated Gemma 3 model with the command line the operator
renders for gemma.yaml (tests/serving/serving_harness.py, which adds only the CPU build's flags), kept up for
the whole run. Then per level every target, a fresh process each (bench/gateway.py's start_target): direct
(the load generator round-robins itself), the gateway with PrefixHash and LeastLoaded, vllm-router
round_robin and cache_aware. The load is bench/gateway_load.py (streaming chat, shared system prompts) with
no warm-up and its own set of system prompts per run (same count and shape, other random text), since vLLM's
prefix cache cannot be reset between runs and must not favour a later one. The prefix-cache hit rate is
vLLM's own counters (hits / queries, in tokens), summed over both servers, read before and after the run.

Result: bench/results/gateway-vllm-<time>.json, bench/gateway_vllm.md and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bench.gateway as gw
from bench.gateway_report import spread
from bench.report import splice_section

sys.path.insert(0, str(gw.REPO / "tests" / "serving"))
import serving_harness as harness  # type: ignore[import-not-found]  # the tests' directory is not a package

BEGIN, END = "<!-- bench.gateway_vllm: begin -->", "<!-- bench.gateway_vllm: end -->"
AFTER = "<!-- bench.gateway: end -->"
SECTION = gw.REPO / "bench" / "gateway_vllm.md"
MODEL_DIR = Path("/tmp/gemma-bench/tiny-model")
TARGETS = ("direct", "gateway-prefixhash", "gateway-leastloaded", "vllm-router-round_robin",
           "vllm-router-cache_aware")
REQUESTS = {1: 40, 64: 256, 256: 512, 1024: 1024}
HITS, QUERIES, SUCCESS = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:request_success_total"


def start_servers(logs: Path) -> tuple[list[harness.LocalServer], list[str], dict[str, Any]]:
    venv = harness.install_vllm()
    if not (MODEL_DIR / "config.json").exists():
        harness.make_tiny_model(venv, MODEL_DIR)
    manifest = harness.render(harness.seed_body())
    c = harness.server_container(manifest)
    rendered = [*(c.get("command") or []), *(c.get("args") or [])]
    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # both at once: the start is mostly waiting on imports and probes
        futures = [pool.submit(harness.run_rendered_server, manifest, MODEL_DIR, venv=venv, workdir=logs / f"vllm-{i}")
                   for i in range(2)]
        servers = [f.result() for f in futures]
    setup = {"rendered": rendered, "cpu_args": harness.CPU_ARGS, "local_argv": servers[0].argv,
             "ready_seconds": [round(s.ready_seconds, 1) for s in servers], "both_ready_seconds":
             round(time.monotonic() - t0, 1), "served_model_name": harness.flag_value(rendered, "--served-model-name"),
             "max_model_len": harness.flag_value(rendered, "--max-model-len"), "cache_config": cache_config(servers[0])}
    return servers, [s.base_url for s in servers], setup


def cache_config(server: harness.LocalServer) -> dict[str, str]:
    """vLLM's vllm:cache_config_info labels that say whether and how prefix caching runs."""
    line = next(x for x in gw.get(server.base_url + "/metrics").decode().splitlines()
                if x.startswith("vllm:cache_config_info{"))
    labels = dict(kv.split("=", 1) for kv in line.split("{", 1)[1].rsplit("}", 1)[0].split('",'))
    keep = ("enable_prefix_caching", "block_size", "kv_cache_size_tokens", "prefix_caching_hash_algo")
    return {k: labels[k].strip('"') for k in keep if k in labels}


def counters(urls: list[str]) -> list[dict[str, float]]:
    """Per server: the prefix-cache counters and finished requests (summed over their labels)."""
    out = []
    for url in urls:
        sums: dict[str, float] = {}
        for line in gw.get(url + "/metrics", timeout=10).decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in (HITS, QUERIES, SUCCESS):
                sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        out.append(sums)
    return out


def servers_cpu(servers: list[harness.LocalServer]) -> float:
    total = 0.0
    for s in servers:
        for pid in s.pids():
            try:
                total += gw.proc_reading(pid)["cpu_seconds"]
            except (OSError, IndexError, ValueError):
                pass
    return total


def run_once(procs: gw.Procs, target: gw.Target, level: int, base: int, servers: list[harness.LocalServer],
             args: argparse.Namespace) -> dict[str, Any]:
    name = f"{target.name}-{level}"
    out = procs.logs / f"load-{name}.json"
    n = min(REQUESTS.get(level, max(40, level)), args.max_requests)
    prompts = max(8, n // 4)  # a prompt drawn ~4 times: its first request on a replica is a miss
    cmd = [gw.PY, "-m", "bench.gateway_load", "--concurrency", str(level), "--requests", str(n), "--warmup", "0",
           "--max-seconds", str(args.max_seconds), "--request-timeout", str(args.request_timeout),
           "--prompts", str(prompts), "--prompt-base", str(base), "--max-tokens", str(args.max_tokens),
           "--expect-tokens", "1", "--model", args.model, "--out", str(out)]
    for url in target.urls:
        cmd += ["--url", url]
    urls = [s.base_url for s in servers]
    loadavg = os.getloadavg()
    gen = procs.start(f"load-{name}", cmd, stdout=subprocess.PIPE)
    before, after, peak = gw.measure(
        procs, gen, name, target, lambda: (counters(urls), gw.readings(target, []), servers_cpu(servers)),
        args.max_seconds + args.request_timeout + 60)
    return summarize(json.loads(out.read_text()), before, after, peak) | {
        "loadavg_start": loadavg, "loadavg_end": os.getloadavg(), "prompts": prompts, "prompt_base": base}


def summarize(load: dict[str, Any], before: tuple[Any, ...], after: tuple[Any, ...], rss_peak: float) -> dict[str, Any]:
    records = load["records"]
    ok = [r for r in records if r[4] is None]
    wall = load["wall_seconds"]
    delta = [{k: a.get(k, 0.0) - b.get(k, 0.0) for k in (HITS, QUERIES, SUCCESS)} for b, a in zip(before[0], after[0])]
    hits, queries = sum(d[HITS] for d in delta), sum(d[QUERIES] for d in delta)
    proxy = None
    if before[1]["proxy"] and after[1]["proxy"]:
        proxy = {"cpu_seconds": after[1]["proxy"]["cpu_seconds"] - before[1]["proxy"]["cpu_seconds"],
                 "peak_rss_mb": max(rss_peak, after[1]["proxy"]["rss_mb"])}
    ttfts = [r[0] for r in ok if r[0] is not None]
    return {
        "sent": load["started"], "planned": load["requests_planned"], "ok": len(ok),
        "errors_total": len(records) - len(ok), "errors": dict(Counter(r[4] for r in records if r[4] is not None)),
        "cut_by_time": load["cut_by_time"], "wall_seconds": wall,
        "ttft_ms": spread(ttfts) | {"mean": sum(ttfts) / len(ttfts) if ttfts else None},
        "rps": len(ok) / wall if wall else 0.0, "chunks_per_second": sum(r[3] for r in ok) / wall if wall else 0.0,
        "prefix_cache_hits": hits, "prefix_cache_queries": queries, "hit_rate": hits / queries if queries else None,
        "per_server_requests": [int(d[SUCCESS]) for d in delta], "proxy": proxy,
        "servers_cpu_seconds": after[2] - before[2], "client_cpu_seconds": load["client_cpu_seconds"],
        "records": records,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    logs = gw.RESULTS / f"gateway-vllm-{started}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = gw.Procs(logs)
    result: dict[str, Any] = {
        "started": started, "command": " ".join([".venv/bin/python -m bench.gateway_vllm", *sys.argv[1:]]),
        "host": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}, "git": gw.git_state(),
        "settings": {k: v for k, v in vars(args).items() if k != "render"}, "levels": {},
    }
    servers: list[harness.LocalServer] = []
    try:
        servers, urls, result["setup"] = start_servers(logs)
        args.model = result["setup"]["served_model_name"]
        gw.MODEL = args.model  # bench.gateway.start_target routes this model name (the servers' served name)
        print(f"vLLM servers ready in {result['setup']['ready_seconds']} s: {urls}", flush=True)
        result["vllm_router_version"] = gw.router_version(args)
        for li, level in enumerate(args.levels):
            result["levels"][str(level)] = runs = {}
            for ti, name in enumerate(args.targets):
                print(f"level {level}: {name} ...", flush=True)
                try:
                    target = gw.start_target(procs, name, urls, args)
                    try:
                        runs[name] = r = run_once(procs, target, level, 1000 * (li * len(TARGETS) + ti + 1), servers, args)
                    finally:
                        if target.proc:
                            procs.stop(target.proc)
                except RuntimeError as err:  # one target failing (e.g. its load generator killed) is recorded
                    result.setdefault("failures", []).append(f"{name} at {level}: {err}")
                    print(f"  failed: {err}", flush=True)
                    continue
                print(f"  {r['ok']}/{r['sent']} ok, errors {r['errors']}, {r['rps']:.1f} req/s, TTFT mean "
                      f"{f(r['ttft_ms']['mean'])} p99 {f(r['ttft_ms']['p99'])} ms, hit rate {pct(r['hit_rate'])}", flush=True)
    except KeyboardInterrupt as err:  # a partial run is still written, marked as such
        result["aborted"] = str(err) or "interrupted"
    finally:
        procs.stop_all()
        for s in servers:
            s.stop()
    result["host"]["loadavg_end"] = os.getloadavg()
    result["logs"] = str(logs.relative_to(gw.REPO))
    return result


def f(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def level_table(runs: dict[str, Any]) -> str:
    direct = runs.get("direct", {}).get("rps") or 0.0
    head = ("| target | ok / sent (planned) | errors | TTFT mean / p50 / p99 (ms) | req/s (vs direct) | chunks/s | "
            "TTFT > 500 ms | prefix-cache hit rate (hits / queries, tokens) | requests per server | proxy CPU s | "
            "proxy peak RSS (MB) | load avg (1 min) at start |")
    rows = [head, "|" + "---|" * 12]
    for name, r in runs.items():
        t, p = r["ttft_ms"], r["proxy"] or {}
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        ratio = f" ({r['rps'] / direct:.2f}x)" if direct else ""
        rows.append(f"| {name} | {r['ok']}/{r['sent']} ({r['planned']}){' cut by time' if r['cut_by_time'] else ''} | "
                    f"{errors} | {f(t['mean'])} / {f(t['p50'])} / {f(t['p99'])} | {r['rps']:.1f}{ratio} | "
                    f"{r['chunks_per_second']:.0f} | {pct(slow_share(r))} | {pct(r['hit_rate'])} ({r['prefix_cache_hits']:.0f} / "
                    f"{r['prefix_cache_queries']:.0f}) | {'/'.join(map(str, r['per_server_requests']))} | "
                    f"{f(p.get('cpu_seconds'))} | {f(p.get('peak_rss_mb'), 0)} | {r['loadavg_start'][0]:.2f} |")
    return "\n".join(rows)


def slow_share(r: dict[str, Any]) -> float | None:
    """Share of the successful requests whose first chunk took over 500 ms (the stalls, see the note)."""
    ttfts = [x[0] for x in r["records"] if x[4] is None and x[0] is not None]
    return sum(t > 500 for t in ttfts) / len(ttfts) if ttfts else None


def reading(result: dict[str, Any], tag: bool = False) -> list[str]:
    """Strictly what the numbers show: PrefixHash against round-robin (vllm-router's, and the client's own)."""
    out = []
    for level, runs in result["levels"].items():
        ph = runs.get("gateway-prefixhash")
        if not ph:
            continue
        for rr_name in ("vllm-router-round_robin", "direct"):
            rr = runs.get(rr_name)
            if not rr or ph["hit_rate"] is None or rr["hit_rate"] is None:
                continue
            hit = "higher" if ph["hit_rate"] > rr["hit_rate"] else "not higher"
            m1, m2 = ph["ttft_ms"]["mean"], rr["ttft_ms"]["mean"]
            ttft = "-" if m1 is None or m2 is None else ("lower" if m1 < m2 else "not lower")
            out.append(f"- {'run ' + result['started'] + ', ' if tag else ''}concurrency {level}, gateway PrefixHash vs {rr_name}: hit rate {pct(ph['hit_rate'])} vs "
                       f"{pct(rr['hit_rate'])} ({hit}); mean TTFT {f(m1)} vs {f(m2)} ms ({ttft}); "
                       f"{ph['ok']}/{ph['sent']} vs {rr['ok']}/{rr['sent']} ok; PrefixHash's requests per server "
                       f"{'/'.join(map(str, ph['per_server_requests']))}.")
    return out


def stall_note(result: dict[str, Any]) -> str:
    """The TTFT caution, with the concurrency-1 numbers it rests on."""
    first: dict[str, Any] = next(iter(result["levels"].values()), {})
    evidence = "; ".join(f"{n} {'/'.join(map(str, r['per_server_requests']))} with {pct(slow_share(r))} over 500 ms"
                         for n, r in first.items())
    return (
        "A caution on TTFT: a request takes either tens of milliseconds or up to about a second (column TTFT > 500 ms), "
        f"and the slow ones come with switching servers (requests per server at the lowest level: {evidence}). Our "
        "reading of vLLM's code (not measured on its own): after each step a server's worker busy-polls its "
        "shared-memory queue for 1 s (vllm/distributed/device_communicators/shm_broadcast.py, SpinCondition "
        "busy_loop_s=1), so on these 2 shared CPUs the server that just answered holds a core while the other one "
        "computes. A policy that keeps traffic on one server at low concurrency therefore gets a lower TTFT here for a "
        "reason that is not its cache hits; the hit rate column is the cache effect. PrefixHash is consistent hashing "
        "with bounded load (a server takes a request while its in-flight count is under 1.25 times the mean): where "
        "its requests per server depart from the hash's split of the prompts, requests spilled from the server that "
        "answered slower, and those spills are misses.")


def prompt_tokens(result: dict[str, Any]) -> float:
    runs = [r for level in result["levels"].values() for r in level.values()]
    sent = sum(r["sent"] for r in runs)
    return sum(r["prefix_cache_queries"] for r in runs) / sent if sent else 0.0


def header(result: dict[str, Any]) -> str:
    host, git = result["host"], result["git"]
    dirty = f", gateway code modified in the working tree: digest {git['gateway_sha256']}" if git["gateway_dirty"] else ""
    loads = [", ".join(f"{x:.2f}" for x in host.get(k, ())) for k in ("loadavg_start", "loadavg_end")]
    partial = f" **Partial run: {result['aborted']}.**" if result.get("aborted") else ""
    return (f"`{result['command']}`, run {result['started']} (commit {git['commit']}{dirty}), vllm-router "
            f"{result.get('vllm_router_version') or '-'}. Machine: {host['cpus']} CPUs shared by both vLLM servers, the "
            f"proxy, the load generator and other work (another engineer's); load average at start {loads[0]}, at end "
            f"{loads[1]}. Each run's load average is in the table and the JSON; the numbers are noisy.{partial}")


def setup_text(result: dict[str, Any]) -> str:
    s = result["setup"]
    cc = s["cache_config"]
    return (f"Setup: two vLLM servers (CPU build) of the tiny generated Gemma 3 model (tests/serving/make_tiny_gemma.py: "
            f"2 layers, hidden size 64, vocabulary 512, random weights), each started with the command the operator "
            f"renders for gemma.yaml, `{' '.join(s['rendered'])}`, plus only the harness's local changes (model "
            f"directory, port, 127.0.0.1) and CPU-build flags `{' '.join(s['cpu_args'])}`. Ready in "
            f"{' and '.join(map(str, s['ready_seconds']))} s (started together), up for the whole run. Prefix caching: "
            f"not in the rendered command; vLLM's default, on (`vllm:cache_config_info`: enable_prefix_caching="
            f"{cc.get('enable_prefix_caching')}, block size {cc.get('block_size')} tokens, KV cache "
            f"{cc.get('kv_cache_size_tokens')} tokens per server, so nothing of a run is evicted: a miss is a prompt's "
            "first visit to a replica, or a request sent while the same prompt's first one was still in prefill).")


def load_text(result: dict[str, Any]) -> str:
    st, block = result["settings"], result["setup"]["cache_config"].get("block_size")
    return (f"Load (bench/gateway_load.py, one aiohttp process): streaming chat completions, max_tokens "
            f"{st['max_tokens']}; each request a shared system prompt of about 1.5 KB, drawn uniformly from a set of "
            f"max(8, requests / 4) prompts, then a distinct short user turn: {prompt_tokens(result):.0f} prompt tokens "
            f"per request on average (vLLM's queries / requests sent), several {block}-token KV blocks; no warm-up. "
            "vLLM's prefix cache cannot be reset between runs, so every run (target x level) gets its own set of "
            "system prompts, same count and shape, other random text: no run finds an earlier one's prompts cached. "
            f"Requests per level: at most {', '.join(f'{k}: {v}' for k, v in REQUESTS.items())}, none started after "
            f"{st['max_seconds']:.0f} s, each with a {st['request_timeout']:.0f} s timeout. Targets, each a fresh "
            "process per level: direct (the client round-robins over the two servers itself), our gateway "
            "(`--static-route`) with PrefixHash and LeastLoaded, vllm-router round_robin and cache_aware. Hit rate is "
            f"vLLM's `{HITS}` / `{QUERIES}` (tokens), the difference over the run, summed over both servers; requests "
            f"per server is `{SUCCESS}`. TTFT is to the first streamed chunk (vLLM sends its role chunk once the first "
            "token is out). chunks/s counts streamed content chunks (about one per token).")


def repeat_table(results: list[dict[str, Any]]) -> str:
    """Hit rate and mean TTFT of each target and level in every run given: how much a second run moves them."""
    rows = ["| level | target | " + " | ".join(f"run {r['started']}: hit rate, mean TTFT (ms)" for r in results) + " |",
            "|" + "---|" * (2 + len(results))]
    for level, runs in results[0]["levels"].items():
        for name in runs:
            cells = [(r["levels"].get(level) or {}).get(name) for r in results]
            rows.append(f"| {level} | {name} | " + " | ".join(
                f"{pct(c['hit_rate'])}, {f(c['ttft_ms']['mean'])}" if c else "-" for c in cells) + " |")
    return "\n".join(rows)


def render_section(result: dict[str, Any], others: list[dict[str, Any]] | None = None) -> str:
    lines = [BEGIN, "## The gateway on two real vLLM CPU servers (issue 13)", "", header(result), "",
             setup_text(result), "", load_text(result), ""]
    for level, runs in result["levels"].items():
        lines += [f"### Concurrency {level}", "", level_table(runs), ""]
    if others:
        lines += ["### Other runs of the same benchmark", "",
                  "The same command (with `--no-doc`) run again; its JSON is beside this run's in bench/results.", "",
                  repeat_table([result, *others]), ""]
    lines += ["### What the numbers say", "", *reading(result, bool(others)), *(line for o in others or [] for line in reading(o, True)),
              "", stall_note(result), "", END]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    doc = gw.DOC.read_text()
    if BEGIN not in doc and AFTER in doc:  # first time: right after the stand-in benchmark's section
        doc = doc.replace(AFTER, AFTER + "\n\n" + BEGIN + "\n" + END, 1)
    gw.DOC.write_text(splice_section(doc, section, BEGIN, END))
    SECTION.write_text(section + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.gateway_vllm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default=None, help="concurrency levels (default 1,64,256,1024; --quick: 1,16)")
    p.add_argument("--quick", action="store_true", help="few requests, no doc: a smoke check")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--max-tokens", type=int, default=12)
    p.add_argument("--max-seconds", type=float, default=60.0, help="a run starts no request after this")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--max-requests", type=int, default=1024, help="cap of the requests per run")
    p.add_argument("--vllm-router", default=gw.VLLM_ROUTER)
    p.add_argument("--render", metavar="JSON", help="only print and write the section of this result")
    p.add_argument("--also", metavar="JSON", action="append", default=[],
                   help="with --render: other runs' results, shown in a table of hit rate and mean TTFT beside it")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in (args.levels or ("1,16" if args.quick else "1,64,256,1024")).split(",")]
    args.targets = [t for t in args.targets.split(",") if t]
    if set(args.targets) - set(TARGETS):
        p.error(f"--targets: unknown {sorted(set(args.targets) - set(TARGETS))}")
    if args.quick:
        args.max_requests, args.max_seconds = min(args.max_requests, 32), min(args.max_seconds, 20.0)
    # bench.gateway.start_target reads these: no wrapper; no pinning (two vLLM servers share the 2 CPUs anyway).
    args.gateway_wrapper, args.pin, args.model = None, False, ""
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, gw.interrupted)
    if args.render:
        result = json.loads(Path(args.render).read_text())
    else:
        result = run(args)
        out = gw.RESULTS / f"gateway-vllm-{result['started']}.json"
        out.write_text(json.dumps(result) + "\n")
        print(f"wrote {out.relative_to(gw.REPO)}")
    section = render_section(result, [json.loads(Path(x).read_text()) for x in args.also])
    print(section)
    if not args.no_doc and not args.quick:
        write_doc(section)
        print(f"wrote {SECTION.relative_to(gw.REPO)} and its section in {gw.DOC.relative_to(gw.REPO)}")


if __name__ == "__main__":
    main()
