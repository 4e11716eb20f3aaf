{{/* Names and labels. */}}
{{- define "ec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ec.fullname" -}}
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

{{- define "ec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: email-channels
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "fetcher") */}}
{{- define "ec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ec.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ec.componentLabels" -}}
{{ include "ec.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ec.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ec.secretName" -}}
{{- default (printf "%s-secrets" (include "ec.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "ec.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The components: values key, command in the image, settings prefix, consumer group. */}}
{{- define "ec.components" -}}
fetcher: {values: fetcher, command: fetcher, prefix: FETCHER, group: email-fetcher}
router: {values: router, command: router, prefix: ROUTER, group: email-router}
sender: {values: sender, command: sender, prefix: SENDER, group: email-sender}
config-api: {values: configApi, command: config-api, prefix: CONFIG_API, group: ""}
{{- end -}}

{{/* Topic names behind the prefix, from the generated registry (files/topics.json). */}}
{{- define "ec.topic" -}}
{{- printf "%s%s" .root.Values.kafka.topicPrefix .topic -}}
{{- end -}}

{{- define "ec.checks" -}}
{{- if gt (int .Values.fetcher.replicas) (int .Values.kafka.partitions) -}}
{{- fail (printf "fetcher.replicas (%d) must not exceed kafka.partitions (%d): a channel is fetched by the one fetcher owning its email.channels partition, so extra fetchers idle. Raise the partitions first (docs/deploy.md, scaling fetchers)." (int .Values.fetcher.replicas) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- range $name := list "router" "sender" -}}
{{- $auto := (index $.Values $name).autoscaling -}}
{{- if gt (int $auto.maxReplicas) (int $.Values.kafka.partitions) -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) must not exceed kafka.partitions (%d): replicas beyond the partition count get nothing to consume." $name (int $auto.maxReplicas) (int $.Values.kafka.partitions)) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.autoscaling.mode (list "keda" "hpa" "none")) -}}
{{- fail "autoscaling.mode must be one of keda, hpa, none" -}}
{{- end -}}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.secretKeys) -}}
{{- fail "secrets.secretKeys (or secrets.existingSecret) is required: every service needs the secret keyring EMAIL_CHANNELS_SECRET_KEYS" -}}
{{- end -}}
{{- end -}}
