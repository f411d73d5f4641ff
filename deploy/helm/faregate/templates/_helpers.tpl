{{/* Names and labels. */}}
{{- define "faregate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "faregate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "faregate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "faregate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "faregate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "faregate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: faregate
{{- end -}}

{{- define "faregate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "faregate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "faregate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "faregate.postgres" -}}
{{- if eq .Values.database.type "postgresql" }}true{{ end -}}
{{- end -}}

{{/* The Secret holding DATABASE_URL: CloudNativePG's app secret unless named explicitly. */}}
{{- define "faregate.databaseSecretName" -}}
{{- default (printf "%s-app" .Values.database.cnpgClusterName) .Values.database.secretName -}}
{{- end -}}

{{- define "faregate.dataDir" -}}/var/lib/faregate{{- end -}}

{{/* Environment shared by the gateway and the migration Job: secrets by reference only. */}}
{{- define "faregate.secretEnv" -}}
- name: FAREGATE_DATA_DIR
  value: {{ include "faregate.dataDir" . | quote }}
- name: FAREGATE_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.masterkeySecretName | quote }}
      key: {{ .Values.masterkeySecretKey | quote }}
{{- if include "faregate.postgres" . }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "faregate.databaseSecretName" . | quote }}
      key: {{ .Values.database.secretKey | quote }}
{{- else }}
- name: DATABASE_URL
  value: {{ printf "sqlite:///%s/faregate.db" (include "faregate.dataDir" .) | quote }}
{{- end }}
{{- end -}}

{{/* general_settings.replicas: how many processes share the limits in redis_failure_mode local. */}}
{{- define "faregate.processCount" -}}
{{- $pods := ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled -}}
{{- mul $pods .Values.workers -}}
{{- end -}}

{{- define "faregate.config" -}}
{{- $general := dict "master_key" "os.environ/FAREGATE_MASTER_KEY" "database_url" "os.environ/DATABASE_URL" "max_request_body_bytes" (int .Values.maxRequestBodyBytes) -}}
{{- if .Values.redis.enabled -}}
{{- $_ := set $general "redis_url" "os.environ/REDIS_URL" -}}
{{- $_ := set $general "redis_failure_mode" .Values.redis.failureMode -}}
{{- $_ := set $general "replicas" (int (include "faregate.processCount" .)) -}}
{{- end -}}
{{- $_ := set $general "require_auth_for_metrics_endpoint" .Values.metricsRequireAuth -}}
{{- toYaml (dict "model_list" .Values.modelList "general_settings" $general) -}}
{{- end -}}
