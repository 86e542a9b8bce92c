"""The GemmaDeployment resource, parsed once into typed objects.

The CRD (crds/gemmadeployments.yaml) validates and defaults on the API server; the same defaults live
here too so that a manifest read straight from a file (gemma.yaml in the tests) parses to the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from . import paths

GROUP = "gemma.ai"
VERSION = "v1alpha1"
KIND = "GemmaDeployment"
PLURAL = "gemmadeployments"
API_VERSION = f"{GROUP}/{VERSION}"

Source = Literal["modelscope", "huggingface", "pvc"]
DEFAULT_REVISION: dict[str, str] = {"modelscope": "master", "huggingface": "main", "pvc": "main"}


class _Model(BaseModel):
    # Unknown fields are ignored rather than refused: the API server prunes them already, and an
    # operator older than its CRD must keep working.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SecretKeyRef(_Model):
    name: str
    key: str


class ModelSpec(_Model):
    id: str
    source: Source = "modelscope"
    revision: str | None = None
    token_secret_ref: SecretKeyRef | None = None
    endpoint: str | None = None
    path: str | None = None

    @property
    def effective_revision(self) -> str:
        return self.revision or DEFAULT_REVISION[self.source]


class GpuSpec(_Model):
    count: int = 1
    resource_name: str = "nvidia.com/gpu"
    memory_utilization: float | None = None


class VllmSpec(_Model):
    image: str | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    startup_timeout_seconds: int = 1800


class CacheSpec(_Model):
    size: str = "20Gi"
    storage_class_name: str | None = None
    access_modes: tuple[str, ...] = ("ReadWriteOnce",)
    existing_claim: str | None = None
    retain_on_delete: bool = False


class DownloadSpec(_Model):
    backoff_limit: int = 4
    active_deadline_seconds: int | None = None
    # An attempt that gets no byte for this long fails as transient (DownloadStalled) and is retried.
    stall_timeout_seconds: int = 600
    pod_annotations: dict[str, str] = Field(default_factory=dict)


class RolloutSpec(_Model):
    # maxSurge 0 / maxUnavailable 1: a change rolls even when no GPU is free (see builders).
    max_surge: int | str = 0
    max_unavailable: int | str = 1


class GemmaDeploymentSpec(_Model):
    model: ModelSpec
    served_model_name: str | None = None
    max_model_len: int | None = None
    replicas: int = 1
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    vllm: VllmSpec = Field(default_factory=VllmSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    download: DownloadSpec = Field(default_factory=DownloadSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    api_key_secret_ref: SecretKeyRef | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)


class GemmaDeployment(_Model):
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    spec: GemmaDeploymentSpec

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GemmaDeployment:
        meta = body.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation") or 0),
            spec=GemmaDeploymentSpec.model_validate(body.get("spec") or {}),
        )

    @property
    def served_model_name(self) -> str:
        return self.spec.served_model_name or self.name

    @property
    def needs_download(self) -> bool:
        return self.spec.model.source != "pvc"

    @property
    def model_dir(self) -> str:
        """Where the servers find the weights on the cache volume."""
        model = self.spec.model
        if model.source == "pvc":
            return paths.CACHE_ROOT + "/" + (model.path or model.id).strip("/")
        return paths.model_dir(model.source, model.id, model.effective_revision)

    @property
    def cache_claim_name(self) -> str:
        return self.spec.cache.existing_claim or f"{self.name}-cache"

    @property
    def endpoint(self) -> str:
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:8000/v1"
