{{/* The chart's name, overridable. */}}
{{- define "misiva.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-misiva unless the release already says misiva. */}}
{{- define "misiva.fullname" -}}
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

{{- define "misiva.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard app.kubernetes.io labels. */}}
{{- define "misiva.labels" -}}
helm.sh/chart: {{ include "misiva.chart" . }}
{{ include "misiva.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: misiva
{{- end }}

{{/* The labels that select this release's pods; never change them after install. */}}
{{- define "misiva.selectorLabels" -}}
app.kubernetes.io/name: {{ include "misiva.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "misiva.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "misiva.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the AMQP URL and the APNs credentials. */}}
{{- define "misiva.secretName" -}}
{{- default (include "misiva.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "misiva.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* misiva.toml: everything but secrets, which come from files mounted from the Secret. */}}
{{- define "misiva.config" -}}
queue = {{ .Values.queue | quote }}
consumers = {{ .Values.consumers }}
shards = {{ .Values.shards }}
urgent_consumers = {{ .Values.urgent.consumers }}
urgent_prefetch = {{ .Values.urgent.prefetch }}
urgent_reserve = {{ .Values.urgent.reserve | quote }}
{{- with .Values.prefetch }}
prefetch = {{ . }}
{{- end }}
admin_addr = "0.0.0.0:{{ .Values.adminPort }}"
log = {{ .Values.log | quote }}
log_format = {{ .Values.logFormat | quote }}
shutdown_grace_secs = {{ .Values.shutdownGraceSeconds }}
max_attempts = {{ .Values.maxAttempts }}
max_deliveries = {{ .Values.maxDeliveries }}
retry_delays = [{{- range $i, $d := .Values.retryDelays }}{{ if $i }}, {{ end }}{{ $d | quote }}{{ end }}]
app_idle = {{ .Values.appIdle | quote }}
{{- if .Values.appsDir.secretName }}
apps_dir = "/etc/misiva/apps"
{{- end }}
{{- range $name, $app := .Values.apps }}

[apps.{{ $name | quote }}]
endpoint = {{ $app.endpoint | default "production" | quote }}
{{- with $app.broadcastEndpoint }}
broadcast_endpoint = {{ . | quote }}
{{- end }}
{{- with $app.channelsEndpoint }}
channels_endpoint = {{ . | quote }}
{{- end }}
{{- with $app.topic }}
topic = {{ . | quote }}
{{- end }}
{{- with $app.connections }}
connections = {{ . }}
{{- end }}
{{- if eq ($app.auth | default "token") "token" }}
key_file = "/etc/misiva/secrets/apns-{{ $name }}.p8"
key_id = {{ required (printf "apps.%s.keyId is required for token auth" $name) $app.keyId | quote }}
team_id = {{ required (printf "apps.%s.teamId is required for token auth" $name) $app.teamId | quote }}
{{- else }}
cert_file = "/etc/misiva/secrets/apns-{{ $name }}.p12"
{{- if $app.certificatePassword }}
cert_password_file = "/etc/misiva/secrets/apns-{{ $name }}.password"
{{- end }}
{{- end }}
{{- end }}
{{- end }}
