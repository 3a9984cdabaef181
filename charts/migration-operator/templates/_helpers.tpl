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

{{- define "migration-operator.checksumKeySecret" -}}
{{- default (printf "%s-checksum-key" (include "migration-operator.fullname" .)) .Values.checksumKey.existingSecret }}
{{- end }}

{{/*
A list of globs as RE2 regular expressions in a CEL list literal (raw strings), for the admission policy.
*/}}
{{- define "migration-operator.celPatterns" -}}
{{- $patterns := list }}
{{- range . }}
{{- if or (contains "'" .) (contains "\\" .) }}{{ fail (printf "policy patterns may not contain ' or \\: %s" .) }}{{ end }}
{{- $patterns = append $patterns (printf "r'^%s$'" (regexQuoteMeta . | replace "\\*" ".*" | replace "\\?" ".")) }}
{{- end }}
{{- printf "[%s]" (join ", " $patterns) }}
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
# Its own resource: read and watched by kopf, which patches metadata (finalizer, progress annotations).
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations"]
  verbs: ["get", "list", "watch", "patch"]
# Phase, conditions, snapshots.
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations/status"]
  verbs: ["patch"]
# Jobs are owned by their DatabaseMigration with blockOwnerDeletion; clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require this to set it (no call of the operator's).
- apiGroups: ["dbops.io"]
  resources: ["databasemigrations/finalizers"]
  verbs: ["update"]
{{- end }}

{{/*
What the operator does inside a namespace it watches, and nothing more: every verb is one the operator calls
(tests/unit/test_rbac_verbs.py fails when the code and these rules differ). Used by the ClusterRole (all
namespaces) or by one Role per watched namespace.
*/}}
{{- define "migration-operator.namespacedRules" -}}
# Backup, migrate, verify and restore Jobs: created, found by name and by label, watched, stopped.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The Jobs' pods (why one cannot start; which ended; watched: a pod that ended moves the run on at once) and the
# app's (the drain).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# A Job's output (Flyway's JSON, the backup's summary) is read from its pod's log.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# The maintenance window: the app read, watched and scaled (a patch of spec.replicas and dbops.io/ annotations).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "patch"]
# Migrations and compensate ConfigMaps, the credentials and CA Secrets, the backup volume: read by name.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# An event at every phase change (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The per-database Leases (one migration per database at a time) live in the operator's own namespace
(POD_NAMESPACE), whichever namespaces it watches: runs in different namespaces against one database must
see each other. The leader election's Lease (leader.py: get, create, update) lives there too.
*/}}
{{- define "migration-operator.lockRules" -}}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "delete"]
{{- end }}

{{/*
What kopf itself reads cluster-wide, whatever it watches, and the namespace check of a run being deleted. No kopf.dev
peering resources: each replica runs kopf standalone, and only the elected leader runs it (leader.py).
*/}}
{{- define "migration-operator.clusterRules" -}}
# kopf follows the CustomResourceDefinitions (is ours established, did it change).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# kopf resolves the watched namespaces (globs); the operator asks whether a run's namespace is being deleted.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
