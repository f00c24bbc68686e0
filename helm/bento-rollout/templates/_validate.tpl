{{/* Checks across values that a JSON schema cannot express; each failure says what to change. */}}
{{- define "bento-rollout.validate" -}}
{{- $v := .Values -}}
{{- $mode := $v.routing.mode -}}
{{- if and (gt (int $v.routing.candidateWeight) 0) (not $v.models.candidate) -}}
{{- fail (printf "routing.candidateWeight is %d but models.candidate is empty: set models.candidate or put the weight back to 0" (int $v.routing.candidateWeight)) -}}
{{- end -}}
{{- if and (eq $mode "kserve") $v.routing.mirror.enabled -}}
{{- fail "routing.mirror needs routing.mode istio, gateway-api or traefik: KServe's canaryTrafficPercent cannot mirror traffic" -}}
{{- end -}}
{{- if and (eq $mode "kserve") $v.routing.headerMatch.enabled -}}
{{- fail "routing.headerMatch needs routing.mode istio or gateway-api: KServe's canaryTrafficPercent cannot route by header" -}}
{{- end -}}
{{- if and (eq $mode "traefik") $v.routing.headerMatch.enabled -}}
{{- fail "routing.headerMatch needs routing.mode istio or gateway-api: Traefik's TraefikService (traefik mode) splits by weight and mirrors, it cannot route by header" -}}
{{- end -}}
{{- if and (eq $mode "traefik") $v.routing.mirror.enabled (gt (int $v.routing.candidateWeight) 0) -}}
{{- fail (printf "routing.mirror with routing.candidateWeight %d: in traefik mode the TraefikService is weighted or mirroring, not both; set routing.candidateWeight=0 or turn routing.mirror off" (int $v.routing.candidateWeight)) -}}
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
{{- fail "monitoring.kind ServiceMonitor needs routing.mode istio, gateway-api or traefik (Standard mode: KServe makes a predictor Service); use PodMonitor with kserve (Knative mode)" -}}
{{- end -}}
{{- if and (eq $mode "kserve") (has (int $v.service.port) (list 8008 8012 8013 8022 8112 9090 9091)) -}}
{{- fail (printf "service.port %d is a port Knative's queue-proxy takes in every model pod in kserve routing mode (8008, 8012, 8013, 8022, 8112, 9090, 9091; Knative refuses all but 8112 for the model container): pick another port" (int $v.service.port)) -}}
{{- end -}}
{{- $own := splitList " " (include "bento-rollout.chartEnvNames" .) -}}
{{- range $role := list "stable" "candidate" -}}
{{- $seen := list -}}
{{- range (index $v.models (printf "%sEnv" $role)) -}}
{{- if has .name $own -}}
{{- $from := printf "the model is models.%s / models.%sDigest" $role $role -}}
{{- if or (hasPrefix "BENTO_JOIN_" .name) (hasPrefix "BENTO_FEEDBACK_" .name) -}}
{{- $from = "feedback labels are set by feedback.* (join, windowSeconds, tokenSecret, redis)" -}}
{{- end -}}
{{- fail (printf "models.%sEnv sets %s, which the chart sets itself (%s): %s; leave %s out" $role .name (join ", " $own) $from .name) -}}
{{- end -}}
{{- if has .name $seen -}}
{{- fail (printf "models.%sEnv names %s twice: keep one" $role .name) -}}
{{- end -}}
{{- $seen = append $seen .name -}}
{{- end -}}
{{- end -}}
{{- include "bento-rollout.validateKserveRevisions" . -}}
{{- include "bento-rollout.validateHandedOff" . -}}
{{- if and (eq $v.feedback.join "redis") $v.feedback.redis.address (not $v.feedback.redis.passwordSecret) -}}
{{- fail (printf "feedback.redis.address names your Redis (%s): set feedback.redis.passwordSecret to a Secret with its password under the key \"password\" (the chart's random one is not your Redis's)" $v.feedback.redis.address) -}}
{{- end -}}
{{- if and (gt (int $v.controller.replicas) 1) (not $v.controller.leaderElection.enabled) -}}
{{- fail (printf "controller.replicas is %d: more than one controller needs controller.leaderElection.enabled=true so that only one acts" (int $v.controller.replicas)) -}}
{{- end -}}
{{- if gt (int $v.replicas.min) (int $v.replicas.max) -}}
{{- fail (printf "replicas.min (%d) is greater than replicas.max (%d)" (int $v.replicas.min) (int $v.replicas.max)) -}}
{{- end -}}
{{- end -}}


{{/* kserve routing mode, a candidate set: KServe keeps the revision serving before this release as
     stable and gives the new one (the candidate's) canaryTrafficPercent. Refused where the cluster
     says that cannot hold: the InferenceService does not exist (its first and only revision would
     run the candidate, with all traffic), or it serves another model than models.stable (the
     ModelRollout would name a stable KServe does not keep). Only with a cluster to ask (helm
     install / upgrade; the namespace's "default" ServiceAccount answers): helm template and
     renders without a cluster (Argo CD) cannot tell a first install, and are not refused. */}}
{{- define "bento-rollout.validateKserveRevisions" -}}
{{- $v := .Values -}}
{{- if and (eq $v.routing.mode "kserve") $v.models.candidate -}}
{{- $ns := .Release.Namespace -}}
{{- $name := include "bento-rollout.isvcName" (list . "stable") -}}
{{- $isvc := lookup "serving.kserve.io/v1beta1" "InferenceService" $ns $name -}}
{{- if $isvc -}}
{{- $notes := dig "metadata" "annotations" dict $isvc -}}
{{- $served := "" -}}
{{- if hasKey $notes "bento-rollout.io/candidate-model" -}}
{{- /* a canary in flight: stable is the revision from before it, as the chart recorded */ -}}
{{- $served = index $notes "bento-rollout.io/stable-model" | default "" -}}
{{- else -}}
{{- /* stable alone: its latest revision, which becomes the previous one */ -}}
{{- range dig "spec" "predictor" "containers" list $isvc -}}
{{- range (get . "env" | default list) -}}
{{- if eq (get . "name") "BENTO_MODEL_TAG" }}{{ $served = get . "value" }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $served (ne $served $v.models.stable) -}}
{{- fail (printf "kserve routing mode: InferenceService %s/%s serves %s, the revision KServe keeps as stable when the candidate %s rolls out, but models.stable is %s: set models.stable=%s, or first make %s stable alone (models.candidate=\"\", models.stable=%s)" $ns $name $served $v.models.candidate $v.models.stable $served $v.models.stable $v.models.stable) -}}
{{- end -}}
{{- else if lookup "v1" "ServiceAccount" $ns "default" -}}
{{- fail (printf "kserve routing mode: InferenceService %s/%s does not exist yet, so its first revision would run the candidate %s and KServe would send it all traffic (there is no previous revision to keep as stable %s). Install with models.candidate=\"\" (stable alone), then: helm upgrade --reuse-values --set models.candidate=%s" $ns $name $v.models.candidate $v.models.stable $v.models.candidate) -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{/* istio / gateway-api / traefik mode, after a promotion's hand-off: the controller made the stable
     InferenceService serve the promoted model X (the ModelRollout's status: Promoted, hand-off
     Complete, model X). Values that name neither X as models.stable nor X as models.candidate
     (the same release again, which the chart renders as the controller left it) would put stable
     back on models.stable under its users' traffic - a silent downgrade. Refused with what to set.
     Only with a cluster to ask (lookup finds nothing under helm template). */}}
{{- define "bento-rollout.validateHandedOff" -}}
{{- $v := .Values -}}
{{- if ne $v.routing.mode "kserve" -}}
{{- $name := default $v.service.name $v.rollout.name -}}
{{- $mr := lookup "bento-rollout.io/v1alpha1" "ModelRollout" .Release.Namespace $name | default dict -}}
{{- $st := get $mr "status" | default dict -}}
{{- $handoff := get $st "handoff" | default dict -}}
{{- $promoted := toString (get $handoff "model") -}}
{{- if and (eq (toString (get $st "phase")) "Promoted") (eq (toString (get $handoff "phase")) "Complete") $promoted (ne $promoted $v.models.stable) (ne $promoted (toString $v.models.candidate)) -}}
{{- fail (printf "ModelRollout %s/%s promoted %s and the stable InferenceService serves it since the hand-off, but models.stable is %s: set models.stable=%s (helm would put stable back on %s under its users' traffic). To go back to %s, ship it as models.candidate" .Release.Namespace $name $promoted $v.models.stable $promoted $v.models.stable $v.models.stable) -}}
{{- end -}}
{{- end -}}
{{- end -}}
