"""Issue 15, fast restarts: vLLM's compile cache lives on the cache volume, so a second server start (a
restarted pod, another replica) reuses what the first compiled.

Both starts run the operator's rendered command WITHOUT the harness's --enforce-eager (only the CPU build's
fixed KV cache size is added), so vLLM really runs torch.compile. They share one local directory standing for
the cache claim (the harness maps the writable subPath mount onto it) and nothing else: each start gets fresh
emptyDirs (/tmp), as a new pod would.

What vLLM 0.32 (CPU build) does there, read in its code and logs: the first start compiles and saves its AOT
artifact (`saved AOT compiled function to <VLLM_CACHE_ROOT>/torch_compile_cache/torch_aot_compile/<hash>/...`)
and the C++ kernels inductor built (`.../inductor_cache/**.so`). The second start finds them: on the CUDA
build it logs `Directly load AOT compilation from path ...`; the CPU build fails to deserialize that artifact
(`'function' object has no attribute 'finalize_loading'`, logged as "Compiling model again due to a load
failure") and traces again, but every kernel comes from the inductor cache: no new kernel is built, and the
engine's compile and warm-up take less than half as long (bench/compile_cache.py, docs/benchmarks.md).

Several writers (docs/architecture.md, "Several writers at once"): two servers start at the same moment on one
empty directory, each in a PID namespace of its own as in a pod, so their workers have the same pid and vLLM's
temporary name for the AOT artifact (`model.<pid>.tmp`) is the same in both. Both must become ready, leave no
temporary file, and leave an artifact that a third start deserializes (the CPU build then fails only at its
known finalize_loading bug, not at a damaged file) and kernels it builds none of.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gemma_operator import builders
from serving_harness import LocalServer, render, server_container, variant

pytestmark = [pytest.mark.serving, pytest.mark.timeout(900)]

CPU_COMPILE_ARGS = ["--kv-cache-memory-bytes", "64M"]  # the harness's CPU_ARGS without --enforce-eager
SAVED = re.compile(r"saved AOT compiled function to (\S+)")
KERNEL_SUFFIXES = (".so", ".cpp", ".py")
# A PID namespace per server, as each pod has: the servers' processes get the same pids, so vLLM's temporary
# name for its AOT artifact (`<artifact>.<pid>.tmp`) is the same in both, as it is for pods on one volume.
POD_LIKE = ["unshare", "--pid", "--fork", "--mount-proc"]
WORKER_PID = re.compile(r"\(Worker pid=(\d+)\)")
LOAD_FAILURE = re.compile(r"Compiling model again due to a load failure from \S+, reason: (.*)")
# What the CPU build of vLLM 0.32 says about its own, intact artifact: it deserializes it and verifies the
# traced source, then fails in finalize_loading. A damaged file fails before that ("Compile cache file
# corrupted", an unpickling error).
CPU_BUILD_LOAD_BUG = "'function' object has no attribute 'finalize_loading'"


def kernels(root: Path) -> dict[str, float]:
    """The compiled kernels under a compile cache directory: relative path -> mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("inductor_cache/**/*")
            if p.is_file() and p.name.endswith(KERNEL_SUFFIXES)}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return render(variant())


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-claim")


@pytest.fixture(scope="module")
def claims(manifest: dict, volume: Path) -> dict[str, Path]:
    [claim] = [v["persistentVolumeClaim"]["claimName"] for v in manifest["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in v]
    return {claim: volume}


@pytest.fixture(scope="module")
def cache_dir(manifest: dict, volume: Path) -> Path:
    [mount] = [m for m in server_container(manifest)["volumeMounts"] if m["mountPath"] == builders.COMPILE_CACHE_MOUNT]
    return volume / mount["subPath"]


@pytest.fixture(scope="module")
def first(start_server, manifest, claims, cache_dir) -> Iterator[tuple[LocalServer, dict[str, float]]]:
    s = start_server(manifest, extra_cpu_args=CPU_COMPILE_ARGS, claims=claims)
    s.stop()  # a pod going away; what it compiled stays on the volume
    yield s, kernels(cache_dir)


@pytest.fixture(scope="module")
def second(first, start_server, manifest, claims) -> Iterator[LocalServer]:
    s = start_server(manifest, extra_cpu_args=CPU_COMPILE_ARGS, claims=claims)
    yield s
    s.stop()


def test_the_rendered_pod_keeps_vllm_cache_root_on_the_cache_volume(manifest: dict) -> None:
    c = server_container(manifest)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_CACHE_ROOT"] == builders.COMPILE_CACHE_MOUNT
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == builders.COMPILE_CACHE_MOUNT]
    assert mount["name"] == "model-cache" and re.fullmatch(r"\.vllm-compile-cache/[0-9a-f]{16}", mount["subPath"])
    assert "--enforce-eager" not in c["args"]


def test_the_first_start_compiles_into_the_volume(first, cache_dir: Path) -> None:
    server, compiled = first
    log = server.log_path.read_text(errors="replace")
    saved = SAVED.findall(log)
    assert saved, f"vLLM saved no compiled artifact:\n{server.log_tail()}"
    assert all(Path(p).is_relative_to(cache_dir) and Path(p).is_file() for p in saved), (saved, cache_dir)
    assert compiled, f"no compiled kernel under {cache_dir}: {sorted(p.name for p in cache_dir.rglob('*'))[:20]}"


def test_the_second_start_reuses_the_compiled_kernels(first, second: LocalServer, cache_dir: Path) -> None:
    server, compiled = first
    log = second.log_path.read_text(errors="replace")
    assert str(cache_dir) in log, "the second start did not use the volume's compile cache"
    after = kernels(cache_dir)
    new = sorted(set(after) - set(compiled))
    rebuilt = sorted(k for k in compiled if after.get(k) != compiled[k])
    assert not new and not rebuilt, f"the second start compiled kernels again: new {new[:5]}, rebuilt {rebuilt[:5]}"
    # CUDA: "Directly load AOT compilation"; the CPU build of 0.32 cannot load its AOT artifact and retraces.
    assert "Directly load AOT compilation" in log or "Compiling model again due to a load failure" in log, (
        second.log_tail())
    print(f"\n[compile cache] first start ready in {server.ready_seconds:.1f} s, second in {second.ready_seconds:.1f} s; "
          f"{len(compiled)} kernel files reused")


# ---------------------------------------------------------------------------------- concurrent writers


@pytest.fixture(scope="module")
def together(start_server, manifest, tmp_path_factory) -> Iterator[tuple[list[LocalServer], dict[str, float], LocalServer, Path]]:
    """Two servers started at the same moment on one empty cache directory, each in a PID namespace of its
    own, both compiling and writing at once (the replicas of a new rollout); then a third start after both:
    (the two, their kernels when both had stopped, the third, the cache directory)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("PID namespaces need root and unshare (util-linux)")
    volume = tmp_path_factory.mktemp("cache-claim-together")
    [claim] = [v["persistentVolumeClaim"]["claimName"] for v in manifest["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in v]
    [mount] = [m for m in server_container(manifest)["volumeMounts"] if m["mountPath"] == builders.COMPILE_CACHE_MOUNT]
    claims, cache_dir = {claim: volume}, volume / mount["subPath"]

    def start() -> LocalServer:
        return start_server(manifest, extra_cpu_args=CPU_COMPILE_ARGS, claims=claims, wrap=POD_LIKE)

    with ThreadPoolExecutor(2) as pool:
        pair = [f.result() for f in [pool.submit(start), pool.submit(start)]]
    for s in pair:
        s.stop()
    compiled = kernels(cache_dir)
    third = start()
    yield pair, compiled, third, cache_dir
    third.stop()


def test_two_servers_compiling_into_one_directory_at_once_both_start_and_leave_it_whole(together) -> None:
    pair, compiled, third, cache_dir = together
    logs = [s.log_path.read_text(errors="replace") for s in pair]
    assert all(str(cache_dir) in log for log in logs), "a server did not use the volume's compile cache"
    assert compiled, f"no compiled kernel under {cache_dir}"
    # Nothing half-written is left behind: torch and vLLM write to a temporary name and rename.
    leftovers = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*") if p.name.endswith(".tmp"))
    assert not leftovers, leftovers
    # The artifact the two wrote is intact: the third start deserializes it and checks its traced source (then
    # the CPU build hits its known bug) instead of finding it corrupted; the CUDA build loads it.
    third_log = third.log_path.read_text(errors="replace")
    reasons = LOAD_FAILURE.findall(third_log)
    assert "Directly load AOT compilation" in third_log or reasons == [CPU_BUILD_LOAD_BUG], (reasons, third.log_tail())
    pids = [sorted(set(WORKER_PID.findall(log))) for log in logs]
    print(f"\n[compile cache] two at once: ready in {pair[0].ready_seconds:.1f} s and {pair[1].ready_seconds:.1f} s "
          f"(worker pids in their namespaces: {pids}); a third start after them: {third.ready_seconds:.1f} s")


def test_a_start_after_concurrent_writers_reuses_their_kernels(together) -> None:
    _, compiled, third, cache_dir = together
    assert str(cache_dir) in third.log_path.read_text(errors="replace"), "the third start did not use the cache"
    after = kernels(cache_dir)
    new = sorted(set(after) - set(compiled))
    rebuilt = sorted(k for k in compiled if after.get(k) != compiled[k])
    assert compiled and not new and not rebuilt, f"the third start compiled kernels again: new {new[:5]}, rebuilt {rebuilt[:5]}"
