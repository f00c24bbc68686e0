"""Prometheus scrape configs from PodMonitor and ServiceMonitor objects, as prometheus-operator
v0.85.0 generates them (``generatePodMonitorConfig`` / ``generateServiceMonitorConfig`` in
pkg/prometheus/promcfg.go, read rule for rule, not copied), for one Prometheus that selects every
monitor of every namespace (``podMonitorSelector: {}``, ``serviceMonitorSelector: {}``, their
namespace selectors ``{}``), one shard, ``serviceDiscoveryRole`` Endpoints (the default). Pure: the
objects in (as the API server returns them), the configs out. Used by tests/k8s/pod_prometheus.py.

What a monitor means there:

- job_name ``podMonitor/<ns>/<name>/<i>`` (``serviceMonitor/...``) per endpoint ``i``;
  ``namespaceSelector``: ``any`` = every namespace, ``matchNames``, else the monitor's own
  namespace (in the SD config);
- ``selector`` as ``keep``/``drop`` rules on ``__meta_kubernetes_pod_label(present)_*`` (a
  ServiceMonitor: ``_service_label``): matchLabels, matchExpressions In / NotIn / Exists /
  DoesNotExist; with ``selectorMechanism: RoleSelector`` a label selector in the SD config instead;
- ``filterRunning`` (default true) drops pods in phase Failed or Succeeded - the operator's rule: a
  Pending pod that already has an IP is still a target;
- a PodMonitor's ``port`` is a container port NAME (``portNumber`` a number, the deprecated
  ``targetPort`` either); a ServiceMonitor's ``port`` a Service port name, its ``targetPort`` the
  pod's container port name or number;
- target labels ``namespace``, ``container``, ``pod`` (a ServiceMonitor also ``service``, and
  ``node``/``pod`` from the endpoint's target), ``podTargetLabels`` (and ``targetLabels`` from the
  Service), ``job`` = ``<ns>/<name>`` for a PodMonitor, the Service's name for a ServiceMonitor,
  either overridden by the ``jobLabel`` label when the object has it, ``endpoint`` = the port name
  (a targetPort as written); then the endpoint's own ``relabelings`` and ``metricRelabelings``;
- ``path`` (``metrics_path``; Prometheus' default /metrics), ``interval``, ``scrapeTimeout``,
  ``scheme``, ``params``, ``honorLabels``, ``honorTimestamps``.

Not generated (unused by this project): authentication and TLS towards targets, scrape classes,
limits, attachMetadata, ``followRedirects``/``enableHttp2``, the sharding ``hashmod`` rule (a no-op
with one shard).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["GLOBAL", "podmonitor_config", "scrape_configs", "servicemonitor_config"]

GLOBAL = {"scrape_interval": "30s", "evaluation_interval": "30s"}  # the operator's defaults
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label"}  # the rest: lower-case
_META = "__meta_kubernetes_"


def _label(name: str) -> str:
    return _INVALID_LABEL_CHARS.sub("_", name)


def _rule(action: str, source: list[str], regex: str) -> dict[str, Any]:
    return {"action": action, "source_labels": source, "regex": regex}


def _copy_label(source: str, target: str) -> dict[str, Any]:
    """Set ``target`` from the meta label ``source`` when it is not empty."""
    return {"source_labels": [source], "target_label": target, "regex": "(.+)", "replacement": "${1}"}


def _selector_relabelings(selector: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """A label selector as keep/drop rules on the labels of the ``kind`` (pod, service) object."""
    rules = []
    for key in sorted(selector.get("matchLabels") or {}):
        pair = [f"{_META}{kind}_label_{_label(key)}", f"{_META}{kind}_labelpresent_{_label(key)}"]
        rules.append(_rule("keep", pair, f"({selector['matchLabels'][key]});true"))
    for exp in selector.get("matchExpressions") or []:
        key, op, values = _label(exp["key"]), exp["operator"], "|".join(exp.get("values") or [])
        pair = [f"{_META}{kind}_label_{key}", f"{_META}{kind}_labelpresent_{key}"]
        present = [f"{_META}{kind}_labelpresent_{key}"]
        rules.append({
            "In": _rule("keep", pair, f"({values});true"),
            "NotIn": _rule("drop", pair, f"({values});true"),
            "Exists": _rule("keep", present, "true"),
            "DoesNotExist": _rule("drop", present, "true"),
        }[op])  # fmt: skip
    return rules


def _selector_string(selector: dict[str, Any]) -> str:
    """A label selector in the API server's string form (``selectorMechanism: RoleSelector``)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for exp in selector.get("matchExpressions") or []:
        key, op, values = exp["key"], exp["operator"], ",".join(sorted(exp.get("values") or []))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])  # fmt: skip
    return ",".join(parts)


def _relabel_configs(rules: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A monitor's ``relabelings`` (camelCase) in Prometheus' spelling."""
    out = []
    for rule in rules:
        converted = {_RELABEL_KEYS.get(k, k.lower()): v for k, v in rule.items()}
        if "action" in converted:
            converted["action"] = converted["action"].lower()
        out.append(converted)
    return out


def _base(
    prefix: str,
    monitor: dict[str, Any],
    endpoint: dict[str, Any],
    index: int,
    roles: list[str],
    sd: dict[str, Any],
) -> dict[str, Any]:
    """job_name, the SD config (roles[0] discovered; all of ``roles`` get a RoleSelector) and the
    endpoint's HTTP settings, common to both kinds of monitor."""
    meta, spec = monitor["metadata"], monitor.get("spec") or {}
    nsel = spec.get("namespaceSelector") or {}
    discovery: dict[str, Any] = {"role": roles[0]}
    if not nsel.get("any"):
        discovery["namespaces"] = {"names": list(nsel.get("matchNames") or [meta["namespace"]])}
    discovery.update(sd)
    if spec.get("selectorMechanism") == "RoleSelector":
        label = _selector_string(spec.get("selector") or {})
        discovery["selectors"] = [{"role": role, "label": label} for role in roles]
    cfg: dict[str, Any] = {"job_name": f"{prefix}/{meta['namespace']}/{meta['name']}/{index}",
                           "honor_labels": bool(endpoint.get("honorLabels", False))}  # fmt: skip
    if "honorTimestamps" in endpoint:
        cfg["honor_timestamps"] = bool(endpoint["honorTimestamps"])
    cfg["kubernetes_sd_configs"] = [discovery]
    for key, target in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"),
                        ("path", "metrics_path"), ("params", "params"), ("scheme", "scheme")):  # fmt: skip
        if endpoint.get(key):
            cfg[target] = endpoint[key]
    return cfg


def _finish(cfg: dict[str, Any], rules: list[dict[str, Any]], endpoint: dict[str, Any]) -> dict[str, Any]:
    cfg["relabel_configs"] = rules + _relabel_configs(endpoint.get("relabelings") or [])
    if endpoint.get("metricRelabelings"):
        cfg["metric_relabel_configs"] = _relabel_configs(endpoint["metricRelabelings"])
    return cfg


def _role_selected(spec: dict[str, Any]) -> bool:
    return spec.get("selectorMechanism") == "RoleSelector"


def _phase_filter(endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    running = endpoint.get("filterRunning", True)
    return [_rule("drop", [f"{_META}pod_phase"], "(Failed|Succeeded)")] if running else []


def podmonitor_config(
    monitor: dict[str, Any], endpoint: dict[str, Any], index: int, sd: dict[str, Any]
) -> dict[str, Any]:
    """The scrape config of a PodMonitor's ``podMetricsEndpoints[index]``; ``sd`` holds the API
    server address and credentials of its ``kubernetes_sd_configs`` entry."""
    meta, spec = monitor["metadata"], monitor.get("spec") or {}
    cfg = _base("podMonitor", monitor, endpoint, index, ["pod"], sd)
    rules: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    rules += _phase_filter(endpoint)
    if not _role_selected(spec):
        rules += _selector_relabelings(spec.get("selector") or {}, "pod")
    port, number, target_port = endpoint.get("port"), endpoint.get("portNumber"), endpoint.get("targetPort")
    if port:
        rules.append(_rule("keep", [f"{_META}pod_container_port_name"], port))
    elif number:
        rules.append(_rule("keep", [f"{_META}pod_container_port_number"], str(number)))
    elif target_port:
        which = "name" if isinstance(target_port, str) else "number"
        rules.append(_rule("keep", [f"{_META}pod_container_port_{which}"], str(target_port)))
    for source, target in (
        ("namespace", "namespace"),
        ("pod_container_name", "container"),
        ("pod_name", "pod"),
    ):
        rules.append({"source_labels": [f"{_META}{source}"], "target_label": target})
    rules += [
        _copy_label(f"{_META}pod_label_{_label(k)}", _label(k)) for k in spec.get("podTargetLabels") or []
    ]
    rules.append({"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"})
    if spec.get("jobLabel"):
        rules.append(_copy_label(f"{_META}pod_label_{_label(spec['jobLabel'])}", "job"))
    if port or target_port:  # as the operator: an int targetPort is named by its number, portNumber not
        rules.append({"target_label": "endpoint", "replacement": str(port or target_port)})
    return _finish(cfg, rules, endpoint)


def servicemonitor_config(
    monitor: dict[str, Any], endpoint: dict[str, Any], index: int, sd: dict[str, Any]
) -> dict[str, Any]:
    """The scrape config of a ServiceMonitor's ``endpoints[index]`` (SD role ``endpoints``)."""
    spec = monitor.get("spec") or {}
    cfg = _base("serviceMonitor", monitor, endpoint, index, ["endpoints", "service"], sd)
    rules: list[dict[str, Any]] = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
    if not _role_selected(spec):
        rules += _selector_relabelings(spec.get("selector") or {}, "service")
    port, target_port = endpoint.get("port"), endpoint.get("targetPort")
    if port:
        rules.append(_rule("keep", [f"{_META}endpoint_port_name"], port))
    elif target_port:
        which = "name" if isinstance(target_port, str) else "number"
        rules.append(_rule("keep", [f"{_META}pod_container_port_{which}"], str(target_port)))
    target = [f"{_META}endpoint_address_target_kind", f"{_META}endpoint_address_target_name"]
    for kind, label in (("Node", "node"), ("Pod", "pod")):
        rules.append({"source_labels": target, "separator": ";", "regex": f"{kind};(.*)",
                      "replacement": "${1}", "target_label": label})  # fmt: skip
    for source, label in (("namespace", "namespace"), ("service_name", "service"), ("pod_name", "pod"),
                          ("pod_container_name", "container")):  # fmt: skip
        rules.append({"source_labels": [f"{_META}{source}"], "target_label": label})
    rules += _phase_filter(endpoint)
    rules += [
        _copy_label(f"{_META}service_label_{_label(k)}", _label(k)) for k in spec.get("targetLabels") or []
    ]
    rules += [
        _copy_label(f"{_META}pod_label_{_label(k)}", _label(k)) for k in spec.get("podTargetLabels") or []
    ]
    rules.append({"source_labels": [f"{_META}service_name"], "target_label": "job", "replacement": "${1}"})
    if spec.get("jobLabel"):
        rules.append(_copy_label(f"{_META}service_label_{_label(spec['jobLabel'])}", "job"))
    if port or target_port:
        rules.append({"target_label": "endpoint", "replacement": str(port or target_port)})
    return _finish(cfg, rules, endpoint)


def _ordered(monitors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(monitors, key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))


def scrape_configs(
    podmonitors: Iterable[dict[str, Any]], sd: dict[str, Any], servicemonitors: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Every monitor's scrape configs, in the operator's order: ServiceMonitors, then PodMonitors,
    each by namespace and name."""
    configs = [
        servicemonitor_config(m, ep, i, sd)
        for m in _ordered(servicemonitors)
        for i, ep in enumerate((m.get("spec") or {}).get("endpoints") or [])
    ]
    return configs + [
        podmonitor_config(m, ep, i, sd)
        for m in _ordered(podmonitors)
        for i, ep in enumerate((m.get("spec") or {}).get("podMetricsEndpoints") or [])
    ]
