{{/* Name of the chart, or nameOverride. */}}
{{- define "gemma-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<name>, or just the release name when it contains the chart name. */}}
{{- define "gemma-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gemma-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "gemma-operator.labels" -}}
helm.sh/chart: {{ include "gemma-operator.chart" . }}
{{ include "gemma-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gemma-operator
{{- end }}

{{/* Labels that select the operator pods (immutable: never add to them). */}}
{{- define "gemma-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gemma-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of the helm test Job and pod: not the operator's selector labels, so that the test pod is
never behind the operator's Service nor counted by its PodDisruptionBudget. */}}
{{- define "gemma-operator.testLabels" -}}
helm.sh/chart: {{ include "gemma-operator.chart" . }}
app.kubernetes.io/name: {{ include "gemma-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gemma-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gemma-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gemma-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "gemma-operator.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "gemma-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules of the operator in the namespaces it manages; the same list goes into the ClusterRole (all
namespaces) or into one Role per watched namespace. Every rule is a call the operator makes; see
the RBAC table in the README.
*/}}
{{- define "gemma-operator.rules" -}}
# Watch GemmaDeployments (kopf lists and watches them).
- apiGroups: [gemma.ai]
  resources: [gemmadeployments]
  verbs: [list, watch]
# Write what the operator observed (status subresource, JSON merge patch).
- apiGroups: [gemma.ai]
  resources: [gemmadeployments/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift) require this.
- apiGroups: [gemma.ai]
  resources: [gemmadeployments/finalizers]
  verbs: [update]
# Model cache and OpenAI Service: watched (labelled ones), read once before the first apply, written
# with server-side apply (PATCH; it creates what does not exist). Never deleted: the cache is user data.
- apiGroups: [""]
  resources: [persistentvolumeclaims, services]
  verbs: [get, list, watch, create, patch]
# The API-key guard the vLLM servers load (one ConfigMap per GemmaDeployment with apiKeySecretRef, code
# only, never a key): as above; it goes away with its GemmaDeployment (garbage collection). The operator
# lists and watches only its own (label selector app.kubernetes.io/managed-by=gemma-operator).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# vLLM server Deployments: same as above; they go away with their GemmaDeployment (garbage collection).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# The servers' PodDisruptionBudget while replicas > 1; deleted when they scale to 1 or 0.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# With the gateway on (gateway.enabled), a NetworkPolicy per GemmaDeployment that admits only the
# gateway to its servers. Watched also with the gateway off: the policies it made are then deleted.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Where the Gateway API Inference Extension is installed, an InferencePool per GemmaDeployment
# (discovery tells the operator at start; without the CRD these rules are never used).
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch, create, patch]
# Download Jobs: as above, and delete: the Job of an earlier model is removed when the model changes.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Pods of the download Jobs and servers: their state makes the status (unschedulable, crash loop ...).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Download progress: the last lines of the download pod's log.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Events on GemmaDeployments for the important transitions (kubectl describe gemma); patch raises the
# count of an Event that repeats instead of writing a new one (as client-go's recorder does).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* Labels that select the gateway pods (immutable): the operator's NetworkPolicies admit these. */}}
{{- define "gemma-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "gemma-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "gemma-operator.gatewayLabels" -}}
helm.sh/chart: {{ include "gemma-operator.chart" . }}
{{ include "gemma-operator.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gemma-operator
{{- end }}

{{/* The gateway's OpenAI base URL, for status.gateway.url. */}}
{{- define "gemma-operator.gatewayURL" -}}
{{- printf "http://%s-gateway.%s.svc.cluster.local:%d/v1" (include "gemma-operator.fullname" .) .Release.Namespace (int .Values.gateway.port) }}
{{- end }}
