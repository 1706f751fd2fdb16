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
app.kubernetes.io/version: {{ include "fanline.versionLabel" . | quote }}
app.kubernetes.io/component: edge
app.kubernetes.io/part-of: fanline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The version label: the tag, or the chart's appVersion when the image is pinned by digest
only. Label values allow [A-Za-z0-9._-] and 63 characters, so anything else becomes "_".
*/}}
{{- define "fanline.versionLabel" -}}
{{- $v := .Values.image.tag | default .Chart.AppVersion }}
{{- regexReplaceAll "[^A-Za-z0-9._-]" $v "_" | trunc 63 | trimAll "_.-" }}
{{- end }}

{{/* registry/repository:tag, or registry/repository@digest when a digest is given (it wins over the tag). */}}
{{- define "fanline.image" -}}
{{- $repo := .Values.image.repository }}
{{- with .Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The internal port's own Service (ClusterIP only: /drain and /shed must never be public). */}}
{{- define "fanline.internalServiceName" -}}
{{- printf "%s-internal" (include "fanline.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
minReadySeconds, derived from the drain window: a Deployment does not count terminating
pods (KEP-3973), so with maxSurge 1 it scales down the next old pod as soon as the new one
is available. Holding "available" back for the drain window + 5 s (the preStop margin)
means the previous old pod has finished draining by then: one pod drains at a time.
*/}}
{{- define "fanline.minReadySeconds" -}}
{{- $set := .Values.rollingUpdate.minReadySeconds }}
{{- if kindIs "invalid" $set }}
{{- add (ceil .Values.drain.windowSeconds | int) 5 }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/* Where the preStop hook reaches the node: loopback of the family the node listens on. */}}
{{- define "fanline.loopback" -}}
{{- if contains ":" .Values.listenAddress }}[::1]{{ else }}127.0.0.1{{ end }}
{{- end }}

{{/*
Paths routed publicly (Ingress and HTTPRoute): the client endpoints, the demo page when
it is on, and the publish API only when routes.publishAPI is set. A list of
{path, pathType} with Ingress path types.
*/}}
{{- define "fanline.publicPaths" -}}
{{- $paths := list (dict "path" "/ws" "pathType" "Exact") (dict "path" "/sse" "pathType" "Exact") (dict "path" "/api/tickets" "pathType" "Exact") }}
{{- if .Values.config.demo }}{{ $paths = append $paths (dict "path" "/" "pathType" "Exact") }}{{ end }}
{{- if .Values.routes.publishAPI }}
{{- $paths = concat $paths (list (dict "path" "/api/publish" "pathType" "Exact") (dict "path" "/api/publish/batch" "pathType" "Exact")) }}
{{- end }}
{{- toYaml $paths }}
{{- end }}

{{/* "true" when a {path, pathType} routes a request for /api/publish or /api/publish/batch. */}}
{{- define "fanline.routesPublish" -}}
{{- $p := .path }}
{{- if eq .pathType "Exact" }}
{{- if or (eq $p "/api/publish") (eq $p "/api/publish/batch") }}true{{ end }}
{{- else if eq .pathType "Prefix" }}
{{- if has (trimSuffix "/" $p) (list "" "/api" "/api/publish" "/api/publish/batch") }}true{{ end }}
{{- else }}
{{- /* ImplementationSpecific, PathPrefix and anything else: read as a string prefix, to be safe. */}}
{{- if hasPrefix (trimSuffix "/" $p) "/api/publish" }}true{{ end }}
{{- end }}
{{- end }}

{{/* Whether the nodes will require an API key on the publish API (or we cannot tell: existingSecret). */}}
{{- define "fanline.publishProtected" -}}
{{- if or .Values.auth.apiKeys .Values.existingSecret }}true{{ end }}
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
{{- $zero := list "0" "0%" }}
{{- if and (has (toString .Values.rollingUpdate.maxSurge) $zero) (has (toString .Values.rollingUpdate.maxUnavailable) $zero) }}
{{- fail "rollingUpdate.maxSurge and rollingUpdate.maxUnavailable cannot both be 0: the rollout could never replace a pod" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (has (toString .Values.podDisruptionBudget.maxUnavailable) $zero) }}
{{- fail "podDisruptionBudget.maxUnavailable 0 blocks every eviction: node drains and cluster upgrades would hang. Use 1, or disable the budget" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (eq .Values.autoscaling.engine "keda") .Values.autoscaling.connections.enabled (not .Values.autoscaling.keda.serverAddress) }}
{{- fail "autoscaling.engine keda scales on connections through Prometheus: set autoscaling.keda.serverAddress" }}
{{- end }}
{{- $public := list }}
{{- if .Values.ingress.enabled }}
{{- range .Values.ingress.hosts }}
{{- $public = concat $public (.paths | default (include "fanline.publicPaths" $ | fromYamlArray)) }}
{{- end }}
{{- end }}
{{- if .Values.httpRoute.enabled }}
{{- $public = concat $public (.Values.httpRoute.paths | default (include "fanline.publicPaths" . | fromYamlArray)) }}
{{- end }}
{{- range $public }}
{{- if and (include "fanline.routesPublish" .) (not (include "fanline.publishProtected" $)) }}
{{- fail (printf "the public route %s (%s) reaches the publish API, and no API key is set: anyone could publish. Set auth.apiKeys (or existingSecret with FANLINE_API_KEYS), or route only the client paths" .path .pathType) }}
{{- end }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if hasPrefix "memory://" .Values.broker.url }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "broker.url memory:// is single-node only: set replicaCount to 1 and autoscaling.enabled to false, or use a redis://, nats:// or kafka:// broker" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.rebalancer.enabled (not .Values.existingSecret) (not .Values.auth.internalKey) }}
{{- fail "rebalancer.enabled needs auth.internalKey: the rebalancer calls POST /shed through the API server, and the nodes take that only with their internal key" }}
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
