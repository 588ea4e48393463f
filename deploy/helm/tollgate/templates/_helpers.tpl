{{/* The chart's name. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of every object: the release name when it contains the chart name, else both. */}}
{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The port of a host:port address. */}}
{{- define "tollgate.port" -}}
{{- splitList ":" . | last | atoi }}
{{- end }}

{{/*
config.yaml: `collector` (CollectorConfig) and `agent`, keys sorted. An empty collector.sink is
left out, so the collector's embedded default (a local directory) applies; a sink given in the
values replaces it whole, so no field of the default (dir) leaks into an S3 sink.
*/}}
{{- define "tollgate.config" -}}
{{- $cluster := required "config.collector.cluster is required: the cluster's name, the first partition key of every flow record (--set config.collector.cluster=NAME)" .Values.config.collector.cluster | toString }}
{{- if regexMatch "[/=[:space:]]" $cluster }}
{{- fail (printf "config.collector.cluster %q: must not contain '/', '=' or whitespace" $cluster) }}
{{- end }}
{{- $collector := omit .Values.config.collector "sink" }}
{{- /* A string even when --set made it a number (--set config.collector.cluster=2024). */}}
{{- $_ := set $collector "cluster" $cluster }}
{{- with .Values.config.collector.sink }}
{{- $_ := set $collector "sink" . }}
{{- end }}
{{- dict "agent" .Values.config.agent "collector" $collector | toYaml }}
{{- end }}

{{/* Settings that cannot work with the pod's mounts; renders nothing. */}}
{{- define "tollgate.validate" -}}
{{- $state := printf "%s/" (trimSuffix "/" .Values.stateDir) }}
{{- if not (hasPrefix $state .Values.config.collector.spool_dir) }}
{{- fail (printf "config.collector.spool_dir %q must be under stateDir %q, the host directory the pod mounts" .Values.config.collector.spool_dir .Values.stateDir) }}
{{- end }}
{{- with .Values.config.collector.sink }}
{{- if and (eq (toString .kind) "local") (not (hasPrefix $state (toString .dir))) }}
{{- fail (printf "config.collector.sink.dir %q must be under stateDir %q" (toString .dir) $.Values.stateDir) }}
{{- end }}
{{- end }}
{{- if not (hasPrefix "/sys/fs/bpf/" .Values.config.agent.bpffs) }}
{{- fail (printf "config.agent.bpffs %q must be a directory under /sys/fs/bpf/, the host's BPF filesystem the pod mounts" .Values.config.agent.bpffs) }}
{{- end }}
{{- if not (has .Values.config.agent.enforcement (list "strict" "standard")) }}
{{- fail (printf "config.agent.enforcement %q: strict or standard" .Values.config.agent.enforcement) }}
{{- end }}
{{- if not (has .Values.config.agent.node_ingress (list "allow" "policy")) }}
{{- fail (printf "config.agent.node_ingress %q: allow or policy" .Values.config.agent.node_ingress) }}
{{- end }}
{{- end }}
