{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "migration-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name, or release-chart when the release name does not
already contain the chart name.
*/}}
{{- define "migration-operator.fullname" -}}
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

{{- define "migration-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels on every object.
*/}}
{{- define "migration-operator.labels" -}}
helm.sh/chart: {{ include "migration-operator.chart" . }}
{{ include "migration-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Selector labels: stable across upgrades, so never the version.
*/}}
{{- define "migration-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migration-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "migration-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "migration-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "migration-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The operator's own resource, granted cluster-wide in both modes (it holds no secret: credentials are Secret
references). Scoped installs need it too: deleting a watched namespace deletes the Role in it at the same time
as the DatabaseMigrations, and without this the operator could no longer remove their finalizer, leaving the
namespace Terminating for ever.
*/}}
{{- define "migration-operator.ownRules" -}}
# Its own resource: kopf patches metadata (finalizer, progress annotations) and the status.
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations/status"]
  verbs: ["get", "patch", "update"]
# Jobs are owned by their DatabaseMigration with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require this to set it.
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations/finalizers"]
  verbs: ["update"]
{{- end }}

{{/*
What the operator does inside a namespace it watches, and nothing more. Used by the ClusterRole (all
namespaces) or by one Role per watched namespace.
*/}}
{{- define "migration-operator.namespacedRules" -}}
# Backup, migrate, verify and restore Jobs.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The Jobs' pods: termination messages and logs carry Flyway's output into the status.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The maintenance window: scale the app down and back to its original replicas.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
# Migrations ConfigMap, database credentials, backup volume.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
# An event at every phase change.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The per-database Leases (one migration per database at a time) live in the operator's own namespace
(POD_NAMESPACE), whichever namespaces it watches: runs in different namespaces against one database must
see each other.
*/}}
{{- define "migration-operator.lockRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}

{{/*
What kopf itself reads cluster-wide, whatever it watches. No kopf.dev peering resources: the operator runs
standalone (one replica, no peering).
*/}}
{{- define "migration-operator.clusterRules" -}}
# kopf discovers the resources it serves and checks the CRD is established.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf resolves the watched namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
