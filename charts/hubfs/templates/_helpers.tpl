{{/* Names, labels and the paths that must agree between kubelet, the
registrar and the driver. Keep every such path here, in one place. */}}

{{- define "hubfs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hubfs.fullname" -}}
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

{{- define "hubfs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hubfs.labels" -}}
helm.sh/chart: {{ include "hubfs.chart" . }}
app.kubernetes.io/name: {{ include "hubfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hubfs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hubfs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hubfs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "hubfs.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{- define "hubfs.nodeServiceAccount" -}}
{{- if .Values.serviceAccount.node.create }}
{{- default (printf "%s-node" (include "hubfs.fullname" .)) .Values.serviceAccount.node.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.node.name }}
{{- end }}
{{- end }}

{{- define "hubfs.controllerServiceAccount" -}}
{{- if .Values.serviceAccount.controller.create }}
{{- default (printf "%s-controller" (include "hubfs.fullname" .)) .Values.serviceAccount.controller.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.controller.name }}
{{- end }}
{{- end }}

{{/* The node plugin's socket directory on the host: kubelet finds the socket
at <kubeletDir>/plugins/<driverName>/csi.sock, the registrar tells kubelet that
path, and the node plugin serves on the same file mounted at /csi. */}}
{{- define "hubfs.nodeSocketDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName }}
{{- end }}

{{- define "hubfs.registrationPath" -}}
{{- printf "%s/csi.sock" (include "hubfs.nodeSocketDir" .) }}
{{- end }}

{{- define "hubfs.quotaServiceName" -}}
{{- printf "%s-quota" (include "hubfs.fullname" .) }}
{{- end }}

{{/* The quota controller's share volume: explicit, or derived from the
StorageClass backend. */}}
{{- define "hubfs.shareVolume" -}}
{{- if .Values.quotaController.shareVolume }}
{{- toYaml .Values.quotaController.shareVolume }}
{{- else if eq .Values.storageClass.backend "nfs" }}
nfs:
  server: {{ required "storageClass.server is required for backend nfs" .Values.storageClass.server | quote }}
  path: {{ .Values.storageClass.share | quote }}
{{- else }}
hostPath:
  path: {{ required "storageClass.root is required for backend local" .Values.storageClass.root | quote }}
  type: Directory
{{- end }}
{{- end }}

{{/* Global logging flags shared by every hubfs container. */}}
{{- define "hubfs.logArgs" -}}
- --log-format={{ .Values.logFormat }}
- --log-level={{ .Values.logLevel }}
{{- end }}
