"""Throughput of the downloader against a plain HTTP fetch of the same files from the same stand-in hub.

    .venv/bin/python bench/download_throughput.py [--shard-mb 100] [--shards 2] [--runs 3]

For each source (ModelScope, Hugging Face) a stand-in hub on 127.0.0.1 serves a generated repository of
about shards x shard-mb MB. The plain fetch is `requests` streaming each file to disk, one after another, in its own process.
The downloader is `python -m gemma_operator.download` as the Job runs it: process start, listing, the
real client's transfer, sha256 verification of every file and the manifest. The ratio is downloader
throughput / plain throughput (1.0 = as fast as a bare fetch). A third column runs the hub's client alone
(snapshot_download with its defaults, no verification) to show which part of the gap is the client's.
All times are wall-clock of a whole process, interpreter start included. Median of --runs runs each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "download"))

from hubs import HuggingFaceHub, ModelScopeHub, Repo, StandInHub, make_repo_files

SOURCES: dict[str, tuple[type[StandInHub], str, str]] = {
    "modelscope": (ModelScopeHub, "LLM-Research/gemma-3-bench", "master"),
    "huggingface": (HuggingFaceHub, "google/gemma-3-bench", "main"),
}


def file_url(source: str, hub: StandInHub, model_id: str, revision: str, repo: Repo, path: str) -> str:
    if source == "modelscope":
        return f"{hub.url}/api/v1/models/{model_id}/repo?Revision={revision}&FilePath={path}"
    return f"{hub.url}/{model_id}/resolve/{repo.commit}/{path}"


def fetch_urls(dest: Path, urls: list[str]) -> None:
    """The plain fetch: requests streaming each file to disk, one after another."""
    with requests.Session() as session:
        for i, url in enumerate(urls):
            with session.get(url, stream=True, timeout=60) as r:
                r.raise_for_status()
                with open(dest / f"file{i}", "wb") as fh:
                    fh.writelines(r.iter_content(1024 * 1024))


def plain_fetch(source: str, hub: StandInHub, model_id: str, revision: str, repo: Repo, dest: Path) -> float:
    # In its own process like the downloader, so neither competes with the hub's threads for the GIL.
    urls = [file_url(source, hub, model_id, revision, repo, path) for path in repo.files]
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--fetch-into", str(dest), *urls], check=True)
    return time.perf_counter() - start


_CLIENT_ALONE = """
import os, sys, tempfile
os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1", MODELSCOPE_CACHE=sys.argv[5],
                  MODELSCOPE_HOME=sys.argv[5], HF_HOME=sys.argv[5])
source, model_id, revision, endpoint, scratch = sys.argv[1:6]
if source == "modelscope":
    from modelscope.hub.snapshot_download import snapshot_download
    snapshot_download(model_id, revision=revision, local_dir=scratch + "/m", endpoint=endpoint)
else:
    from huggingface_hub import snapshot_download
    snapshot_download(model_id, revision=revision, local_dir=scratch + "/m", endpoint=endpoint, token=False)
"""


def client_alone(source: str, hub: StandInHub, model_id: str, revision: str, scratch: Path) -> float:
    """The hub's client by itself (snapshot_download, defaults), to tell its cost from ours."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _CLIENT_ALONE, source, model_id, revision, hub.url, str(scratch)],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def downloader(source: str, hub: StandInHub, model_id: str, revision: str, cache_root: Path) -> float:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    argv = [sys.executable, "-m", "gemma_operator.download", "--source", source, "--model-id", model_id,
            "--revision", revision, "--cache-root", str(cache_root), "--endpoint", hub.url,
            "--termination-log", str(cache_root / "termination-log")]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"downloader failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def bench(source: str, files: dict[str, bytes], runs: int) -> tuple[float, float, float]:
    hub_class, model_id, revision = SOURCES[source]
    repo = Repo(files)
    hub = hub_class({model_id: {revision: repo}}).start()
    plain, client, ours = [], [], []
    try:
        for _ in range(runs):
            scratch = Path(tempfile.mkdtemp(prefix="gemma-bench-"))
            try:
                (scratch / "plain").mkdir()
                (scratch / "client").mkdir()
                plain.append(plain_fetch(source, hub, model_id, revision, repo, scratch / "plain"))
                client.append(client_alone(source, hub, model_id, revision, scratch / "client"))
                ours.append(downloader(source, hub, model_id, revision, scratch / "models"))
            finally:
                shutil.rmtree(scratch)
    finally:
        hub.stop()
    return statistics.median(plain), statistics.median(client), statistics.median(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-mb", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fetch-into", help=argparse.SUPPRESS)
    args, urls = parser.parse_known_args()
    if args.fetch_into:
        return fetch_urls(Path(args.fetch_into), urls)
    files = make_repo_files(shard_bytes=args.shard_mb * 1024 * 1024, shards=args.shards)
    size_mb = sum(len(b) for b in files.values()) / 1e6
    print(f"repository: {len(files)} files, {size_mb:.1f} MB; median of {args.runs} runs; 127.0.0.1 stand-in hub")
    print(f"{'source':<12} {'plain MB/s':>11} {'client MB/s':>12} {'downloader MB/s':>16} "
          f"{'downloader/plain':>17} {'downloader/client':>18}")
    for source in SOURCES:
        plain, client, ours = bench(source, files, args.runs)
        print(f"{source:<12} {size_mb / plain:11.1f} {size_mb / client:12.1f} {size_mb / ours:16.1f} "
              f"{plain / ours:17.2f} {client / ours:18.2f}")


if __name__ == "__main__":
    main()
