"""Contracts with the installed hub clients that our code depends on but the clients do not document.

Where a client leaves a partial file when its process dies mid-file, and under which name: hf_resume.py
finishes Hugging Face's partial files (the client itself never reuses them), and progress.py and
stall.py find both clients' partial files by these names. A client release that changes them must fail
here instead of silently restarting every killed download from byte 0 (see the pins in pyproject.toml).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.download.conftest import Case, wait_until
from gemma_operator.download.hf_resume import _partials
from gemma_operator.download.listing import Listing, RepoFile
from gemma_operator.download.stall import in_progress

pytestmark = pytest.mark.timeout(120)
SHARD = "model-00001-of-00002.safetensors"
MIB = 1024 * 1024


def listing_of(case: Case) -> Listing:
    """The listing as our sources build it: every sha256 on ModelScope, LFS sha256 or git oid on HF."""
    repo = case.repo
    return Listing(tuple(
        RepoFile(p, len(b), sha256=repo.sha256(p)) if case.source == "modelscope" or repo.is_lfs(p)
        else RepoFile(p, len(b), git_oid=repo.git_oid(p)) for p, b in sorted(repo.files.items())))


def killed_mid_file(case: Case) -> Path:
    """Run the real downloader until the shard has 1 MiB on disk, SIGKILL it; the partial file left."""
    case.hub.faults.stall_at(SHARD, MIB + 200 * 1024)  # the hub sends no further: the file stays partial
    downloader = case.start()

    def only_the_shard_partial() -> bool:
        others_done = all((case.model_dir / p).is_file() for p in case.repo.files if p != SHARD)
        return others_done and any(p.stat().st_size >= MIB for p in case.model_dir.rglob("*.incomplete"))

    wait_until(only_the_shard_partial, 30, "the other files done and 1 MiB of the shard in a partial file")
    downloader.kill()
    [left] = [p for p in case.model_dir.rglob("*") if p.is_file() and p.name.endswith(".incomplete")]
    return left


@pytest.mark.parametrize("case", ["huggingface"], indirect=True)
def test_huggingface_leaves_a_process_unique_partial_that_hf_resume_finds(case: Case) -> None:
    from huggingface_hub._local_folder import get_local_download_paths

    entry = RepoFile(SHARD, len(case.repo.files[SHARD]), sha256=case.repo.sha256(SHARD))

    left = killed_mid_file(case)

    # "<hash>.<etag>.incomplete" is what the client's own paths name; since 1.18 it inserts a random id
    # before ".incomplete" per process, and does not reuse the file in a later process.
    shared = get_local_download_paths(case.model_dir, SHARD).incomplete_path(entry.sha256 or "")
    assert left.parent == case.model_dir / ".cache" / "huggingface" / "download"
    assert re.fullmatch(re.escape(shared.stem) + r"\.[0-9a-f]{8}\.incomplete", left.name), left.name
    assert _partials(case.model_dir, entry) == [left]
    assert in_progress(str(case.model_dir), listing_of(case)) == [(entry, left.stat().st_size)]


@pytest.mark.parametrize("case", ["modelscope"], indirect=True)
def test_modelscope_leaves_its_partial_next_to_the_target(case: Case) -> None:
    entry = RepoFile(SHARD, len(case.repo.files[SHARD]), sha256=case.repo.sha256(SHARD))

    left = killed_mid_file(case)

    assert left == case.model_dir / f"{SHARD}.incomplete"
    assert in_progress(str(case.model_dir), listing_of(case)) == [(entry, left.stat().st_size)]
