"""The one registry of the kinds the operator handles, and the type aliases its modules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=gemma-operator"


@dataclass(frozen=True)
class Kind:
    name: str
    api: str  # the API prefix: /api/v1 or /apis/<group>/<version>
    plural: str
    # Watched kinds are listed and watched into the cache; the others are only written or read directly.
    watched: bool = False
    # Sent to the API server with the list and the watch, so others' objects never reach the operator.
    label_selector: str = ""
    # Served only where a CRD of another project is installed: handled only when discovery finds it.
    optional: bool = False


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("GemmaDeployment", "/apis/gemma.ai/v1alpha1", "gemmadeployments", watched=True),
    Kind("PersistentVolumeClaim", "/api/v1", "persistentvolumeclaims", watched=True,
         label_selector=MANAGED_BY_SELECTOR),
    Kind("Job", "/apis/batch/v1", "jobs", watched=True, label_selector=MANAGED_BY_SELECTOR),
    Kind("Deployment", "/apis/apps/v1", "deployments", watched=True, label_selector=MANAGED_BY_SELECTOR),
    Kind("Service", "/api/v1", "services", watched=True, label_selector=MANAGED_BY_SELECTOR),
    Kind("ConfigMap", "/api/v1", "configmaps", watched=True, label_selector=MANAGED_BY_SELECTOR),
    Kind("Pod", "/api/v1", "pods", watched=True, label_selector=MANAGED_BY_SELECTOR),
    Kind("PodDisruptionBudget", "/apis/policy/v1", "poddisruptionbudgets", watched=True,
         label_selector=MANAGED_BY_SELECTOR),
    Kind("NetworkPolicy", "/apis/networking.k8s.io/v1", "networkpolicies", watched=True,
         label_selector=MANAGED_BY_SELECTOR),
    # The Gateway API Inference Extension's pool, where its CRD is installed (docs/gateway.md).
    Kind("InferencePool", "/apis/inference.networking.k8s.io/v1", "inferencepools", watched=True,
         label_selector=MANAGED_BY_SELECTOR, optional=True),
    Kind("Event", "/api/v1", "events"),
    # Only the gateway reads Secrets: its key Secrets (watched by their label) and the servers' keys.
    Kind("Secret", "/api/v1", "secrets"),
    Kind("Lease", "/apis/coordination.k8s.io/v1", "leases"),
)}


def watched_kinds(available: frozenset[str] = frozenset()) -> list[Kind]:
    """available: the optional kinds the API server serves (kube.KubeClient.serves)."""
    return [k for k in KINDS.values() if k.watched and (not k.optional or k.name in available)]


def optional_kinds() -> list[Kind]:
    return [k for k in KINDS.values() if k.optional]
