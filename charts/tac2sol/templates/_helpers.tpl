{{/* Chart name, overridable. */}}
{{- define "tac2sol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: <release>-tac2sol, or <release> when it already contains the chart name. */}}
{{- define "tac2sol.fullname" -}}
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

{{- define "tac2sol.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tac2sol.labels" -}}
helm.sh/chart: {{ include "tac2sol.chart" . }}
{{ include "tac2sol.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tac2sol
{{- end }}

{{/* Labels that select the operator pod. */}}
{{- define "tac2sol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tac2sol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "tac2sol.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tac2sol.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; tag defaults to the chart's appVersion. */}}
{{- define "tac2sol.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}
{{- end }}

{{- define "tac2sol.operatorImage" -}}
{{- include "tac2sol.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.image) }}
{{- end }}

{{- define "tac2sol.trainerImage" -}}
{{- include "tac2sol.image" (merge (dict "appVersion" .Chart.AppVersion) .Values.trainer.image) }}
{{- end }}

{{/* "true" when the operator watches one namespace only. */}}
{{- define "tac2sol.namespaced" -}}
{{- if .Values.operator.watchNamespace }}true{{ end }}
{{- end }}

{{/* The ClusterTrainingRuntime's name: cluster-scoped, so one per release unless named. */}}
{{- define "tac2sol.trainjobRuntime" -}}
{{- .Values.trainJob.runtime.name | default (printf "%s-torch" (include "tac2sol.fullname" .)) | trunc 253 -}}
{{- end }}
