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


class CompileCacheSpec(_Model):
    # None: on when the operator's download Job writes the cache volume (the volume is then known to be
    # writable by the pods' user), off for source pvc (a volume of yours; opt in with true).
    enabled: bool | None = None


class VllmSpec(_Model):
    image: str | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[dict[str, Any], ...] = ()
    startup_timeout_seconds: int = 1800
    compile_cache: CompileCacheSpec = Field(default_factory=CompileCacheSpec)


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


# Images per prompt when spec.multimodal.images.enabled is true and maxPerPrompt is unset.
DEFAULT_IMAGES_PER_PROMPT = 1


class ImagesSpec(_Model):
    # Off by default: vLLM then refuses image input and does not load the vision tower (builders.server_args).
    enabled: bool = False
    max_per_prompt: int | None = None

    @property
    def limit(self) -> int:
        """vLLM's per-prompt image limit: 0 when images are off."""
        return (self.max_per_prompt or DEFAULT_IMAGES_PER_PROMPT) if self.enabled else 0


class MultimodalSpec(_Model):
    images: ImagesSpec = Field(default_factory=ImagesSpec)


AdapterSource = Literal["modelscope", "huggingface"]
# vLLM's accepted --max-lora-rank values (vllm.config.lora.MaxLoRARanks); the CRD has the same enum.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16  # vLLM's own default


class AdapterSpec(_Model):
    """One LoRA adapter, served under `name` next to the base model (builders.lora_args)."""

    name: str
    id: str
    # None: the model's source (a pvc model's adapters must name theirs; the CRD says so).
    source: AdapterSource | None = None
    revision: str | None = None


class AdapterSettingsSpec(_Model):
    # vLLM's --max-lora-rank: the largest rank (adapter_config.json r) the servers reserve room for.
    max_rank: int = DEFAULT_MAX_LORA_RANK
    # vLLM's --max-loras, the adapters one batch can mix; None: as many as spec.adapters has.
    max_loras: int | None = None


class DisruptionBudgetSpec(_Model):
    # The PodDisruptionBudget of the servers (replicas > 1 only): at most this many evicted at once.
    max_unavailable: int | str = 1


class TopologySpreadSpec(_Model):
    # Rendered as the server pods' topologySpreadConstraints (builders.server_topology_spread).
    topology_key: str = "kubernetes.io/hostname"
    max_skew: int = 1
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = "DoNotSchedule"


class EndpointPickerSpec(_Model):
    # The endpoint picker (EPP) Service of the InferencePool: the Gateway API Inference Extension's.
    name: str
    port: int = 9002


class GatewaySpec(_Model):
    # How the gateway balances this model's requests over its servers (gateway/balancer.py).
    policy: Literal["PrefixHash", "LeastLoaded"] = "PrefixHash"
    # Where the InferencePool is made (its CRD installed): the picker its gateway asks; None: none named.
    endpoint_picker: EndpointPickerSpec | None = None


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
    multimodal: MultimodalSpec = Field(default_factory=MultimodalSpec)
    api_key_secret_ref: SecretKeyRef | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str | None = None
    topology_spread: TopologySpreadSpec | None = None
    disruption_budget: DisruptionBudgetSpec = Field(default_factory=DisruptionBudgetSpec)
    adapters: tuple[AdapterSpec, ...] = ()
    adapter_settings: AdapterSettingsSpec = Field(default_factory=AdapterSettingsSpec)
    gateway: GatewaySpec = Field(default_factory=GatewaySpec)


class GemmaDeployment(_Model):
    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    spec: GemmaDeploymentSpec
    # The model cache claim this GemmaDeployment shares with the others of its namespace that name the same
    # model revision (builders.shared_cache_name; docs/model-cache.md). Not part of the resource: the
    # reconciler sets it (the name depends on the operator's settings). "" = no shared cache: an
    # existingClaim, source pvc, or a claim <name>-cache made before caches were shared.
    shared_cache: str = ""

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

    def adapter_source(self, adapter: AdapterSpec) -> str:
        return adapter.source or (self.spec.model.source if self.spec.model.source != "pvc" else "modelscope")

    def adapter_revision(self, adapter: AdapterSpec) -> str:
        return adapter.revision or DEFAULT_REVISION[self.adapter_source(adapter)]

    def adapter_dir(self, adapter: AdapterSpec) -> str:
        """Where the servers find an adapter on the cache volume: its own directory per id and revision."""
        return paths.adapter_dir(self.adapter_source(adapter), adapter.id, self.adapter_revision(adapter))

    @property
    def cache_claim_name(self) -> str:
        return self.spec.cache.existing_claim or self.shared_cache or f"{self.name}-cache"

    @property
    def endpoint(self) -> str:
        return f"http://{self.name}.{self.namespace}.svc.cluster.local:8000/v1"
