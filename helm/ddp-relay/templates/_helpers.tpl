{{/*
Names and labels.
*/}}
{{- define "ddp-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ddp-relay.fullname" -}}
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

{{- define "ddp-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Relay pods carry component "relay" and the migration Job's pod "migrate", so the Service,
the PodDisruptionBudget and the Deployment never select the Job's pod.
*/}}
{{- define "ddp-relay.instanceLabels" -}}
app.kubernetes.io/name: {{ include "ddp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ddp-relay.selectorLabels" -}}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "ddp-relay.commonLabels" -}}
helm.sh/chart: {{ include "ddp-relay.chart" . }}
{{ include "ddp-relay.instanceLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ddp-relay.labels" -}}
{{ include "ddp-relay.commonLabels" . }}
app.kubernetes.io/component: relay
{{- end }}

{{- define "ddp-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ddp-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ddp-relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep and gunicorn's graceful drain both run
inside it, so it must exceed their sum. Default: their sum + 10 s.
*/}}
{{- define "ddp-relay.terminationGracePeriodSeconds" -}}
{{- $drain := add (int64 .Values.preStopSleepSeconds) (int64 .Values.relay.gracefulTimeout) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $drain 10 }}
{{- else if le (int64 .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + relay.gracefulTimeout (%d)" (int64 .Values.terminationGracePeriodSeconds) $drain) }}
{{- else }}
{{- int64 .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
A value as a ConfigMap string: integers without Helm's float64 exponent form
(8388608 would otherwise render as 8.388608e+06), whole floats as integers.
*/}}
{{- define "ddp-relay.int" -}}
{{- int64 . | toString | quote }}
{{- end }}

{{- define "ddp-relay.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}
{{- int64 . | toString | quote }}
{{- else }}
{{- float64 . | toString | quote }}
{{- end }}
{{- end }}

{{/*
Database URLs. DATABASE_URL comes from database.existingSecret, else from the chart's own
Secret (database.url). RELAY_DATABASE_URL (the change stream's URL) comes from
database.existingSecret's key database.changeStreamSecretKey, else from the chart's Secret
(relay.databaseUrl), else it is not set at all (the relay then uses DATABASE_URL).
*/}}
{{- define "ddp-relay.chartSecretName" -}}
{{- printf "%s-database" (include "ddp-relay.fullname" .) }}
{{- end }}

{{- define "ddp-relay.databaseSecretName" -}}
{{- .Values.database.existingSecret | default (include "ddp-relay.chartSecretName" .) }}
{{- end }}

{{/* "existing", "chart" or "" (RELAY_DATABASE_URL not set). */}}
{{- define "ddp-relay.changeStreamSource" -}}
{{- if and .Values.database.existingSecret .Values.database.changeStreamSecretKey }}
{{- "existing" }}
{{- else if .Values.relay.databaseUrl }}
{{- "chart" }}
{{- end }}
{{- end }}

{{/* "true" when the chart renders a Secret of its own. */}}
{{- define "ddp-relay.chartSecretEnabled" -}}
{{- if or (not .Values.database.existingSecret) (eq (include "ddp-relay.changeStreamSource" .) "chart") }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "ddp-relay.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ddp-relay.databaseSecretName" . }}
      key: {{ .Values.database.secretKey }}
{{- $source := include "ddp-relay.changeStreamSource" . }}
{{- if $source }}
- name: RELAY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if eq $source "existing" }}
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.changeStreamSecretKey }}
      {{- else }}
      name: {{ include "ddp-relay.chartSecretName" . }}
      key: RELAY_DATABASE_URL
      {{- end }}
{{- end }}
{{- end }}

{{/*
Checks shared by every template that needs a database.
*/}}
{{- define "ddp-relay.validateDatabase" -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (production) or database.url (development)" }}
{{- end }}
{{- if and .Values.database.changeStreamSecretKey (not .Values.database.existingSecret) }}
{{- fail "database.changeStreamSecretKey is a key of database.existingSecret: set that too (or use relay.databaseUrl)" }}
{{- end }}
{{- end }}
