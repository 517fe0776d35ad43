{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "batch-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already holds the chart name.
Truncated to 52 so that suffixes such as "-dashboard" keep names under 63. */}}
{{- define "batch-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "batch-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "batch-gateway.labels" -}}
helm.sh/chart: {{ include "batch-gateway.chart" . }}
{{ include "batch-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "batch-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batch-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels and selector labels of one component: call with (dict "root" $ "component" "api"). */}}
{{- define "batch-gateway.componentLabels" -}}
{{ include "batch-gateway.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "batch-gateway.componentSelectorLabels" -}}
{{ include "batch-gateway.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "batch-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "batch-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "batch-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when a PostgreSQL database is configured (scaled mode), else "" (embedded SQLite). */}}
{{- define "batch-gateway.externalDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{/* "true" when file blobs live in object storage (storage.url), else "". */}}
{{- define "batch-gateway.objectStorage" -}}
{{- if .Values.storage.url }}true{{ end }}
{{- end }}

{{/* "true" when the data folder lives on the PersistentVolumeClaim: it holds the SQLite file (embedded
mode) or the blobs (no object storage). With PostgreSQL and object storage nothing needs a volume. */}}
{{- define "batch-gateway.dataOnClaim" -}}
{{- if and .Values.persistence.enabled (not (and (include "batch-gateway.externalDatabase" .) (include "batch-gateway.objectStorage" .))) }}true{{ end }}
{{- end }}

{{/* "true" when workers run in their own Deployment. */}}
{{- define "batch-gateway.separateWorkers" -}}
{{- if and (include "batch-gateway.externalDatabase" .) .Values.worker.enabled }}true{{ end }}
{{- end }}

{{- define "batch-gateway.secretName" -}}
{{- include "batch-gateway.fullname" . }}
{{- end }}

{{- define "batch-gateway.databaseSecretName" -}}
{{- default (include "batch-gateway.secretName" .) .Values.database.existingSecret }}
{{- end }}

{{- define "batch-gateway.adminKeySecretName" -}}
{{- default (include "batch-gateway.secretName" .) .Values.adminKey.existingSecret }}
{{- end }}

{{- define "batch-gateway.adminKeySecretKey" -}}
{{- if .Values.adminKey.existingSecret }}{{ .Values.adminKey.existingSecretKey }}{{ else }}admin-key{{ end }}
{{- end }}

{{- define "batch-gateway.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{/* Checks the schema cannot express; each stops the install with a clear message. */}}
{{- define "batch-gateway.validate" -}}
{{- $external := include "batch-gateway.externalDatabase" . }}
{{- if and (not $external) (gt (int .Values.api.replicas) 1) }}
{{- fail "api.replicas > 1 needs PostgreSQL: set database.url or database.existingSecret (SQLite cannot be shared between pods)" }}
{{- end }}
{{- if and (not $external) (or (gt (int .Values.worker.replicas) 1) .Values.worker.autoscaling.enabled) }}
{{- fail "worker.replicas > 1 or worker.autoscaling needs PostgreSQL: set database.url or database.existingSecret" }}
{{- end }}
{{- $objects := include "batch-gateway.objectStorage" . }}
{{- if and $external (not $objects) (not .Values.persistence.enabled) }}
{{- fail "with PostgreSQL, API and worker pods share file blobs: set storage.url (object storage), or persistence.enabled=true on a ReadWriteMany volume" }}
{{- end }}
{{- if and $external (not $objects) .Values.persistence.enabled (not .Values.persistence.existingClaim) (not (has "ReadWriteMany" .Values.persistence.accessModes)) }}
{{- fail "with PostgreSQL, API and worker pods share file blobs: set storage.url (object storage), or persistence.accessModes must include ReadWriteMany (or set persistence.existingClaim)" }}
{{- end }}
{{- if and .Values.storage.existingSecret (not $objects) }}
{{- fail "storage.existingSecret holds object storage credentials: set storage.url too" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (gt (int .Values.worker.autoscaling.minReplicas) (int .Values.worker.autoscaling.maxReplicas)) }}
{{- fail "worker.autoscaling.minReplicas must not exceed worker.autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/* Pod-level security: non-root, default seccomp profile, no service account token. */}}
{{- define "batch-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
fsGroup: {{ .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "batch-gateway.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Scheduling and pull settings shared by every pod. */}}
{{- define "batch-gateway.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "batch-gateway.podSecurityContext" . | nindent 2 }}
{{- end }}

{{/* Environment of the API, worker and migrations containers. Secrets only through references. */}}
{{- define "batch-gateway.env" -}}
- name: BATCHGW_CONFIG_FILE
  value: /etc/batch-gateway/gateway.toml
- name: BATCHGW_DATA_DIR
  value: /data
- name: HOME
  value: /tmp
- name: BATCHGW_AUTO_MIGRATE
  value: {{ ternary "false" "true" (eq (include "batch-gateway.externalDatabase" .) "true") | quote }}
{{- if include "batch-gateway.externalDatabase" . }}
- name: BATCHGW_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "batch-gateway.databaseSecretName" . }}
      key: {{ include "batch-gateway.databaseSecretKey" . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Object storage credentials, for the API and worker containers only. */}}
{{- define "batch-gateway.storageEnv" -}}
{{- with .Values.storage.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.storage.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{- define "batch-gateway.adminKeyEnv" -}}
- name: BATCHGW_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "batch-gateway.adminKeySecretName" . }}
      key: {{ include "batch-gateway.adminKeySecretKey" . }}
{{- end }}

{{/* Provider API keys: every entry of the Secrets becomes an environment variable. */}}
{{- define "batch-gateway.envFrom" -}}
{{- if .Values.providerKeys.values }}
- secretRef:
    name: {{ include "batch-gateway.fullname" . }}-provider-keys
{{- end }}
{{- with .Values.providerKeys.existingSecret }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- end }}

{{- define "batch-gateway.volumeMounts" -}}
- name: config
  mountPath: /etc/batch-gateway
  readOnly: true
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "batch-gateway.volumes" -}}
- name: config
  configMap:
    name: {{ include "batch-gateway.fullname" . }}-config
- name: data
{{- if include "batch-gateway.dataOnClaim" . }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "batch-gateway.fullname" .)) .Values.persistence.existingClaim }}
{{- else if and (include "batch-gateway.externalDatabase" .) (include "batch-gateway.objectStorage" .) .Values.storage.scratchSizeLimit }}
  # Blobs are in object storage: the pod keeps only temporary files here.
  emptyDir:
    sizeLimit: {{ .Values.storage.scratchSizeLimit }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{/* A TOML document from a map: scalars and arrays as JSON (valid TOML for strings, numbers,
booleans and arrays of them), nested maps as [tables]. Call with (dict "prefix" "" "table" $map). */}}
{{- define "batch-gateway.toml" -}}
{{- $prefix := .prefix }}
{{- $table := .table }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if not (or (kindIs "map" $value) (kindIs "invalid" $value)) }}
{{ include "batch-gateway.tomlKey" $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- $name := printf "%s%s" (ternary "" (printf "%s." $prefix) (eq $prefix "")) (include "batch-gateway.tomlKey" $key) }}

[{{ $name }}]
{{- include "batch-gateway.toml" (dict "prefix" $name "table" $value) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "batch-gateway.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}
