{{/* Names, labels and the predictor pod spec shared by the templates. */}}

{{- define "bento-rollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bento-rollout.fullname" -}}
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

{{- define "bento-rollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bento-rollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bento-rollout.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bento-rollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bento-rollout
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels every model pod carries: what PodMonitor, NetworkPolicy and PDB select. */}}
{{- define "bento-rollout.modelSelectorLabels" -}}
{{ include "bento-rollout.selectorLabels" . }}
app.kubernetes.io/component: model
bento-rollout.io/service: {{ .Values.service.name }}
{{- end -}}

{{- define "bento-rollout.controllerSelectorLabels" -}}
{{ include "bento-rollout.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "bento-rollout.controllerName" -}}
{{- printf "%s-controller" (include "bento-rollout.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bento-rollout.image" -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}

{{/* The version part of a model tag ("iris:v2" -> "v2"; "iris" -> "latest"). */}}
{{- define "bento-rollout.modelVersion" -}}
{{- $parts := splitList ":" . -}}
{{- if gt (len $parts) 1 }}{{ last $parts }}{{ else }}latest{{ end -}}
{{- end -}}

{{/* InferenceService name of a role: kserve mode has one ("<service>"), the others two. */}}
{{- define "bento-rollout.isvcName" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}
{{- if eq $root.Values.routing.mode "kserve" -}}
{{- $root.Values.service.name -}}
{{- else -}}
{{- printf "%s-%s" $root.Values.service.name $role -}}
{{- end -}}
{{- end -}}

{{/* traefik: routing.hosts as one IngressRoute matcher, Host(`a`) || Host(`b`). */}}
{{- define "bento-rollout.traefikHosts" -}}
{{- $hosts := list -}}
{{- range .Values.routing.hosts }}{{ $hosts = append $hosts (printf "Host(`%s`)" .) }}{{ end -}}
{{- join " || " $hosts -}}
{{- end -}}

{{/* Cluster-local host of a role's predictor Service (Standard mode: "<isvc>-predictor", port 80). */}}
{{- define "bento-rollout.predictorHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s-predictor.%s.svc.cluster.local" (include "bento-rollout.isvcName" .) $root.Release.Namespace -}}
{{- end -}}

{{/* The KServe deployment mode of the model pods: kserve routing needs revisions (Knative), the
     others one plain Deployment per version (Standard). KServe v0.20.0's names: it still reads the
     deprecated "Serverless" / "RawDeployment" as these (pkg/constants/constants.go
     ParseDeploymentMode); a KServe older than the rename does not know the new ones. */}}
{{- define "bento-rollout.deploymentMode" -}}
{{- if eq .Values.routing.mode "kserve" }}Knative{{ else }}Standard{{ end -}}
{{- end -}}

{{/* The name the model pods' Bento port has on the pod. Standard: the chart's own ("http1": KServe
     copies the predictor's containers as they are). Knative renames the user container's port
     "user-port" on every revision's pods (knative.dev/serving pkg/reconciler/revision/resources/
     deploy.go makeServingContainer/buildContainerPorts, v1.UserPortName). */}}
{{- define "bento-rollout.modelPortName" -}}
{{- if eq .Values.routing.mode "kserve" }}user-port{{ else }}http1{{ end -}}
{{- end -}}

{{- define "bento-rollout.routeName" -}}
{{- .Values.service.name -}}
{{- end -}}

{{/* The restricted container security context (Pod Security Standard "restricted"), user and
     group included: Knative (kserve routing) keeps a container's runAsUser / runAsGroup, but
     refuses a pod-level securityContext unless the kubernetes.podspec-securitycontext feature is
     on (knative.dev/serving v0.48.1 pkg/apis/serving/fieldmask.go PodSpecMask, SecurityContextMask). */}}
{{- define "bento-rollout.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "bento-rollout.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The pinned artifact digest of a role ("stable" / "candidate"; "" when not pinned). */}}
{{- define "bento-rollout.modelDigest" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}
{{- index $root.Values.models (printf "%sDigest" $role) | default "" -}}
{{- end -}}

{{/* The variables the chart sets on the model server (bento-rollout.predictor; the feedback join's
     from feedback.*, bento-rollout.feedbackEnv), the one the server sets for its own workers
     (bentos/service.py), and BENTO_FEEDBACK_TOKEN_FILE, which would replace the chart's token
     (bentos/join.py): models.stableEnv / candidateEnv may not name them. */}}
{{- define "bento-rollout.chartEnvNames" -}}
BENTO_MODEL_TAG BENTO_MODEL_DIGEST TMPDIR XDG_CACHE_HOME BENTO_SUPERVISOR_PID BENTO_JOIN_STORE BENTO_JOIN_PASSWORD BENTO_JOIN_WINDOW_SECONDS BENTO_FEEDBACK_TOKEN BENTO_FEEDBACK_TOKEN_FILE
{{- end -}}

{{/* The predictor of one InferenceService: the Bento image serving one model tag. Args: root, role, tag. */}}
{{- /* A promotion's hand-off, as the cluster says it happened: "true" when this release's
       ModelRollout (read with lookup at install/upgrade) is Promoted from models.stable to
       models.candidate and its hand-off is Complete - the controller has made the stable
       InferenceService serve the candidate's model. Without cluster access (helm template,
       Argo CD) lookup finds nothing: set models.stable to the promoted model. */}}
{{- define "bento-rollout.handedOff" -}}
{{- $v := .Values -}}
{{- if and $v.rollout.enabled $v.models.candidate (ne $v.routing.mode "kserve") -}}
{{- $mr := lookup "bento-rollout.io/v1alpha1" "ModelRollout" .Release.Namespace (default $v.service.name $v.rollout.name) | default dict -}}
{{- $st := get $mr "status" | default dict -}}
{{- $handoff := get $st "handoff" | default dict -}}
{{- if and (eq (toString (get $st "phase")) "Promoted") (eq (toString (get $handoff "phase")) "Complete") (eq (toString (get $st "stable")) $v.models.stable) (eq (toString (get $st "candidate")) $v.models.candidate) -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* A predictor: (root, role, tag[, source]) - source: the version whose digest pin and extra
       env it carries (default: role's own; the candidate's on stable after a hand-off). */}}
{{- define "bento-rollout.predictor" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}{{- $tag := index . 2 -}}
{{- $source := $role -}}{{- if gt (len .) 3 }}{{ $source = index . 3 }}{{ end -}}
{{- $v := $root.Values -}}
{{- $digest := include "bento-rollout.modelDigest" (list $root $source) -}}
minReplicas: {{ $v.replicas.min }}
maxReplicas: {{ $v.replicas.max }}
labels:
  {{- include "bento-rollout.modelSelectorLabels" $root | nindent 2 }}
  {{- if ne $v.routing.mode "kserve" }}
  bento-rollout.io/role: {{ $role }}
  {{- end }}
automountServiceAccountToken: false
{{- /* Knative mode: no pod-level securityContext (Knative's webhook refuses one by default, so the
       Knative Service KServe makes would never be created); the container's carries the user.
       fsGroup, pod-level only, is then not applied: the chart's volumes are emptyDirs, which any
       user may write. */}}
{{- if ne $v.routing.mode "kserve" }}
securityContext:
  {{- include "bento-rollout.podSecurityContext" $root | nindent 2 }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: kserve-container
    image: {{ include "bento-rollout.image" $v.image | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    # The Bento image's entrypoint runs `bentoml serve <flags> $BENTO_PATH` when the args start with a
    # flag. Idle keep-alive connections live 75 s, not uvicorn's 5 s, so a proxy in front (the
    # queue-proxy, an Envoy sidecar, the gateway) that pools connections does not reuse one the
    # server is closing (a reset under a request; rollout/local/bento.py does the same locally).
    # --port: the server listens where the containerPort and the probes say (service.port); it
    # listened on BentoML's 3000 whatever the value.
    args: ["--port", {{ $v.service.port | toString | quote }}, "--timeout-keep-alive", "75"]
    env:
      - name: BENTO_MODEL_TAG
        value: {{ $tag | quote }}
      {{- if $digest }}
      # the server refuses any artifact but this one (models.{{ $source }}Digest)
      - name: BENTO_MODEL_DIGEST
        value: {{ $digest | quote }}
      {{- end }}
      - name: TMPDIR
        value: /tmp
      - name: XDG_CACHE_HOME
        value: /tmp/.cache
      {{- include "bento-rollout.feedbackEnv" $root | nindent 6 }}
      {{- with index $v.models (printf "%sEnv" $source) }}
      # models.{{ $source }}Env, after the chart's own (which _validate.tpl keeps it from replacing)
      {{- toYaml . | nindent 6 }}
      {{- end }}
    ports:
      - name: http1
        containerPort: {{ $v.service.port }}
        protocol: TCP
    readinessProbe:
      httpGet:
        path: /v2/health/ready
        port: {{ $v.service.port }}
      initialDelaySeconds: {{ $v.probes.initialDelaySeconds }}
      periodSeconds: {{ $v.probes.periodSeconds }}
      timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      failureThreshold: {{ $v.probes.failureThreshold }}
    {{- if ne $v.routing.mode "kserve" }}
    startupProbe:
      httpGet:
        path: /v2/health/ready
        port: {{ $v.service.port }}
      periodSeconds: 5
      timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      failureThreshold: {{ max 1 (div $v.probes.startupSeconds 5) }}
    {{- if $v.probes.drainSeconds }}
    # keeps serving while kube-proxy and the gateway drop the terminating pod (probes.drainSeconds)
    lifecycle:
      preStop:
        sleep:
          seconds: {{ $v.probes.drainSeconds }}
    {{- end }}
    {{- end }}
    livenessProbe:
      httpGet:
        path: /v2/health/live
        port: {{ $v.service.port }}
      initialDelaySeconds: {{ $v.probes.initialDelaySeconds }}
      periodSeconds: {{ $v.probes.periodSeconds }}
      timeoutSeconds: {{ $v.probes.timeoutSeconds }}
      failureThreshold: {{ $v.probes.failureThreshold }}
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      {{- include "bento-rollout.containerSecurityContext" $root | nindent 6 }}
    # the root filesystem is read-only: BentoML writes only its metrics (one file per worker,
    # under $BENTOML_HOME=/home/bentoml/) and temporary files
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: prometheus-multiproc
        mountPath: /home/bentoml/prometheus_multiproc_dir
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 256Mi
  - name: prometheus-multiproc
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}


{{/* gateway-api: the URL of the first of routing.gatewayApi.parentRefs, read from the cluster - its
     first status.addresses entry (what the Gateway API says the Gateway is reachable at) and the
     port of its HTTP listener (the parentRef's sectionName, else the first). Fails, naming the
     Gateway and loadtest.host, when there is none (not programmed yet, or helm template: no cluster). */}}
{{- define "bento-rollout.gatewayUrl" -}}
{{- $ref := first .Values.routing.gatewayApi.parentRefs -}}
{{- $ns := $ref.namespace | default .Release.Namespace -}}
{{- $gw := lookup "gateway.networking.k8s.io/v1" "Gateway" $ns $ref.name -}}
{{- $addr := "" -}}
{{- with dig "status" "addresses" list $gw }}{{ $addr = get (first .) "value" }}{{ end -}}
{{- if not $addr -}}
{{- fail (printf "loadtest in gateway-api mode targets the Gateway %s/%s (routing.gatewayApi.parentRefs[0]), but it has no status.addresses here (not programmed yet, or no cluster to ask: helm template): set loadtest.host to its address, or routing.hosts" $ns $ref.name) -}}
{{- end -}}
{{- $port := 0 -}}
{{- range dig "spec" "listeners" list $gw -}}
{{- if and (not $port) (eq (get . "protocol") "HTTP") (or (not $ref.sectionName) (eq (get . "name") $ref.sectionName)) -}}
{{- $port = int (get . "port") -}}
{{- end -}}
{{- end -}}
{{- if contains ":" $addr }}{{ $addr = printf "[%s]" $addr }}{{ end -}}
{{- if and $port (ne $port 80) }}http://{{ $addr }}:{{ $port }}{{ else }}http://{{ $addr }}{{ end -}}
{{- end -}}
