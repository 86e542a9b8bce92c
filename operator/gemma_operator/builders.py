"""Pure builders: a parsed GemmaDeployment in, the manifests of its children out. No I/O here."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from . import paths, server_auth
from .download.errors import EXIT_ADAPTER_RANK, EXIT_PERMANENT, EXIT_USAGE
from .kinds import Manifest
from .settings import Settings
from .spec import API_VERSION, KIND, AdapterSpec, GemmaDeployment

PORT = 8000
PORT_NAME = "http"
SERVER_CONTAINER = "vllm"
DOWNLOAD_CONTAINER = "download"
MANAGED_BY = "gemma-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
DOWNLOAD_HASH_LABEL = "gemma.ai/download-hash"
# On a shared model cache (its claim, its download Job and their pods) and on the server pods that mount it:
# the claim's name (docs/model-cache.md).
CACHE_LABEL = "gemma.ai/cache"
# Set by a user on a shared cache claim: keep it when its last GemmaDeployment is deleted.
KEEP_ANNOTATION = "gemma.ai/keep"
TMP_DIR = "/tmp"

# The API-key guard of the servers (issue 12, gemma_operator/server_auth.py): vLLM's own VLLM_API_KEY check
# covers /v1 and a few other prefixes only (POST /invocations serves completions without a key), so with
# spec.apiKeySecretRef the servers also load this middleware, which needs the key on every route but the
# probes. Its source goes to the pods in a ConfigMap, mounted read-only and put on PYTHONPATH; vLLM's
# `--middleware` (an upstream flag, the same in the CUDA image) imports it.
AUTH_MODULE = "gemma_auth_middleware"
AUTH_MIDDLEWARE = f"{AUTH_MODULE}.RequireApiKey"
AUTH_DIR = "/etc/gemma-operator/auth"
AUTH_VOLUME = "auth-middleware"
AUTH_HASH_ANNOTATION = "gemma.ai/auth-middleware-hash"
# Read once at import: the builders stay pure functions of the spec.
AUTH_MIDDLEWARE_SOURCE = Path(server_auth.__file__).read_text(encoding="utf-8")
AUTH_MIDDLEWARE_HASH = hashlib.sha256(AUTH_MIDDLEWARE_SOURCE.encode()).hexdigest()[:16]

# vLLM's compile cache on the model cache volume (docs/architecture.md, "The compile cache of the servers"):
# VLLM_CACHE_ROOT is a writable subPath of the cache volume, one directory per compile_cache_key (image,
# command line, environment, GPU kind), mounted at COMPILE_CACHE_MOUNT; the model stays read-only at /models.
COMPILE_CACHE_DIR = ".vllm-compile-cache"
COMPILE_CACHE_MOUNT = "/var/cache/vllm"
COMPILE_CACHE_ANNOTATION = "gemma.ai/compile-cache"
CACHE_ROOT_ENV = "VLLM_CACHE_ROOT"

# Probe timing. vLLM opens its HTTP port only after the weights are loaded and the engine is up, and
# /health answers 200 from then on (it needs no API key). So:
# - the startup probe gives a loading model its whole budget (spec.vllm.startupTimeoutSeconds, 30 min by
#   default: a 4B model read from a network volume, plus CUDA graph capture, takes minutes) before the
#   kubelet may restart it, and liveness does not run until startup has succeeded;
# - readiness uses the same endpoint, so a pod gets Service traffic only once the model answers;
# - liveness tolerates about a minute of a busy server not answering before restarting it.
STARTUP_PERIOD_SECONDS = 10
PRE_STOP_SLEEP_SECONDS = 5
READINESS = {"periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3, "successThreshold": 1}
LIVENESS = {"periodSeconds": 15, "timeoutSeconds": 10, "failureThreshold": 4, "successThreshold": 1}

RESTRICTED_CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def labels(gd: GemmaDeployment, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "gemma",
        INSTANCE_LABEL: gd.name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def selector_labels(gd: GemmaDeployment) -> dict[str, str]:
    return {INSTANCE_LABEL: gd.name, COMPONENT_LABEL: "server"}


def owner_reference(gd: GemmaDeployment) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": gd.name,
        "uid": gd.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(gd: GemmaDeployment, name: str, component: str, owned: bool = True) -> Manifest:
    meta: Manifest = {"name": name, "namespace": gd.namespace, "labels": labels(gd, component)}
    if owned:
        meta["ownerReferences"] = [owner_reference(gd)]
    return meta


def shared_cache_name(gd: GemmaDeployment, settings: Settings) -> str:
    """The claim that every GemmaDeployment of a namespace naming the same model revision (source, id,
    revision, hub endpoint) and the same cache volume (size, class, access modes) shares: a volume that
    differs is another volume, never a conflict. ReadWriteOncePod is one pod at a time: nothing to share, so
    the key then holds the GemmaDeployment's name too. At most 45 characters (the Job adds -download)."""
    model, cache = gd.spec.model, gd.spec.cache
    key: list[Any] = [model.source, model.id, model.effective_revision, hub_endpoint(gd, settings),
                      cache.size, cache.storage_class_name or "", sorted(cache.access_modes)]
    if "ReadWriteOncePod" in cache.access_modes:
        key.append(gd.name)
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", model.id.rsplit("/", 1)[-1].lower())[:30].strip("-") or "model"
    return f"cache-{slug}-{digest}"


def with_shared_cache(gd: GemmaDeployment, settings: Settings) -> GemmaDeployment:
    """gd with its shared cache claim set; unchanged for an existingClaim or source pvc (no download)."""
    if gd.spec.cache.existing_claim or not gd.needs_download:
        return gd
    return gd.model_copy(update={"shared_cache": shared_cache_name(gd, settings)})


def shared_owner_reference(name: str, uid: str) -> Manifest:
    """One user of a shared cache. Not a controller reference (a shared object has no one controller): the
    garbage collector deletes the object when the last of its owners is gone, and only then."""
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid, "blockOwnerDeletion": True}


def cache_labels(gd: GemmaDeployment, component: str) -> dict[str, str]:
    """Labels of a shared cache's objects: its instance is the claim, not a GemmaDeployment."""
    return labels(gd, component) | {INSTANCE_LABEL: gd.shared_cache, CACHE_LABEL: gd.shared_cache}


def _cache_annotations(gd: GemmaDeployment) -> dict[str, str]:
    model = gd.spec.model
    return {"gemma.ai/source": model.source, "gemma.ai/model-id": model.id, "gemma.ai/revision": model.effective_revision}


def _shared_metadata(gd: GemmaDeployment, name: str, component: str, owners: list[Manifest] | None) -> Manifest:
    meta: Manifest = {"name": name, "namespace": gd.namespace, "labels": cache_labels(gd, component),
                      "annotations": _cache_annotations(gd)}
    if owners is None:
        owners = [shared_owner_reference(gd.name, gd.uid)]
    if owners:
        meta["ownerReferences"] = owners
    return meta


def build_cache_pvc(gd: GemmaDeployment, owners: list[Manifest] | None = None) -> Manifest | None:
    """The model cache volume; None when the user brings an existingClaim (never ours to touch). A shared
    cache (gd.shared_cache) is owned by `owners`, the GemmaDeployments that use it (default: gd alone; []
    = kept, owned by none)."""
    cache = gd.spec.cache
    if cache.existing_claim:
        return None
    spec: Manifest = {
        "accessModes": list(cache.access_modes),
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    if gd.shared_cache:
        if owners is None and cache.retain_on_delete:
            owners = []
        meta = _shared_metadata(gd, gd.shared_cache, "cache", owners)
        return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}
    # A retained cache carries no owner reference, so deleting the GemmaDeployment leaves it behind.
    meta = _metadata(gd, gd.cache_claim_name, "cache", owned=not cache.retain_on_delete)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "spec": spec}


def hub_endpoint(gd: GemmaDeployment, settings: Settings) -> str:
    return gd.spec.model.endpoint or settings.hub_endpoint(gd.spec.model.source)


def download_hash(gd: GemmaDeployment, settings: Settings) -> str:
    """Identifies one download: a Job's pod template is immutable, so a new model means a new Job."""
    model = gd.spec.model
    key = [model.source, model.id, model.effective_revision, hub_endpoint(gd, settings)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:8]


def download_job_name(gd: GemmaDeployment, settings: Settings) -> str:
    if gd.shared_cache:
        return f"{gd.shared_cache}-download"  # a shared cache holds one model revision: one Job
    return f"{gd.name}-download-{download_hash(gd, settings)}"


def download_instance(gd: GemmaDeployment) -> str:
    """The instance label of the download Job's pods."""
    return gd.shared_cache or gd.name


def compile_cache_enabled(gd: GemmaDeployment) -> bool:
    """spec.vllm.compileCache.enabled; unset: on when the operator's download Job writes the cache volume
    (so the pods' user can write it), off for source pvc (a volume of the user's; opt in with true)."""
    enabled = gd.spec.vllm.compile_cache.enabled
    return gd.needs_download if enabled is None else enabled


def compile_cache_key(gd: GemmaDeployment, settings: Settings) -> str:
    """The compile cache directory of these servers: a hash of everything in the pod template that can change
    what vLLM compiles or how it loads it: image, command and flags, environment (not the cache's own path),
    GPU resource and count, and the node selector (which often pins the GPU product). vLLM keys its own
    entries inside (its version, model config, flags, traced source), so this is a second, coarser guard:
    a new image or new flags start from an empty directory and never meet an old entry."""
    env = [e for e in _server_env(gd) if e["name"] != CACHE_ROOT_ENV]
    key = [gd.spec.vllm.image or settings.vllm_image, ["vllm", "serve", gd.model_dir], server_args(gd), env,
           gd.spec.gpu.resource_name, gd.spec.gpu.count, sorted(gd.spec.node_selector.items())]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def compile_cache_subpath(gd: GemmaDeployment, settings: Settings) -> str:
    return f"{COMPILE_CACHE_DIR}/{compile_cache_key(gd, settings)}"


def _cache_volume(gd: GemmaDeployment, read_only: bool) -> Manifest:
    claim: Manifest = {"claimName": gd.cache_claim_name}
    if read_only:
        # Only true is written: the API server drops a false readOnly, and a desired field the live object
        # never has would make every pass of a new leader apply the Deployment again.
        claim["readOnly"] = True
    return {"name": "model-cache", "persistentVolumeClaim": claim}


def _secret_env(name: str, ref: Any) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _download_env(gd: GemmaDeployment, settings: Settings) -> list[Manifest]:
    env: list[Manifest] = [
        {"name": "HOME", "value": TMP_DIR},
        {"name": "TMPDIR", "value": TMP_DIR},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    endpoint = hub_endpoint(gd, settings)
    if endpoint:
        env.append({"name": "GEMMA_HUB_ENDPOINT", "value": endpoint})
    env.append({"name": "GEMMA_DOWNLOAD_STALL_TIMEOUT_SECONDS", "value": str(gd.spec.download.stall_timeout_seconds)})
    if gd.spec.model.token_secret_ref:
        env.append(_secret_env("GEMMA_HUB_TOKEN", gd.spec.model.token_secret_ref))
    return env


def _downloader_pod_spec(gd: GemmaDeployment, settings: Settings, args: list[str]) -> Manifest:
    """The pod of a download Job (the model's or the adapters'): the downloader with `args`, writing the
    cache volume, as a restricted non-root pod without API credentials."""
    container: Manifest = {
        "name": DOWNLOAD_CONTAINER,
        "image": settings.downloader_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [*args, "--cache-root", paths.CACHE_ROOT],
        "env": _download_env(gd, settings),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": paths.CACHE_ROOT},
            {"name": "tmp", "mountPath": TMP_DIR},
        ],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [_cache_volume(gd, read_only=False), {"name": "tmp", "emptyDir": {}}],
    }
    return pod_spec


def build_download_job(gd: GemmaDeployment, settings: Settings, owners: list[Manifest] | None = None) -> Manifest | None:
    """The Job that puts the model on the cache volume; None for source pvc. The Job of a shared cache is
    owned by `owners` (default: gd alone) and made from the spec of the GemmaDeployment that came first."""
    if not gd.needs_download:
        return None
    model = gd.spec.model
    digest = download_hash(gd, settings)
    pod_labels = (cache_labels(gd, "download") if gd.shared_cache else labels(gd, "download")) | {DOWNLOAD_HASH_LABEL: digest}
    pod_spec = _downloader_pod_spec(gd, settings, [
        "--source", model.source,
        "--model-id", model.id,
        "--revision", model.effective_revision,
    ])
    job_spec: Manifest = {
        "backoffLimit": gd.spec.download.backoff_limit,
        "podFailurePolicy": DOWNLOAD_POD_FAILURE_POLICY,
        "template": {
            "metadata": {"labels": pod_labels, "annotations": _pod_annotations(gd, gd.spec.download.pod_annotations)},
            "spec": pod_spec,
        },
    }
    if gd.spec.download.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = gd.spec.download.active_deadline_seconds
    if gd.shared_cache:
        meta = _shared_metadata(gd, download_job_name(gd, settings), "download", owners)
    else:
        meta = _metadata(gd, download_job_name(gd, settings), "download")
    meta["labels"][DOWNLOAD_HASH_LABEL] = digest
    meta["annotations"] = dict(meta.get("annotations") or {}) | {"gemma.ai/model-id": model.id,
                                                                 "gemma.ai/revision": model.effective_revision}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


# The downloader's permanent failures (a wrong model id, a missing or refused token, bad arguments) fail
# the Job at once: another pod cannot fix them, and backoffLimit retries would take minutes during which
# the resource only says Downloading. A pod that was evicted or preempted does not count as a failure.
DOWNLOAD_POD_FAILURE_POLICY: Manifest = {
    "rules": [
        {"action": "FailJob",
         "onExitCodes": {"containerName": DOWNLOAD_CONTAINER, "operator": "In", "values": [EXIT_USAGE, EXIT_PERMANENT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ],
}


# The adapters' Job also fails at once on an adapter whose rank the servers cannot load (EXIT_ADAPTER_RANK).
ADAPTER_POD_FAILURE_POLICY: Manifest = {
    "rules": [
        {"action": "FailJob",
         "onExitCodes": {"containerName": DOWNLOAD_CONTAINER, "operator": "In",
                         "values": [EXIT_USAGE, EXIT_PERMANENT, EXIT_ADAPTER_RANK]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ],
}


def adapter_source_endpoint(gd: GemmaDeployment, adapter: AdapterSpec, settings: Settings) -> str:
    """An adapter from the model's hub uses the model's endpoint (spec.model.endpoint), else its hub's."""
    source = gd.adapter_source(adapter)
    return hub_endpoint(gd, settings) if source == gd.spec.model.source else settings.hub_endpoint(source)


def adapter_requests(gd: GemmaDeployment, settings: Settings) -> list[Manifest]:
    """What the adapters' Job downloads, one entry per spec.adapters[i], in the downloader's --adapters JSON.
    `field` names the entry in the downloader's errors; `token`: the model's hub token
    (spec.model.tokenSecretRef) is sent only to the model's own hub, never to another one."""
    return [{"field": f"spec.adapters[{i}]", "name": a.name, "source": gd.adapter_source(a), "id": a.id,
             "revision": gd.adapter_revision(a), "endpoint": adapter_source_endpoint(gd, a, settings) or None,
             "token": bool(gd.spec.model.token_secret_ref) and gd.adapter_source(a) == gd.spec.model.source}
            for i, a in enumerate(gd.spec.adapters)]


def adapter_job_name(gd: GemmaDeployment, settings: Settings) -> str:
    """<name>-adapters-<hash of what it downloads and checks>: a Job's template is immutable, so other
    adapters or another max rank mean a new Job (one that finds the unchanged adapters complete at once)."""
    key = [adapter_requests(gd, settings), gd.spec.adapter_settings.max_rank]
    return f"{gd.name}-adapters-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]}"


def build_adapter_job(gd: GemmaDeployment, settings: Settings) -> Manifest | None:
    """The Job that puts spec.adapters on the cache volume (None without adapters), each into its own
    directory (GemmaDeployment.adapter_dir), with the model's downloader: the same listing, verification,
    manifest, lock, retries and stall watchdog. It also checks each adapter's rank (adapter_config.json r)
    against spec.adapterSettings.maxRank, which vLLM would otherwise refuse only at start, in a crash loop.
    One per GemmaDeployment (adapters are not part of a shared model cache's key), owned by it; on a
    ReadWriteOnce cache it prefers the node of the servers that have the volume attached."""
    if not gd.spec.adapters:
        return None
    pod_spec = _downloader_pod_spec(gd, settings, [
        "--adapters", json.dumps(adapter_requests(gd, settings), separators=(",", ":")),
        "--max-lora-rank", str(gd.spec.adapter_settings.max_rank),
    ])
    if cache_is_single_node(gd):
        # Preferred, not required: before the servers exist no pod matches, and a required term would
        # leave the Job unschedulable.
        near = {CACHE_LABEL: gd.shared_cache} if gd.shared_cache else selector_labels(gd)
        pod_spec["affinity"] = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": near},
                                                "topologyKey": HOSTNAME_TOPOLOGY}}]}}
    job_spec: Manifest = {
        "backoffLimit": gd.spec.download.backoff_limit,
        "podFailurePolicy": ADAPTER_POD_FAILURE_POLICY,
        "template": {
            "metadata": {"labels": labels(gd, "adapters"),
                         "annotations": _pod_annotations(gd, gd.spec.download.pod_annotations)},
            "spec": pod_spec,
        },
    }
    if gd.spec.download.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = gd.spec.download.active_deadline_seconds
    meta = _metadata(gd, adapter_job_name(gd, settings), "adapters")
    meta["annotations"] = {"gemma.ai/adapters": ",".join(a.name for a in gd.spec.adapters)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def _pod_annotations(gd: GemmaDeployment, extra: dict[str, str]) -> dict[str, str]:
    return {"gemma.ai/model-id": gd.spec.model.id} | dict(extra)


def server_args(gd: GemmaDeployment) -> list[str]:
    """The flags of `vllm serve <model dir>`, from the spec."""
    spec = gd.spec
    args = ["--served-model-name", gd.served_model_name, "--port", str(PORT)]
    if spec.max_model_len is not None:
        args += ["--max-model-len", str(spec.max_model_len)]
    args += ["--tensor-parallel-size", str(spec.gpu.count)]
    if spec.gpu.memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(spec.gpu.memory_utilization)]
    args += ["--limit-mm-per-prompt", image_limit_json(gd)]
    if spec.api_key_secret_ref:
        args += ["--middleware", AUTH_MIDDLEWARE]
    return args + lora_args(gd) + list(spec.vllm.extra_args)


def lora_args(gd: GemmaDeployment) -> list[str]:
    """vLLM's LoRA flags from spec.adapters (none without adapters: LoRA support costs memory and speed).
    Each adapter is served under its name (`--lora-modules name=path`, vLLM's own format, the same in the
    CUDA image) from its directory on the cache volume; /v1/models lists it with the base model as parent.
    --max-lora-rank is spec.adapterSettings.maxRank (vLLM's default 16): vLLM refuses at start an adapter
    whose rank is larger, so the download Job checks each adapter's rank first (status AdapterRankTooLarge).
    --max-loras, the adapters one batch may mix, defaults to all of them, so that no request waits for
    another adapter's batch to finish."""
    adapters = gd.spec.adapters
    if not adapters:
        return []
    settings = gd.spec.adapter_settings
    modules = [f"{a.name}={gd.adapter_dir(a)}" for a in adapters]
    return ["--enable-lora", "--max-lora-rank", str(settings.max_rank),
            "--max-loras", str(settings.max_loras or len(adapters)), "--lora-modules", *modules]


def image_limit_json(gd: GemmaDeployment) -> str:
    """vLLM's `--limit-mm-per-prompt` from spec.multimodal.images, always rendered: without it vLLM accepts
    up to 999 images per prompt on a multi-modal model (gemma-3-4b-it) and loads and profiles its vision
    tower. {"image":0} (images off, the default) makes vLLM refuse image input with a 400 and skip the
    vision tower (no weights, no encoder memory); {"image":N} allows N images per prompt. A text-only
    model (Gemma3ForCausalLM) ignores the flag. The same flag in the CUDA and CPU builds."""
    return json.dumps({"image": gd.spec.multimodal.images.limit}, separators=(",", ":"))


def _server_env(gd: GemmaDeployment) -> list[Manifest]:
    env: list[Manifest] = [
        # The weights are on the volume already: a server must never reach out to a hub.
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        # The root filesystem is read-only; caches (compiled kernels, torch) go to the writable /tmp.
        {"name": "HOME", "value": TMP_DIR},
        {"name": "VLLM_CACHE_ROOT", "value": f"{TMP_DIR}/vllm"},
        {"name": "XDG_CACHE_HOME", "value": f"{TMP_DIR}/cache"},
    ]
    if gd.spec.api_key_secret_ref:
        # vLLM reads the key from VLLM_API_KEY, so it never appears on the command line.
        env.append(_secret_env("VLLM_API_KEY", gd.spec.api_key_secret_ref))
        # Where `--middleware` finds the guard (the ConfigMap's mount); the CRD refuses PYTHONPATH in
        # spec.vllm.env and --middleware in spec.vllm.extraArgs.
        env.append({"name": "PYTHONPATH", "value": AUTH_DIR})
    return env + [dict(item) for item in gd.spec.vllm.env]


def _server_resources(gd: GemmaDeployment) -> Manifest:
    user = gd.spec.resources or {}
    gpu = {gd.spec.gpu.resource_name: str(gd.spec.gpu.count)}
    resources: Manifest = {
        "limits": dict(user.get("limits") or {}) | gpu,
        "requests": dict(user.get("requests") or {}) | gpu,
    }
    return resources


def _probes(gd: GemmaDeployment) -> Manifest:
    http = {"httpGet": {"path": "/health", "port": PORT_NAME}}
    startup_failures = max(1, math.ceil(gd.spec.vllm.startup_timeout_seconds / STARTUP_PERIOD_SECONDS))
    return {
        "startupProbe": http | {
            "periodSeconds": STARTUP_PERIOD_SECONDS, "timeoutSeconds": 5, "failureThreshold": startup_failures,
        },
        "readinessProbe": http | READINESS,
        "livenessProbe": http | LIVENESS,
    }


def _server_container(gd: GemmaDeployment, settings: Settings) -> Manifest:
    env = _server_env(gd)
    mounts: list[Manifest] = [
        {"name": "model-cache", "mountPath": paths.CACHE_ROOT, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    if gd.spec.api_key_secret_ref:
        mounts.append({"name": AUTH_VOLUME, "mountPath": AUTH_DIR, "readOnly": True})
    if compile_cache_enabled(gd):
        # The one writable part of the cache volume: this key's directory (the kubelet creates it with the
        # mode of the volume's root, group-writable for the pods' fsGroup). The model stays read-only.
        mounts.append({"name": "model-cache", "mountPath": COMPILE_CACHE_MOUNT,
                       "subPath": compile_cache_subpath(gd, settings)})
        cache_root: Manifest = {"name": CACHE_ROOT_ENV, "value": COMPILE_CACHE_MOUNT}
        env = [cache_root if e["name"] == CACHE_ROOT_ENV else e for e in env]
    return {
        "name": SERVER_CONTAINER,
        "image": gd.spec.vllm.image or settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["vllm", "serve", gd.model_dir],
        "args": server_args(gd),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": _server_resources(gd),
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # A pod being replaced keeps serving for a few seconds after it is taken out of the Service, so
        # that no request is routed to a server that is already shutting down (kube-proxy and other
        # nodes' endpoints lag the removal). The kubelet's own sleep: no binary is needed in the image.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        **_probes(gd),
    }


def _server_pod_spec(gd: GemmaDeployment, settings: Settings) -> Manifest:
    spec = gd.spec
    pod: Manifest = {
        "securityContext": POD_SECURITY,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "containers": [_server_container(gd, settings)],
        "volumes": [
            # Read-only unless the compile cache writes its subPath (the /models mount is read-only anyway).
            _cache_volume(gd, read_only=not compile_cache_enabled(gd)),
            # NCCL and PyTorch use shared memory between tensor-parallel workers; the default 64Mi is too small.
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if spec.api_key_secret_ref:
        pod["volumes"].append({
            "name": AUTH_VOLUME,
            # 0444: read-only for everyone; the ConfigMap holds code, no secret (the key comes by env).
            "configMap": {"name": auth_configmap_name(gd), "defaultMode": 0o444},
        })
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    affinity = _server_affinity(gd)
    if affinity:
        pod["affinity"] = affinity
    spread = server_topology_spread(gd)
    if spread:
        pod["topologySpreadConstraints"] = spread
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return pod


def server_topology_spread(gd: GemmaDeployment) -> list[Manifest]:
    """spec.topologySpread as the server pods' one topology spread constraint (none when unset). Counted per
    ReplicaSet (matchLabelKeys pod-template-hash), so the pods of a rollout spread among themselves. The CRD
    refuses it on a single-node (ReadWriteOnce) cache, whose podAffinity keeps every replica on one node."""
    spread = gd.spec.topology_spread
    if spread is None:
        return []
    return [{
        "maxSkew": spread.max_skew,
        "topologyKey": spread.topology_key,
        "whenUnsatisfiable": spread.when_unsatisfiable,
        "labelSelector": {"matchLabels": selector_labels(gd)},
        "matchLabelKeys": ["pod-template-hash"],
    }]


HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"


def cache_is_single_node(gd: GemmaDeployment) -> bool:
    """True when the operator's own cache claim can be mounted by one node at a time (ReadWriteOnce without a
    multi-node mode). An existingClaim is not ours to read here: its modes are unknown to the builder."""
    cache = gd.spec.cache
    modes = set(cache.access_modes)
    return not cache.existing_claim and "ReadWriteOnce" in modes and not modes & {"ReadWriteMany", "ReadOnlyMany"}


def keeps_servers_on_one_node(gd: GemmaDeployment) -> bool:
    """The server pods get the operator's one-node podAffinity (see _server_affinity)."""
    user = gd.spec.affinity or {}
    return cache_is_single_node(gd) and "podAffinity" not in user and "podAntiAffinity" not in user


def _server_affinity(gd: GemmaDeployment) -> Manifest | None:
    """spec.affinity, plus, on a single-node (ReadWriteOnce) cache, a required podAffinity that keeps the
    server pods on one node: the node the volume is attached to. Without it a second replica scheduled on
    another node waits for the volume forever (Multi-Attach). The first pod goes anywhere (a pod that
    matches its own affinity term may start a group). It is there whatever spec.replicas is, so that
    scaling changes no pod template (no rollout on kubectl scale), and a surge pod of a rollout also lands
    next to the pod holding the volume. A user's own podAffinity or podAntiAffinity replaces it."""
    affinity = dict(gd.spec.affinity or {})
    if keeps_servers_on_one_node(gd):
        # A shared cache: the servers of every GemmaDeployment that mounts it share the one node.
        together = {CACHE_LABEL: gd.shared_cache} if gd.shared_cache else selector_labels(gd)
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": together}, "topologyKey": HOSTNAME_TOPOLOGY},
            ],
        }
    return affinity or None


def build_server_deployment(gd: GemmaDeployment, settings: Settings) -> Manifest:
    """The vLLM servers: one pod per replica, each with spec.gpu.count GPUs."""
    rollout = gd.spec.rollout
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gd, gd.name, "server"),
        "spec": {
            "replicas": gd.spec.replicas,
            "selector": {"matchLabels": selector_labels(gd)},
            # With maxSurge 0 an update replaces a pod before it starts the next one, so it rolls even
            # when every GPU of the cluster is taken (a surge pod would wait for a GPU forever).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable},
            },
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {"labels": _server_pod_labels(gd), "annotations": _server_pod_annotations(gd, settings)},
                "spec": _server_pod_spec(gd, settings),
            },
        },
    }


def _server_pod_labels(gd: GemmaDeployment) -> dict[str, str]:
    # The shared cache's label, for the podAffinity of the other GemmaDeployments on a ReadWriteOnce cache.
    return labels(gd, "server") | ({CACHE_LABEL: gd.shared_cache} if gd.shared_cache else {})


def _server_pod_annotations(gd: GemmaDeployment, settings: Settings) -> dict[str, str]:
    annotations = _pod_annotations(gd, gd.spec.pod_annotations)
    if compile_cache_enabled(gd):
        annotations[COMPILE_CACHE_ANNOTATION] = compile_cache_subpath(gd, settings)
    if gd.spec.api_key_secret_ref:
        # vLLM imports the guard once at start: a new guard (an operator upgrade) must roll the pods.
        annotations[AUTH_HASH_ANNOTATION] = AUTH_MIDDLEWARE_HASH
    return annotations


def build_disruption_budget(gd: GemmaDeployment) -> Manifest | None:
    """The servers' PodDisruptionBudget, only with spec.replicas > 1: a drain or an autoscaler then evicts at
    most spec.disruptionBudget.maxUnavailable (default 1) at a time. With one replica a budget would either
    block every drain (maxUnavailable 0) or allow the one eviction anyway, so there is none (and a budget
    made for more replicas is deleted). Pods that are not ready (loading, crash-looping) may always be
    evicted (unhealthyPodEvictionPolicy AlwaysAllow): they serve nothing a budget could protect."""
    if gd.spec.replicas <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(gd, gd.name, "server"),
        "spec": {
            "maxUnavailable": gd.spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector_labels(gd)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def auth_configmap_name(gd: GemmaDeployment) -> str:
    return f"{gd.name}-auth"


def build_auth_configmap(gd: GemmaDeployment) -> Manifest | None:
    """The API-key guard the server pods load with `--middleware` (see AUTH_MODULE); None without
    spec.apiKeySecretRef: with no key there is nothing to guard, and no pod template changes."""
    if not gd.spec.api_key_secret_ref:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(gd, auth_configmap_name(gd), "server"),
        "data": {f"{AUTH_MODULE}.py": AUTH_MIDDLEWARE_SOURCE},
    }


def build_server_network_policy(gd: GemmaDeployment, settings: Settings) -> Manifest | None:
    """With the chart's gateway on, the servers admit only the gateway's pods (and the peers the chart
    adds, e.g. Prometheus for /metrics): no route of a server can be reached around the gateway's keys.
    It binds only where the network plugin enforces NetworkPolicy (docs/gateway.md); the kubelet's probes
    come from the node, which plugins do not filter. None without a gateway: nothing then restricts who
    may call the Service."""
    if not settings.gateway_url or not settings.gateway_network_policy:
        return None
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.gateway_namespace}},
               "podSelector": {"matchLabels": dict(settings.gateway_pod_labels)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(gd, gd.name, "server"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(gd)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [gateway, *settings.gateway_extra_peers],
                         "ports": [{"port": PORT, "protocol": "TCP"}]}],
        },
    }


def build_inference_pool(gd: GemmaDeployment, settings: Settings) -> Manifest | None:
    """The Gateway API Inference Extension's InferencePool of the servers (v1, as v1.6 serves it), where
    its CRD is installed: users of Envoy Gateway, kgateway or Istio route to the model with their own
    gateway and endpoint picker. None where the API server does not serve it."""
    if "InferencePool" not in settings.available_kinds:
        return None
    spec: Manifest = {"selector": {"matchLabels": selector_labels(gd)}, "targetPorts": [{"number": PORT}]}
    picker = gd.spec.gateway.endpoint_picker
    if picker is not None:
        spec["endpointPickerRef"] = {"name": picker.name, "port": {"number": picker.port}}
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": _metadata(gd, gd.name, "server"),
        "spec": spec,
    }


def build_service(gd: GemmaDeployment) -> Manifest:
    """The OpenAI endpoint: http://<name>.<namespace>.svc.cluster.local:8000/v1."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gd, gd.name, "server"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(gd),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
