{{/* Names, labels, addresses and Secret references of the feedback join (feedback.*): the shared
     Redis every model pod records its predictions in, the one exporter of its counters, and the
     bearer token /feedback requires (bentos/join.py, bentos/redis_join.py). */}}

{{- define "bento-rollout.feedbackSecretName" -}}
{{- printf "%s-feedback" (include "bento-rollout.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bento-rollout.joinRedisName" -}}
{{- printf "%s-join-redis" (include "bento-rollout.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bento-rollout.joinExporterName" -}}
{{- printf "%s-join-exporter" (include "bento-rollout.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bento-rollout.joinRedisSelectorLabels" -}}
{{ include "bento-rollout.selectorLabels" . }}
app.kubernetes.io/component: join-redis
{{- end -}}

{{- define "bento-rollout.joinExporterSelectorLabels" -}}
{{ include "bento-rollout.selectorLabels" . }}
app.kubernetes.io/component: join-exporter
{{- end -}}

{{/* "true" when the chart deploys the Redis itself (join: redis, no feedback.redis.address). */}}
{{- define "bento-rollout.ownsJoinRedis" -}}
{{- if and (eq .Values.feedback.join "redis") (not .Values.feedback.redis.address) }}true{{ end -}}
{{- end -}}

{{/* The port the chart's Redis listens on (in its pod and on its Service). */}}
{{- define "bento-rollout.joinRedisPort" -}}6379{{- end -}}

{{/* host:port of the join store: feedback.redis.address, else the chart's Redis Service. */}}
{{- define "bento-rollout.joinRedisAddress" -}}
{{- if .Values.feedback.redis.address -}}
{{- .Values.feedback.redis.address -}}
{{- else -}}
{{- printf "%s.%s.svc.cluster.local:%s" (include "bento-rollout.joinRedisName" .) .Release.Namespace (include "bento-rollout.joinRedisPort" .) -}}
{{- end -}}
{{- end -}}

{{/* BENTO_JOIN_STORE: local, or redis://<address>/0. */}}
{{- define "bento-rollout.joinStore" -}}
{{- if eq .Values.feedback.join "redis" }}redis://{{ include "bento-rollout.joinRedisAddress" . }}/0{{ else }}local{{ end -}}
{{- end -}}

{{/* The secretKeyRef of the feedback token: feedback.tokenSecret's "token", else the chart's. */}}
{{- define "bento-rollout.feedbackTokenRef" -}}
secretKeyRef:
  name: {{ .Values.feedback.tokenSecret | default (include "bento-rollout.feedbackSecretName" .) }}
  key: token
{{- end -}}

{{/* The secretKeyRef of the Redis password: feedback.redis.passwordSecret's "password", else the
     chart's "redis-password". */}}
{{- define "bento-rollout.joinPasswordRef" -}}
{{- if .Values.feedback.redis.passwordSecret -}}
secretKeyRef:
  name: {{ .Values.feedback.redis.passwordSecret }}
  key: password
{{- else -}}
secretKeyRef:
  name: {{ include "bento-rollout.feedbackSecretName" . }}
  key: redis-password
{{- end -}}
{{- end -}}

{{/* The model server's feedback variables (a list of env entries; bento-rollout.predictor). */}}
{{- define "bento-rollout.feedbackEnv" -}}
{{- $f := .Values.feedback -}}
# where labels meet predictions (feedback.join): the shared Redis, or local (this pod's SQLite)
- name: BENTO_JOIN_STORE
  value: {{ include "bento-rollout.joinStore" . | quote }}
{{- if eq $f.join "redis" }}
- name: BENTO_JOIN_PASSWORD
  valueFrom:
    {{- include "bento-rollout.joinPasswordRef" . | nindent 4 }}
{{- end }}
# /feedback needs "Authorization: Bearer <this>"
- name: BENTO_FEEDBACK_TOKEN
  valueFrom:
    {{- include "bento-rollout.feedbackTokenRef" . | nindent 4 }}
- name: BENTO_JOIN_WINDOW_SECONDS
  value: {{ $f.windowSeconds | quote }}
{{- end -}}

{{/* The uid and gid the chart's Redis runs as: its image's user (k8s/build/redis.Dockerfile,
     USER 999:999), which owns nothing but /data. */}}
{{- define "bento-rollout.joinRedisUser" -}}999{{- end -}}
