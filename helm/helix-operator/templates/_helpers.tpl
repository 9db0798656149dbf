{{- define "helix-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* fullnameOverride, else the release name, suffixed with the chart's name unless it holds it. */ -}}
{{- define "helix-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "helix-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "helix-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helix-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "helix-operator.labels" -}}
{{ include "helix-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "helix-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "helix-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "helix-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- /* The namespaces a namespaced install watches and holds Roles in, comma-separated:
       watchNamespaces, or else the release's own. clusterWide installs watch every namespace. */ -}}
{{- define "helix-operator.namespaces" -}}
{{- join "," (.Values.watchNamespaces | default (list .Release.Namespace)) -}}
{{- end -}}

{{- /* What the operator does inside a namespace that holds HelixClusters. */ -}}
{{- define "helix-operator.namespacedRules" }}
rules:
  - {apiGroups: [helix.dev], resources: [helixclusters], verbs: [get, list, watch, patch]}
  - {apiGroups: [helix.dev], resources: [helixclusters/status], verbs: [get, patch]}
  - {apiGroups: [""], resources: [pods], verbs: [get, list, watch, create, patch, delete]}
  - {apiGroups: [""], resources: [configmaps], verbs: [get, list, create, patch, delete]}
  - {apiGroups: [""], resources: [services], verbs: [get, create, patch]}
  - {apiGroups: [""], resources: [secrets], verbs: [get, create]}
  - {apiGroups: [apps], resources: [deployments], verbs: [get, list, watch, create, patch]}
  - {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, create, patch]}
  - {apiGroups: [""], resources: [events], verbs: [create]}
  - {apiGroups: [kopf.dev], resources: [kopfpeerings], verbs: [get, list, watch, patch]}
{{- end }}
