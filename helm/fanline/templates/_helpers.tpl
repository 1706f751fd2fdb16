{{/* Chart name, overridable. */}}
{{- define "fanline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name, at most 63 characters (DNS label). */}}
{{- define "fanline.fullname" -}}
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

{{- define "fanline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "fanline.labels" -}}
helm.sh/chart: {{ include "fanline.chart" . }}
{{ include "fanline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: edge
app.kubernetes.io/part-of: fanline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels: stable across upgrades, so never include the version. */}}
{{- define "fanline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fanline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fanline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fanline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods load FANLINE_BROKER and credentials from. */}}
{{- define "fanline.secretName" -}}
{{- .Values.existingSecret | default (include "fanline.fullname" .) }}
{{- end }}

{{/*
terminationGracePeriodSeconds, derived from the drain window so the two cannot drift:
the preStop hook blocks for at most window + 5 s, then uvicorn gets 5 s after SIGTERM,
plus 5 s of margin. An explicit override lower than that fails rendering.
*/}}
{{- define "fanline.minGracePeriod" -}}
{{- add (ceil .Values.drain.windowSeconds | int) 5 5 5 }}
{{- end }}

{{- define "fanline.gracePeriod" -}}
{{- $min := include "fanline.minGracePeriod" . | int }}
{{- $set := .Values.drain.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- $min }}
{{- else if lt (int $set) $min }}
{{- fail (printf "drain.terminationGracePeriodSeconds=%d is below drain.windowSeconds + 15 = %d: Kubernetes would kill pods mid-drain and drop connections at once" (int $set) $min) }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/* Which ingress annotations to write: traefik when the class says so, else ingress.controller. */}}
{{- define "fanline.ingressController" -}}
{{- if eq .Values.ingress.className "traefik" }}traefik{{ else }}{{ .Values.ingress.controller }}{{ end }}
{{- end }}

{{/*
Guards run from every manifest's template through the Deployment. The memory broker
keeps history and fan-out inside one process: a second pod would silently split clients
into islands that never see each other's events.
*/}}
{{- define "fanline.validate" -}}
{{- if not .Values.existingSecret }}
{{- if hasPrefix "memory://" .Values.broker.url }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "broker.url memory:// is single-node only: set replicaCount to 1 and autoscaling.enabled to false, or use a redis://, nats:// or kafka:// broker" }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq (int .Values.ports.client) (int .Values.ports.internal) }}
{{- fail "ports.client and ports.internal must differ: probes, metrics and drain live on the internal port" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.parentRefs needs at least one Gateway when httpRoute.enabled is true" }}
{{- end }}
{{- end }}
