{{/* Checks across values that a JSON schema cannot express; each failure says what to change. */}}
{{- define "bento-rollout.validate" -}}
{{- $v := .Values -}}
{{- $mode := $v.routing.mode -}}
{{- if and (gt (int $v.routing.candidateWeight) 0) (not $v.models.candidate) -}}
{{- fail (printf "routing.candidateWeight is %d but models.candidate is empty: set models.candidate or put the weight back to 0" (int $v.routing.candidateWeight)) -}}
{{- end -}}
{{- if and (eq $mode "kserve") $v.routing.mirror.enabled -}}
{{- fail "routing.mirror needs routing.mode istio or gateway-api: KServe's canaryTrafficPercent cannot mirror traffic" -}}
{{- end -}}
{{- if and (eq $mode "kserve") $v.routing.headerMatch.enabled -}}
{{- fail "routing.headerMatch needs routing.mode istio or gateway-api: KServe's canaryTrafficPercent cannot route by header" -}}
{{- end -}}
{{- if and (or $v.routing.mirror.enabled $v.routing.headerMatch.enabled) (not $v.models.candidate) -}}
{{- fail "routing.mirror and routing.headerMatch send traffic to the candidate: set models.candidate" -}}
{{- end -}}
{{- if and $v.models.candidateDigest (not $v.models.candidate) -}}
{{- fail "models.candidateDigest pins a candidate, but models.candidate is empty: set models.candidate or clear the digest" -}}
{{- end -}}
{{- if and $v.rollout.enabled (not $v.models.candidate) -}}
{{- fail "rollout.enabled needs models.candidate: a ModelRollout moves traffic from stable to a candidate" -}}
{{- end -}}
{{- if and $v.rollout.enabled (not $v.controller.enabled) -}}
{{- fail "rollout.enabled needs controller.enabled: nothing would run the ModelRollout" -}}
{{- end -}}
{{- if and (eq $mode "kserve") $v.monitoring.enabled (eq $v.monitoring.kind "ServiceMonitor") -}}
{{- fail "monitoring.kind ServiceMonitor needs routing.mode istio or gateway-api (Standard mode: KServe makes a predictor Service); use PodMonitor with kserve (Knative mode)" -}}
{{- end -}}
{{- if and (eq $mode "kserve") (has (int $v.service.port) (list 8008 8012 8013 8022 8112 9090 9091)) -}}
{{- fail (printf "service.port %d is a port Knative's queue-proxy takes in every model pod in kserve routing mode (8008, 8012, 8013, 8022, 8112, 9090, 9091; Knative refuses all but 8112 for the model container): pick another port" (int $v.service.port)) -}}
{{- end -}}
{{- $own := splitList " " (include "bento-rollout.chartEnvNames" .) -}}
{{- range $role := list "stable" "candidate" -}}
{{- $seen := list -}}
{{- range (index $v.models (printf "%sEnv" $role)) -}}
{{- if has .name $own -}}
{{- fail (printf "models.%sEnv sets %s, which the chart sets itself (%s): the model is models.%s / models.%sDigest; leave %s out" $role .name (join ", " $own) $role $role .name) -}}
{{- end -}}
{{- if has .name $seen -}}
{{- fail (printf "models.%sEnv names %s twice: keep one" $role .name) -}}
{{- end -}}
{{- $seen = append $seen .name -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int $v.controller.replicas) 1) (not $v.controller.leaderElection.enabled) -}}
{{- fail (printf "controller.replicas is %d: more than one controller needs controller.leaderElection.enabled=true so that only one acts" (int $v.controller.replicas)) -}}
{{- end -}}
{{- if gt (int $v.replicas.min) (int $v.replicas.max) -}}
{{- fail (printf "replicas.min (%d) is greater than replicas.max (%d)" (int $v.replicas.min) (int $v.replicas.max)) -}}
{{- end -}}
{{- if and (eq $mode "gateway-api") $v.loadtest.enabled (not $v.loadtest.host) (not $v.routing.hosts) -}}
{{- fail "loadtest with routing.mode gateway-api needs loadtest.host (the Gateway's address) or routing.hosts" -}}
{{- end -}}
{{- end -}}
