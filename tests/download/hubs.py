"""Stand-in model hubs on 127.0.0.1 for the real ModelScope and Hugging Face clients.

Each hub is a threaded http.server that implements exactly the endpoints the installed clients call (read
from their source: modelscope_hub's LegacyClient/DownloadManager, huggingface_hub's HfApi/hf_hub_download),
serves a small generated model repository, records every request, and injects faults on demand: a
dropped connection after N bytes, a connection held open mid-file without sending, 5xx answers, 401/403, unknown model or revision, ModelScope's HTTP 200
with "Success": false, and a throttled transfer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHUNK = 64 * 1024


# ---------------------------------------------------------------------------------------------------------
# The generated repository
# ---------------------------------------------------------------------------------------------------------
def _safetensors(name: str, payload: bytes) -> bytes:
    """A well-formed safetensors file holding one uint8 tensor of random bytes."""
    header = json.dumps({name: {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}})
    raw = header.encode().ljust(-(-len(header) // 8) * 8)
    return struct.pack("<Q", len(raw)) + raw + payload


def make_repo_files(shard_bytes: int = 1536 * 1024, shards: int = 2, seed: int = 0) -> dict[str, bytes]:
    """config.json, tokenizer files and `shards` safetensors shards of `shard_bytes` random bytes each."""
    rng = random.Random(seed)
    config = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
              "vocab_size": 512, "torch_dtype": "bfloat16"}
    vocab = {f"tok{i}_{rng.getrandbits(32):08x}": i for i in range(6000)}
    files: dict[str, bytes] = {
        "config.json": json.dumps(config, indent=2).encode(),
        "generation_config.json": json.dumps({"bos_token_id": 2, "eos_token_id": 1}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab}}).encode(),
        "tokenizer_config.json": json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}).encode(),
        "special_tokens_map.json": json.dumps({"pad_token": "<pad>"}).encode(),
    }
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        files[name] = _safetensors(f"layer{i}.weight", rng.randbytes(shard_bytes))
        weight_map[f"layer{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps({"weight_map": weight_map}).encode()
    return files


@dataclasses.dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1()
            for path in sorted(self.files):
                digest.update(path.encode() + hashlib.sha256(self.files[path]).digest())
            self.commit = digest.hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self.files.values())

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    def git_oid(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(".safetensors")


# ---------------------------------------------------------------------------------------------------------
# Request log and faults
# ---------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    kind: str  # "file" for file content, "api" for everything else
    status: int = 0
    bytes_sent: int = 0

    @property
    def range_start(self) -> int:
        value = self.headers.get("range", "")
        return int(value[len("bytes="):].split("-")[0]) if value.startswith("bytes=") else 0


@dataclasses.dataclass
class _Countdown:
    value: int
    times: int


class Faults:
    """Faults to inject; each is consumed as it fires. Safe to change while the hub serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drops: dict[str, _Countdown] = {}
        self._stalls: dict[str, int] = {}
        # Set when the hub stops: held connections then close, so that no handler thread outlives it.
        self.released = threading.Event()
        self._statuses: dict[str, _Countdown] = {}
        self.throttle_bps: int | None = None
        self.success_false = False
        self.empty_listing = False
        self.require_token: str | None = None
        self.forbidden = False
        # Files served with their last byte flipped: right size, wrong content.
        self.corrupt: set[str] = set()

    def drop_after(self, path: str, nbytes: int, times: int = 1) -> None:
        """Close the connection after `nbytes` of the body of `path`, for the next `times` requests."""
        with self._lock:
            self._drops[path] = _Countdown(nbytes, times)

    def stall_at(self, path: str, offset: int) -> None:
        """Send the headers and the body of `path` up to byte `offset` of the file, then nothing more while
        holding the connection open, on every request (a resumed one too) until the hub stops."""
        with self._lock:
            self._stalls[path] = offset

    def stall_offset(self, path: str) -> int | None:
        with self._lock:
            return self._stalls.get(path)

    def fail(self, status: int, kind: str = "api", times: int = 1_000_000) -> None:
        """Answer the next `times` requests of `kind` ("api" or "file") with `status`."""
        with self._lock:
            self._statuses[kind] = _Countdown(status, times)

    def take_drop(self, path: str) -> int | None:
        return self._take(self._drops, path)

    def take_status(self, kind: str) -> int | None:
        return self._take(self._statuses, kind)

    def _take(self, table: dict[str, _Countdown], key: str) -> int | None:
        with self._lock:
            entry = table.get(key)
            if entry is None or entry.times <= 0:
                return None
            entry.times -= 1
            return entry.value


class _Throttle:
    """One shared rate for all connections, so a throttled download's duration does not depend on how many
    files the client fetches in parallel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, nbytes: int, bps: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / bps
        if start > now:
            time.sleep(start - now)


class _Dropped(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------
class StandInHub:
    """Serves `repos` ({model_id: {revision: Repo}}) on `host`:`port` (default 127.0.0.1 and a free port)
    until stopped. The real node's pods reach a hub on 10.250.0.1, the host's end of the node's veth."""

    def __init__(self, repos: dict[str, dict[str, Repo]], host: str = "127.0.0.1", port: int = 0) -> None:
        self.repos = repos
        self.faults = Faults()
        self.log: list[LoggedRequest] = []
        self._log_lock = threading.Lock()
        self._bytes_sent = 0
        self._throttle = _Throttle()
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)

    # lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> StandInHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.faults.released.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # observations ----------------------------------------------------------------------------------------
    def file_requests(self) -> list[LoggedRequest]:
        with self._log_lock:
            return [r for r in self.log if r.kind == "file"]

    def file_bytes_sent(self) -> int:
        return sum(r.bytes_sent for r in self.file_requests())

    def clear_log(self) -> None:
        with self._log_lock:
            self.log.clear()

    # routing: subclasses map a request to (kind, handler) -------------------------------------------------
    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[str, Callable[[Any], None]]:
        raise NotImplementedError

    def authorized(self, headers: Any) -> bool:
        token = self.faults.require_token
        if token is None:
            return True
        cookie = headers.get("Cookie", "")
        return headers.get("Authorization") == f"Bearer {token}" or f"m_session_id={token}" in cookie

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._serve(self)

            def do_HEAD(self) -> None:
                hub._serve(self)

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        kind, handler = self.route(h.command, path, query)
        entry = LoggedRequest(h.command, path, query, {k.lower(): v for k, v in h.headers.items()}, kind)
        with self._log_lock:
            self.log.append(entry)
        h.hub_entry = entry  # type: ignore[attr-defined]
        status = self.faults.take_status(kind)
        try:
            if status is not None:
                self.send_json(h, status, {"Code": status, "Message": "injected failure", "Success": False})
            else:
                handler(h)
        except (_Dropped, BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    # responses -------------------------------------------------------------------------------------------
    def send_json(self, h: BaseHTTPRequestHandler, status: int, body: Any,
                  headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.hub_entry.status = status  # type: ignore[attr-defined]
        if h.command != "HEAD":
            h.wfile.write(data)

    def send_file(self, h: BaseHTTPRequestHandler, path: str, data: bytes,
                  headers: dict[str, str] | None = None) -> None:
        """The file's bytes, honouring `Range: bytes=N-` with a 206, throttled and dropped as configured."""
        start = h.hub_entry.range_start  # type: ignore[attr-defined]
        if start >= len(data) and start > 0:
            self.send_json(h, 416, {"Message": "range not satisfiable"},
                           {"Content-Range": f"bytes */{len(data)}"})
            return
        status = 206 if start > 0 else 200
        h.send_response(status)
        for key, value in {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                           **(headers or {})}.items():
            h.send_header(key, value)
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        h.hub_entry.status = status  # type: ignore[attr-defined]
        if h.command == "HEAD":
            return
        if path in self.faults.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        self._stream(h, path, data[start:])

    def _stream(self, h: BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        drop_after = self.faults.take_drop(path)
        entry: LoggedRequest = h.hub_entry  # type: ignore[attr-defined]
        stall_at = self.faults.stall_offset(path)
        if stall_at is not None:
            stall_at = max(0, stall_at - entry.range_start)  # the file's offset, in this body's bytes
            body = body[:stall_at]
        self._send_body(h, path, body, drop_after)
        if stall_at is not None:
            h.wfile.flush()
            self.faults.released.wait()
            raise _Dropped(path)

    def _send_body(self, h: BaseHTTPRequestHandler, path: str, body: bytes, drop_after: int | None) -> None:
        entry: LoggedRequest = h.hub_entry  # type: ignore[attr-defined]
        for offset in range(0, len(body), CHUNK):
            chunk = body[offset:offset + CHUNK]
            if drop_after is not None and entry.bytes_sent + len(chunk) > drop_after:
                chunk = chunk[: max(0, drop_after - entry.bytes_sent)]
            if self.faults.throttle_bps:
                self._throttle.wait(len(chunk), self.faults.throttle_bps)
            h.wfile.write(chunk)
            entry.bytes_sent += len(chunk)
            if drop_after is not None and entry.bytes_sent >= drop_after:
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
                raise _Dropped(path)

    def not_found(self, h: BaseHTTPRequestHandler) -> None:
        self.send_json(h, 404, {"Code": 404, "Message": "not found", "Success": False})


class ModelScopeHub(StandInHub):
    """GET /api/v1/models/{owner}/{name}/repo/files?Revision=R&Recursive=True (the listing) and
    GET /api/v1/models/{owner}/{name}/repo?Revision=R&FilePath=P (a file); the region probe 404s."""

    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[str, Callable[[Any], None]]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "models"] and len(parts) >= 6 and parts[5:] in (["repo"], ["repo", "files"]):
            model_id, is_listing = f"{parts[3]}/{parts[4]}", parts[5:] == ["repo", "files"]
            kind = "api" if is_listing else "file"
            return kind, lambda h: self._repo(h, model_id, query, is_listing)
        return "api", self.not_found

    def _repo(self, h: BaseHTTPRequestHandler, model_id: str, query: dict[str, str], is_listing: bool) -> None:
        if not self.authorized(h.headers):
            return self.send_json(h, 401, {"Code": 401, "Message": "Unauthorized, please log in", "Success": False})
        if self.faults.forbidden:
            return self.send_json(h, 403, {"Code": 403, "Message": "Access denied", "Success": False})
        revisions = self.repos.get(model_id)
        if revisions is None:
            return self.send_json(h, 404, {"Code": 404, "Message": f"Model {model_id} not exists", "Success": False})
        revision = query.get("Revision", "master")
        repo = revisions.get(revision)
        if repo is None:
            return self.send_json(h, 404, {"Code": 404, "Message": f"Revision {revision} not found",
                                           "Success": False})
        if is_listing:
            return self._listing(h, repo)
        file_path = query.get("FilePath", "")
        if file_path not in repo.files:
            return self.send_json(h, 404, {"Code": 404, "Message": f"File {file_path} not found", "Success": False})
        self.send_file(h, file_path, repo.files[file_path])

    def _listing(self, h: BaseHTTPRequestHandler, repo: Repo) -> None:
        if self.faults.success_false:
            # What the real hub sends for some failures: HTTP 200, no Data, Success false.
            return self.send_json(h, 200, {"Code": 10010205001, "Message": "repo is not available",
                                           "RequestId": "stand-in", "Success": False})
        files = [] if self.faults.empty_listing else [
            {"Name": p.rsplit("/", 1)[-1], "Path": p, "Type": "blob", "Size": len(b), "Sha256": repo.sha256(p),
             "Revision": repo.commit} for p, b in sorted(repo.files.items())]
        self.send_json(h, 200, {"Code": 200, "Data": {"Files": files}, "Message": "success",
                                "RequestId": "stand-in", "Success": True})


class HuggingFaceHub(StandInHub):
    """GET /api/models/{repo}/revision/{rev}, GET /api/models/{repo}/tree/{rev}?recursive=true and
    HEAD/GET /{repo}/resolve/{rev}/{file}, with X-Repo-Commit, ETag/X-Linked-Etag/X-Linked-Size and
    X-Error-Code as the real hub sends them."""

    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[str, Callable[[Any], None]]:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] in ("revision", "tree"):
            model_id, rev = f"{parts[2]}/{parts[3]}", parts[5]
            handler = self._info if parts[4] == "revision" else self._tree
            return "api", lambda h: self._with_repo(h, model_id, rev, handler)
        if len(parts) >= 5 and parts[2] == "resolve":
            model_id, rev, file_path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
            kind = "file" if method == "GET" else "api"
            return kind, lambda h: self._with_repo(h, model_id, rev, lambda h2, r: self._resolve(h2, r, file_path))
        return "api", self.not_found

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self.send_json(h, status, {"error": message}, headers)

    def _with_repo(self, h: BaseHTTPRequestHandler, model_id: str, rev: str,
                   handler: Callable[[BaseHTTPRequestHandler, Repo], None]) -> None:
        if not self.authorized(h.headers):
            if h.headers.get("Authorization"):
                return self._error(h, 401, None, "Invalid credentials in Authorization header")
            # Like the real hub: without a token a private or gated repository looks like a missing one.
            return self._error(h, 401, "RepoNotFound", "Repository not found")
        if self.faults.forbidden:
            return self._error(h, 403, None, "Access to this resource is forbidden")
        revisions = self.repos.get(model_id)
        if revisions is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        repo = revisions.get(rev) or next((r for r in revisions.values() if r.commit == rev), None)
        if repo is None:
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id: " + rev)
        handler(h, repo)

    def _info(self, h: BaseHTTPRequestHandler, repo: Repo) -> None:
        model_id = h.hub_entry.path.split("/")[3:5]  # type: ignore[attr-defined]
        self.send_json(h, 200, {"id": "/".join(model_id), "sha": repo.commit, "private": False,
                                "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, h: BaseHTTPRequestHandler, repo: Repo) -> None:
        entries = []
        for p, data in sorted(repo.files.items()):
            entry: dict[str, Any] = {"type": "file", "oid": repo.git_oid(p), "size": len(data), "path": p}
            if repo.is_lfs(p):
                entry["lfs"] = {"oid": repo.sha256(p), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self.send_json(h, 200, [] if self.faults.empty_listing else entries)

    def _resolve(self, h: BaseHTTPRequestHandler, repo: Repo, file_path: str) -> None:
        if file_path not in repo.files:
            return self._error(h, 404, "EntryNotFound", "Entry not found")
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{repo.git_oid(file_path)}"'}
        if repo.is_lfs(file_path):
            headers["X-Linked-Etag"] = f'"{repo.sha256(file_path)}"'
            headers["X-Linked-Size"] = str(len(repo.files[file_path]))
        self.send_file(h, file_path, repo.files[file_path], headers)
