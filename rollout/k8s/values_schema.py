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

ROUTING_MODES = ["kserve", "istio", "gateway-api"]
MONITOR_KINDS = ["PodMonitor", "ServiceMonitor"]
K8S_QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
K8S_DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
IMAGE_REF = r"^[a-z0-9]+([._/:-][a-z0-9]+)*$"
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
            "repository": _str("image repository", minLength=1, pattern=IMAGE_REF),
            "tag": _str("image tag", minLength=1),
            "digest": _str("optional sha256 digest; wins over tag", pattern=r"^(sha256:[a-f0-9]{64})?$"),
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        ["repository", "tag"],
        description,
    )


def _resources() -> dict[str, Any]:
    quantity = {"type": ["string", "number"], "pattern": K8S_QUANTITY}
    amounts = _obj({"cpu": quantity, "memory": quantity, "ephemeral-storage": quantity})
    return _obj({"requests": amounts, "limits": amounts}, description="container resources")


def _enabled(description: str, **props: Any) -> dict[str, Any]:
    return _obj({"enabled": {"type": "boolean"}, **props}, ["enabled"], description)


def values_schema() -> dict[str, Any]:
    model_ref = spec.ModelRef.model_json_schema(by_alias=True)["properties"]["model"]
    tag = {"type": "string", "pattern": model_ref["pattern"], "description": model_ref["description"]}
    digest = _str(
        "sha256:<64 hex> of the model's artifact (ModelRollout stable.digest / candidate.digest); "
        "empty: not pinned",
        pattern=f"({spec.MODEL_DIGEST})|^$",
    )
    rollout_spec = _spec_part(spec.RolloutSpec)
    defs = rollout_spec.pop("$defs")
    pct = _int("percent", 0, 100)
    header_name = _str("HTTP header name", pattern=spec.HEADER_NAME)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bento-rollout chart values",
        "$defs": defs,
        **_obj(
            {
                "nameOverride": _str("replaces the chart name in object names"),
                "fullnameOverride": _str("replaces release-chart in object names"),
                "commonLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "service": _obj(
                    {
                        "name": _str(
                            "the served model's name: InferenceService prefix, route and metric label",
                            pattern=spec.DNS_LABEL,
                            maxLength=45,
                        ),
                        "port": _int("the Bento's HTTP port (OIP v2 and /metrics)", 1024, 65535),
                    },
                    ["name", "port"],
                ),
                "image": _image("the Bento image (bentoml containerize of the root bentofile.yaml)"),
                "imagePullSecrets": {"type": "array", "items": _obj({"name": _str("secret name")}, ["name"])},
                "models": _obj(
                    {
                        "stable": tag,
                        "candidate": {**tag, "pattern": f"({tag['pattern']})|^$"},
                        "stableDigest": digest,
                        "candidateDigest": digest,
                    },
                    ["stable"],
                    "BentoML model tags; an empty candidate deploys stable only. A digest pins the "
                    "model's artifact (`rollout models` shows it): the server refuses any other",
                ),
                "replicas": _obj(
                    {"min": _int("minimum replicas", 0, 100), "max": _int("maximum replicas", 1, 100)}
                ),
                "resources": _resources(),
                "probes": _obj(
                    {
                        "initialDelaySeconds": _int("seconds", 0, 600),
                        "periodSeconds": _int("seconds", 1, 300),
                        "timeoutSeconds": _int("seconds", 1, 60),
                        "failureThreshold": _int("count", 1, 30),
                    }
                ),
                "securityContext": _obj(
                    {"runAsUser": _int("uid", 1), "runAsGroup": _int("gid", 1), "fsGroup": _int("gid", 1)},
                    description="ids of the non-root user; the rest of the restricted context is fixed",
                ),
                "routing": _obj(
                    {
                        "mode": {"enum": ROUTING_MODES, "description": "which object splits traffic"},
                        "candidateWeight": {**pct, "description": "percent of user traffic to the candidate"},
                        "mirror": _enabled(
                            "istio / gateway-api: copy stable's traffic to the candidate (shadow)",
                            percent=_int("percent of requests mirrored", 1, 100),
                        ),
                        "headerMatch": _enabled(
                            "istio / gateway-api: requests with this header value go to the candidate",
                            header=header_name,
                            value=_str("exact header value", minLength=1, maxLength=256),
                        ),
                        "hosts": {"type": "array", "items": _str("host name", minLength=1)},
                        "istio": _obj(
                            {"gateways": {"type": "array", "items": _str("namespace/name of a Gateway")}}
                        ),
                        "gatewayApi": _obj(
                            {
                                "parentRefs": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _obj(
                                        {
                                            "name": _str("Gateway name", pattern=spec.DNS_LABEL),
                                            "namespace": _str("Gateway namespace", pattern=spec.DNS_LABEL),
                                            "sectionName": _str("listener name"),
                                        },
                                        ["name"],
                                    ),
                                }
                            }
                        ),
                    },
                    ["mode"],
                ),
                "controller": _obj(
                    {
                        "enabled": {"type": "boolean"},
                        "replicas": _int("controller replicas; more than 1 needs leader election", 0, 5),
                        "image": _image("the rollout controller image (runs `rollout controller`)"),
                        "leaderElection": _enabled(
                            "only the holder of a Lease acts",
                            leaseDuration={
                                "type": "number",
                                "minimum": 2,
                                "maximum": 600,
                                "description": "seconds",
                            },
                        ),
                        "prometheusUrl": _str(
                            "Prometheus the analysis queries: http(s)://host[:port][/path]",
                            pattern=URL_PATTERN,
                            maxLength=MAX_URL,
                        ),
                        "allowedMetricsAddresses": {
                            "type": "array",
                            "description": "what else spec.metricsAddress may name (prometheusUrl always "
                            "may); link-local and cloud metadata addresses never",
                            "items": _str(
                                "host, host:port or an http(s)://host:port/path prefix",
                                pattern=f"({URL_PATTERN})|({HOST_PORT})",
                                maxLength=MAX_URL,
                            ),
                        },
                        "logLevel": {"enum": ["debug", "info", "warning", "error"]},
                        "metricsPort": _int(
                            "port of the controller's /metrics and of its probes' /healthz and /readyz",
                            1024,
                            65535,
                        ),
                        "healthPort": _int(
                            "port of kopf's own /healthz (the leader's only; not probed)", 1024, 65535
                        ),
                        "resources": _resources(),
                    },
                    ["enabled"],
                ),
                "monitoring": _obj(
                    {
                        "enabled": {"type": "boolean"},
                        "kind": {"enum": MONITOR_KINDS},
                        "interval": _str("scrape interval", pattern=K8S_DURATION),
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "rules": _enabled("PrometheusRule with the alerts and recording rules"),
                        "dashboard": _enabled(
                            "Grafana dashboard ConfigMap picked up by Grafana's sidecar",
                            sidecarLabel=_str("label the sidecar watches", minLength=1),
                            sidecarLabelValue=_str("its value"),
                            folder=_str("Grafana folder annotation value"),
                        ),
                    },
                    ["enabled"],
                ),
                "networkPolicy": _enabled(
                    "allow the model pods' port only from these namespaces and this release",
                    ingressNamespaces={"type": "array", "items": _str("namespace", pattern=spec.DNS_LABEL)},
                ),
                "podDisruptionBudget": _enabled(
                    "keep model pods up during node drains",
                    maxUnavailable=_int("pods evicted at a time", 1, 100),
                ),
                "loadtest": _enabled(
                    "a Locust Job against the service (loadtests/)",
                    image=_image("Locust image"),
                    locustfile=_str("file in loadtests/", pattern=r"^[A-Za-z0-9_.-]+\.py$"),
                    host=_str("target URL; default: the service's address", pattern=r"^$|^https?://.+"),
                    users=_int("concurrent users", 1, 10000),
                    spawnRate=_int("users started per second", 1, 1000),
                    runTime=_str("how long", pattern=r"^[0-9]+(s|m|h)$"),
                    activeDeadlineSeconds=_int("hard stop", 60, 86400),
                ),
                "rollout": _obj(
                    {
                        "enabled": {
                            "type": "boolean",
                            "description": "create a ModelRollout of stable -> candidate",
                        },
                        "name": _str(
                            "ModelRollout name (default: the service name)", pattern=r"^$|" + spec.DNS_LABEL
                        ),
                        "strategy": rollout_spec["properties"]["strategy"],
                        "analysis": rollout_spec["properties"]["analysis"],
                    },
                    ["enabled"],
                ),
            },
            ["service", "image", "models", "routing"],
        ),
    }
    return schema


def render_values_schema() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"
