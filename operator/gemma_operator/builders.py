"""Pure builders: a parsed GemmaDeployment in, the manifests of its children out. No I/O here."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from . import paths, server_auth
from .download.errors import EXIT_PERMANENT, EXIT_USAGE
from .kinds import Manifest
from .settings import Settings
from .spec import API_VERSION, KIND, GemmaDeployment

PORT = 8000
PORT_NAME = "http"
SERVER_CONTAINER = "vllm"
DOWNLOAD_CONTAINER = "download"
MANAGED_BY = "gemma-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
DOWNLOAD_HASH_LABEL = "gemma.ai/download-hash"
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


def build_cache_pvc(gd: GemmaDeployment) -> Manifest | None:
    """The model cache volume; None when the user brings an existingClaim (never ours to touch)."""
    cache = gd.spec.cache
    if cache.existing_claim:
        return None
    spec: Manifest = {
        "accessModes": list(cache.access_modes),
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
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
    return f"{gd.name}-download-{download_hash(gd, settings)}"


def _cache_volume(gd: GemmaDeployment, read_only: bool) -> Manifest:
    return {
        "name": "model-cache",
        "persistentVolumeClaim": {"claimName": gd.cache_claim_name, "readOnly": read_only},
    }


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


def build_download_job(gd: GemmaDeployment, settings: Settings) -> Manifest | None:
    """The Job that puts the model on the cache volume; None for source pvc."""
    if not gd.needs_download:
        return None
    model = gd.spec.model
    digest = download_hash(gd, settings)
    pod_labels = labels(gd, "download") | {DOWNLOAD_HASH_LABEL: digest}
    container: Manifest = {
        "name": DOWNLOAD_CONTAINER,
        "image": settings.downloader_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "--source", model.source,
            "--model-id", model.id,
            "--revision", model.effective_revision,
            "--cache-root", paths.CACHE_ROOT,
        ],
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
    meta = _metadata(gd, download_job_name(gd, settings), "download")
    meta["labels"][DOWNLOAD_HASH_LABEL] = digest
    meta["annotations"] = {"gemma.ai/model-id": model.id, "gemma.ai/revision": model.effective_revision}
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
    if spec.api_key_secret_ref:
        args += ["--middleware", AUTH_MIDDLEWARE]
    return args + list(spec.vllm.extra_args)


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
    return {
        "name": SERVER_CONTAINER,
        "image": gd.spec.vllm.image or settings.vllm_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["vllm", "serve", gd.model_dir],
        "args": server_args(gd),
        "env": _server_env(gd),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": _server_resources(gd),
        "volumeMounts": [
            {"name": "model-cache", "mountPath": paths.CACHE_ROOT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": TMP_DIR},
        ] + ([{"name": AUTH_VOLUME, "mountPath": AUTH_DIR, "readOnly": True}] if gd.spec.api_key_secret_ref else []),
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
            _cache_volume(gd, read_only=True),
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
    return pod


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
        affinity["podAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": selector_labels(gd)}, "topologyKey": HOSTNAME_TOPOLOGY},
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
                "metadata": {"labels": labels(gd, "server"), "annotations": _server_pod_annotations(gd)},
                "spec": _server_pod_spec(gd, settings),
            },
        },
    }


def _server_pod_annotations(gd: GemmaDeployment) -> dict[str, str]:
    annotations = _pod_annotations(gd, gd.spec.pod_annotations)
    if gd.spec.api_key_secret_ref:
        # vLLM imports the guard once at start: a new guard (an operator upgrade) must roll the pods.
        annotations[AUTH_HASH_ANNOTATION] = AUTH_MIDDLEWARE_HASH
    return annotations


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
