"""The chart's values.schema.json, generated: chart settings written here, rollout pieces from the spec.

Helm validates values against this JSON schema before it renders anything, so a typo or a bad
value fails ``helm install`` with the path and the reason. The parts that describe a rollout
(model tags, service name, ``rollout.strategy``, ``rollout.analysis``) are taken from the pydantic
models in rollout/spec.py, so the chart accepts exactly what the ModelRollout CRD and the CLI accept.

Who calls it: ``python -m rollout.k8s.generate`` (writes helm/bento-rollout/values.schema.json) and
tests/unit/test_crd*.py (drift check).
"""

from __future__ import annotations

import json
from typing import Any

from rollout import spec
from rollout.addresses import MAX_URL, URL_PATTERN

ROUTING_MODES = ["kserve", "istio", "gateway-api", "traefik"]
MONITOR_KINDS = ["PodMonitor", "ServiceMonitor"]
K8S_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
K8S_DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
IMAGE_REF = r"^[a-z0-9]+([._/:-][a-z0-9]+)*$"
# Kubernetes' EnvVar name rule before 1.34 relaxed it (what every supported server admits)
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
HOST_PORT = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$"


def _spec_part(model: type[Any]) -> dict[str, Any]:
    """A pydantic model's schema as self-contained JSON schema ($defs kept, int-or-string widened)."""
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    return _widen_durations(raw)


def _widen_durations(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("x-kubernetes-int-or-string"):
            node = {k: v for k, v in node.items() if k not in ("type", "x-kubernetes-int-or-string")}
            return {**node, "type": ["string", "integer"]}
        return {k: _widen_durations(v) for k, v in node.items() if k not in ("title", "default")}
    if isinstance(node, list):
        return [_widen_durations(v) for v in node]
    return node


def _obj(
    props: dict[str, Any], required: list[str] | None = None, description: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    return out


def _str(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _int(description: str, minimum: int | None = None, maximum: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer", "description": description}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _image(description: str) -> dict[str, Any]:
    return _obj(
        {
            "repository": _str(
                "Image repository (registry host and path).",
                minLength=1,
                pattern=IMAGE_REF,
            ),
            "tag": _str("Image tag.", minLength=1),
            "digest": _str(
                "sha256:<64 hex> of the image; when set the image is pulled by digest and tag is "
                "ignored. Empty: by tag.",
                pattern=r"^(sha256:[a-f0-9]{64})?$",
            ),
            "pullPolicy": {
                "enum": ["Always", "IfNotPresent", "Never"],
                "description": "The container's imagePullPolicy.",
            },
        },
        ["repository", "tag"],
        description,
    )


def _resources(whose: str) -> dict[str, Any]:
    quantity = {"type": ["string", "number"], "pattern": K8S_QUANTITY}
    amounts = {
        "cpu": {**quantity, "description": "CPU, a Kubernetes quantity (250m, 1)."},
        "memory": {**quantity, "description": "Memory, a Kubernetes quantity (512Mi, 1Gi)."},
        "ephemeral-storage": {**quantity, "description": "Local ephemeral storage, a Kubernetes quantity."},
    }
    return _obj(
        {
            "requests": _obj(amounts, description="What the scheduler reserves for the container."),
            "limits": _obj(amounts, description="The most the container may use."),
        },
        description=f"Resources of {whose} (the container's resources, as in a Pod).",
    )


def _enabled(description: str, **props: Any) -> dict[str, Any]:
    flag = {"type": "boolean", "description": f"true: on. {description}."}
    return _obj({"enabled": flag, **props}, ["enabled"], f"{description}.")


def _labels(description: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string"}, "description": description}


def _extra_env(role: str) -> dict[str, Any]:
    return {
        "type": "array",
        "description": (
            f"Environment variables added to the {role}'s model server after the chart's own, "
            "e.g. BENTO_WORKERS, or BENTO_FAULT_ERROR_RATE on the candidate for a rollback drill. "
            "They may not name what the chart or the server sets (BENTO_MODEL_TAG, "
            "BENTO_MODEL_DIGEST, TMPDIR, XDG_CACHE_HOME, BENTO_SUPERVISOR_PID; from feedback.*: "
            "BENTO_JOIN_STORE, BENTO_JOIN_PASSWORD, BENTO_JOIN_WINDOW_SECONDS, "
            "BENTO_FEEDBACK_TOKEN, BENTO_FEEDBACK_TOKEN_FILE). In kserve routing "
            "mode the one predictor carries the candidate's while a candidate is set, else the "
            "stable's."
        ),
        "items": _obj(
            {
                "name": _str(
                    "Variable name (letters, digits, '_', '-', '.'; not a digit first).", pattern=ENV_NAME
                ),
                "value": _str("Its value, a string (quote numbers in YAML)."),
            },
            ["name", "value"],
        ),
    }


def _feedback() -> dict[str, Any]:
    secret = r"^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    redis = _obj(
        {
            "address": _str(
                "host:port of a Redis you run (then passwordSecret names its password). Empty: the "
                "chart deploys one (<fullname>-join-redis).",
                pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
            ),
            "passwordSecret": _str(
                'A Secret with the Redis password under the key "password" (needed with address). '
                "Empty: the chart's <fullname>-feedback, key redis-password, a random one kept across "
                "upgrades.",
                pattern=secret,
            ),
            "image": _image("The Redis image of the chart's Redis (Debian's redis-server 7, uid 999)."),
            "maxMemory": _str(
                "Redis's maxmemory (e.g. 128mb, 1gb): a full store refuses writes (noeviction) "
                "instead of being OOM-killed; about half of resources.limits.memory.",
                pattern=r"^[0-9]+([kKmMgG][bB]?)?$",
            ),
            "persistence": _enabled(
                "A PersistentVolumeClaim for the append-only file (false: an emptyDir, which "
                "survives a container restart, not the pod's deletion)",
                storageClass=_str("The claim's storageClassName; empty: the cluster's default."),
                size={
                    "type": "string",
                    "pattern": K8S_QUANTITY,
                    "description": "The claim's size, or the emptyDir's sizeLimit (a Kubernetes quantity).",
                },
            ),
            "resources": _resources("the chart's Redis container"),
        },
        description="join: redis, the shared store: your Redis (address) or the chart's.",
    )
    exporter = _obj(
        {
            "port": _int("Port of the exporter's /metrics and /healthz, 1024-65535.", 1024, 65535),
            "resources": _resources("the join exporter container"),
        },
        description="join: redis, the one exporter of the store's counters (bentos/join_exporter.py).",
    )
    return _obj(
        {
            "join": {
                "enum": ["redis", "local"],
                "description": (
                    "Where labels meet predictions: redis, one Redis for every model pod of every "
                    "version (labels may reach any pod); local, each pod's own SQLite (only right "
                    "with one pod per version and labels sent back to the pod that answered)."
                ),
            },
            "windowSeconds": _int(
                "Seconds after a prediction that its label still counts (later: HTTP 410), 1-604800.",
                1,
                604800,
            ),
            "tokenSecret": _str(
                "A Secret with the bearer token /feedback requires under the key "
                '"token" (16 characters or more). Empty: the chart\'s <fullname>-feedback, a random '
                "one kept across upgrades.",
                pattern=secret,
            ),
            "redis": redis,
            "exporter": exporter,
        },
        ["join"],
        "Feedback labels and mirrored answers joined to the predictions they are for, counted for "
        "the version that answered; authenticated with a bearer token in both join modes.",
    )


def values_schema() -> dict[str, Any]:
    model_ref = spec.ModelRef.model_json_schema(by_alias=True)["properties"]["model"]
    tag = {"type": "string", "pattern": model_ref["pattern"], "description": model_ref["description"]}
    digest = _str(
        "sha256:<64 hex> of the model's artifact (`rollout models` shows it): set as "
        "BENTO_MODEL_DIGEST on the predictor, whose server then refuses any other artifact under the "
        "tag, and as the ModelRollout's stable.digest / candidate.digest. Empty: not pinned.",
        pattern=f"({spec.MODEL_DIGEST})|^$",
    )
    rollout_spec = _spec_part(spec.RolloutSpec)
    defs = rollout_spec.pop("$defs")
    header_name = _str("HTTP header name (letters, digits and '-').", pattern=spec.HEADER_NAME)
    seconds = "seconds, for the readiness and liveness probes of the model server"
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bento-rollout chart values",
        "$defs": defs,
        **_obj(
            {
                "nameOverride": _str("Replaces the chart name in object names."),
                "fullnameOverride": _str("Replaces <release>-<chart> in object names."),
                "commonLabels": _labels("Labels added to every object the chart renders."),
                "service": _obj(
                    {
                        "name": _str(
                            "The served model's name: InferenceService prefix, route and metric label "
                            "(spec.service of the ModelRollout). At most 45 characters.",
                            pattern=spec.DNS_LABEL,
                            maxLength=45,
                        ),
                        "port": _int("The Bento's HTTP port (OIP v2 and /metrics), 1024-65535.", 1024, 65535),
                    },
                    ["name", "port"],
                    "The served model.",
                ),
                "image": _image(
                    "The Bento image (bentoml containerize of the root bentofile.yaml); one image serves "
                    "every model version, BENTO_MODEL_TAG picks it."
                ),
                "imagePullSecrets": {
                    "type": "array",
                    "description": "Secrets for pulling the images (imagePullSecrets of the model and controller pods).",
                    "items": _obj(
                        {"name": _str("Name of a docker-registry Secret in the release's namespace.")},
                        ["name"],
                    ),
                },
                "models": _obj(
                    {
                        "stable": tag,
                        "candidate": {
                            **tag,
                            "pattern": f"({tag['pattern']})|^$",
                            "description": (
                                f"{tag['description']} Empty (the default): stable only. kserve routing "
                                "mode: set it with helm upgrade after a stable-only install (KServe keeps "
                                "the revision serving before as stable); a first install with one is "
                                "refused."
                            ),
                        },
                        "stableDigest": digest,
                        "candidateDigest": digest,
                        "stableEnv": _extra_env("stable"),
                        "candidateEnv": _extra_env("candidate"),
                    },
                    ["stable"],
                    "BentoML model tags; an empty candidate deploys stable only. A digest pins the "
                    "model's artifact (`rollout models` shows it): the server refuses any other.",
                ),
                "replicas": _obj(
                    {
                        "min": _int("minReplicas of each predictor, 0-100.", 0, 100),
                        "max": _int("maxReplicas of each predictor, 1-100.", 1, 100),
                    },
                    description="Replicas of each model predictor (stable and candidate alike).",
                ),
                "resources": _resources("the model server container"),
                "probes": _obj(
                    {
                        "initialDelaySeconds": _int(
                            f"Delay before the first check, {seconds}; 0-600.", 0, 600
                        ),
                        "periodSeconds": _int(f"Time between checks, {seconds}; 1-300.", 1, 300),
                        "timeoutSeconds": _int(f"Time a check may take, {seconds}; 1-60.", 1, 60),
                        "failureThreshold": _int(
                            "Failed checks in a row before not ready (or restarted), 1-30.", 1, 30
                        ),
                        "startupSeconds": _int(
                            "How long the model server may take to start (load its model) before its "
                            "liveness probe counts: a startupProbe on /v2/health/ready every 5 s "
                            "(istio, gateway-api and traefik modes); 10-1800.",
                            10,
                            1800,
                        ),
                        "drainSeconds": _int(
                            "How long a model pod told to stop keeps serving before its server shuts "
                            "down (a preStop sleep; istio, gateway-api and traefik modes): the time kube-proxy "
                            "and the gateway take to drop it from their endpoints. 0 turns it off; "
                            "0-60.",
                            0,
                            60,
                        ),
                    },
                    description="Readiness (/v2/health/ready) and liveness (/v2/health/live) probes of the model server.",
                ),
                "securityContext": _obj(
                    {
                        "runAsUser": _int("uid the model server runs as (not 0).", 1),
                        "runAsGroup": _int("gid the model server runs as (not 0).", 1),
                        "fsGroup": _int(
                            "fsGroup of the model pods (istio / gateway-api / traefik modes only).", 1
                        ),
                    },
                    description="ids of the non-root user; the rest of the restricted context is fixed.",
                ),
                "routing": _obj(
                    {
                        "mode": {
                            "enum": ROUTING_MODES,
                            "description": (
                                "Which object splits traffic: kserve, one InferenceService's "
                                "canaryTrafficPercent (Knative mode); istio, a VirtualService; "
                                "gateway-api, an HTTPRoute; traefik, Traefik's IngressRoute to a "
                                "TraefikService (weights and mirror, no header match; all three over "
                                "stable and candidate InferenceServices in Standard mode). Also the "
                                "controller's --router."
                            ),
                        },
                        "candidateWeight": _int(
                            "Percent of user traffic to the candidate at install (0-100); the controller "
                            "changes it as a rollout steps.",
                            0,
                            100,
                        ),
                        "mirror": _enabled(
                            "istio / gateway-api / traefik: copy stable's traffic to the candidate (shadow)",
                            percent=_int("Percent of requests mirrored, 1-100.", 1, 100),
                        ),
                        "headerMatch": _enabled(
                            "istio / gateway-api: requests with this header value go to the candidate",
                            header=header_name,
                            value=_str(
                                "The exact header value, 1-256 characters.", minLength=1, maxLength=256
                            ),
                        ),
                        "hosts": {
                            "type": "array",
                            "description": (
                                "Host names of the route (VirtualService hosts, HTTPRoute hostnames, "
                                "the IngressRoute's Host matchers). Empty: the service's cluster-local "
                                "name (istio), any (gateway-api, traefik)."
                            ),
                            "items": _str("A host name.", minLength=1),
                        },
                        "istio": _obj(
                            {
                                "gateways": {
                                    "type": "array",
                                    "description": "Gateways of the VirtualService; empty: the mesh only.",
                                    "items": _str("namespace/name of an Istio Gateway."),
                                }
                            },
                            description="istio mode settings.",
                        ),
                        "gatewayApi": _obj(
                            {
                                "parentRefs": {
                                    "type": "array",
                                    "description": "The Gateways the HTTPRoute attaches to (at least one).",
                                    "minItems": 1,
                                    "items": _obj(
                                        {
                                            "name": _str("Gateway name.", pattern=spec.DNS_LABEL),
                                            "namespace": _str(
                                                "Gateway namespace; default: the release's.",
                                                pattern=spec.DNS_LABEL,
                                            ),
                                            "sectionName": _str(
                                                "Listener name on the Gateway; default: all."
                                            ),
                                        },
                                        ["name"],
                                    ),
                                }
                            },
                            description="gateway-api mode settings.",
                        ),
                        "traefik": _obj(
                            {
                                "entryPoints": {
                                    "type": "array",
                                    "description": (
                                        "Traefik entry points the IngressRoute listens on; empty: "
                                        "Traefik's default entry points."
                                    ),
                                    "items": _str("An entry point name.", minLength=1),
                                }
                            },
                            description="traefik mode settings.",
                        ),
                    },
                    ["mode"],
                    "How user traffic reaches stable and candidate.",
                ),
                "feedback": _feedback(),
                "controller": _obj(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "true: deploy the rollout controller (`rollout controller`) and its RBAC.",
                        },
                        "replicas": _int(
                            "Controller replicas, 0-5; more than 1 needs leader election.", 0, 5
                        ),
                        "image": _image("The rollout controller image (runs `rollout controller`)."),
                        "leaderElection": _enabled(
                            "Only the holder of a Lease acts",
                            leaseDuration={
                                "type": "number",
                                "minimum": 2,
                                "maximum": 600,
                                "description": "Seconds a leader holds the Lease without renewing it, 2-600.",
                            },
                        ),
                        "prometheusUrl": _str(
                            "Prometheus the analysis queries, http(s)://host[:port][/path]: the "
                            "controller's --metrics-address, the metricsAddress of the chart's "
                            "ModelRollout, and always on the allow-list.",
                            pattern=URL_PATTERN,
                            maxLength=MAX_URL,
                        ),
                        "allowedMetricsAddresses": {
                            "type": "array",
                            "description": "What else spec.metricsAddress may name (prometheusUrl always "
                            "may); any other is refused (Invalid, MetricsAddressRefused) and never "
                            "fetched; link-local and cloud metadata addresses never, even when listed.",
                            "items": _str(
                                "host (any port), host:port or an http(s)://host:port/path prefix.",
                                pattern=f"({URL_PATTERN})|({HOST_PORT})",
                                maxLength=MAX_URL,
                            ),
                        },
                        "logLevel": {
                            "enum": ["debug", "info", "warning", "error"],
                            "description": "The controller's log level.",
                        },
                        "metricsPort": _int(
                            "Port of the controller's /metrics (the rollout_* series) and of its probes' "
                            "/healthz and /readyz, 1024-65535.",
                            1024,
                            65535,
                        ),
                        "healthPort": _int(
                            "Port of kopf's own /healthz (the leader's only; not probed), 1024-65535.",
                            1024,
                            65535,
                        ),
                        "resources": _resources("the controller container"),
                    },
                    ["enabled"],
                    "The rollout controller: reconciles the ModelRollouts of the release's namespace.",
                ),
                "monitoring": _obj(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "true: render the monitor and, as enabled below, the rules and dashboard.",
                        },
                        "kind": {
                            "enum": MONITOR_KINDS,
                            "description": (
                                "PodMonitor scrapes the model pods (every routing mode); ServiceMonitor "
                                "the predictor Services (istio, gateway-api, traefik only)."
                            ),
                        },
                        "interval": _str("Scrape interval, a duration such as 15s.", pattern=K8S_DURATION),
                        "labels": _labels(
                            "Labels your Prometheus selects monitors and rules by (kube-prometheus-stack: "
                            "release: <name>)."
                        ),
                        "rules": _enabled("PrometheusRule with the alerts and recording rules"),
                        "dashboard": _enabled(
                            "Grafana dashboard ConfigMap picked up by Grafana's sidecar",
                            sidecarLabel=_str("Label the Grafana sidecar watches.", minLength=1),
                            sidecarLabelValue=_str("Value of that label."),
                            folder=_str("Grafana folder annotation value; empty: none."),
                        ),
                    },
                    ["enabled"],
                    "Prometheus Operator monitors, alert rules and the Grafana dashboard.",
                ),
                "networkPolicy": _enabled(
                    "Allow the model pods' ports only from these namespaces and this release",
                    ingressNamespaces={
                        "type": "array",
                        "description": (
                            "Namespaces whose pods may reach the model pods (ingress gateways, Knative's "
                            "activator and autoscaler, Prometheus)."
                        ),
                        "items": _str("A namespace name.", pattern=spec.DNS_LABEL),
                    },
                ),
                "podDisruptionBudget": _enabled(
                    "Keep model pods up during node drains",
                    maxUnavailable=_int("Model pods evicted at a time, 1-100.", 1, 100),
                ),
                "loadtest": _enabled(
                    "A Locust Job against the service (loadtests/)",
                    image=_image("Image with Locust and the locustfile's imports."),
                    locustfile=_str("File in loadtests/ to run.", pattern=r"^[A-Za-z0-9_.-]+\.py$"),
                    host=_str(
                        "Target URL. Default: kserve, the InferenceService's address; istio, the first "
                        "of routing.hosts, else the chart's Service (the VirtualService's host); "
                        "gateway-api, the first of routing.hosts, else the address of the first "
                        "parentRefs Gateway, read from the cluster at install; traefik, the first of "
                        "routing.hosts (else set it: the chart does not know Traefik's address).",
                        pattern=r"^$|^https?://.+",
                    ),
                    users=_int("Concurrent users, 1-10000.", 1, 10000),
                    spawnRate=_int("Users started per second, 1-1000.", 1, 1000),
                    runTime=_str("How long the test runs, e.g. 2m.", pattern=r"^[0-9]+(s|m|h)$"),
                    activeDeadlineSeconds=_int("Hard stop of the Job, seconds, 60-86400.", 60, 86400),
                ),
                "rollout": _obj(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "true: create a ModelRollout of models.stable -> models.candidate.",
                        },
                        "name": _str(
                            "ModelRollout name (default: the service name).", pattern=r"^$|" + spec.DNS_LABEL
                        ),
                        "strategy": rollout_spec["properties"]["strategy"],
                        "analysis": rollout_spec["properties"]["analysis"],
                    },
                    ["enabled"],
                    "A ModelRollout run by the controller; strategy and analysis as in rollout/spec.py.",
                ),
            },
            ["service", "image", "models", "routing"],
        ),
    }
    return schema


def render_values_schema() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"
