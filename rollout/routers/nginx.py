"""The nginx TrafficRouter: routes for one service, applied to a running nginx without a reload.

nginx (started by rollout/local/nginx.py) keeps each service's routes and backend addresses in a
Lua shared dict; its admin server on 127.0.0.1 reads and replaces them (GET/POST
``/routes/<service>``). ``set_routes`` posts the new routes and reads them back, so a caller knows
they are applied; every worker uses them from its next request on, with no dropped connection.
Header/cookie matches win over weights; the weighted split is random per request or, with a sticky
key, a hash of that header/cookie (a user keeps a version for a given weight, and users already on
the candidate stay there as the weight grows). Responses carry ``X-Routed-To: stable|candidate``.
Who calls it: the local runner (via rollout/routers/registry.py or LocalStack.router()).
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from rollout.errors import RouterError
from rollout.routers.base import Backend, Routes, RouteTarget
from rollout.spec import HeaderMatch, StickyKey

TOKEN_ENV = "ROLLOUT_NGINX_ADMIN_TOKEN"  # the admin API's bearer token when not passed in


def routes_to_wire(routes: Routes) -> dict[str, Any]:
    """Routes -> the admin API's JSON (camelCase, like the spec)."""
    doc: dict[str, Any] = {
        "candidateWeight": routes.candidate_weight,
        "mirrorPercent": routes.mirror_percent,
        "match": [m.model_dump(by_alias=True, exclude_none=True) for m in routes.match],
    }
    if routes.sticky is not None:
        doc["sticky"] = routes.sticky.model_dump(by_alias=True, exclude_none=True)
    return doc


def routes_from_wire(doc: dict[str, Any]) -> Routes:
    """The admin API's JSON -> Routes. Lua encodes an empty list as ``{}``: both mean no match."""
    match = doc.get("match") or []
    sticky = doc.get("sticky")
    return Routes(
        candidate_weight=int(doc.get("candidateWeight", 0)),
        mirror_percent=int(doc.get("mirrorPercent", 0)),
        match=tuple(HeaderMatch.model_validate(m) for m in match) if isinstance(match, list) else (),
        sticky=StickyKey.model_validate(sticky) if sticky else None,
    )


class NginxRouter:
    """TrafficRouter for one service behind the local nginx (its admin URL, e.g. http://127.0.0.1:PORT)."""

    def __init__(self, admin_url: str, service: str, timeout: float = 5.0, token: str | None = None) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.service = service
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self._target: RouteTarget | None = None

    def _url(self) -> str:
        return f"{self.admin_url}/routes/{self.service}"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = self._client.post(self._url(), json=body)
        except httpx.HTTPError as exc:
            raise RouterError(
                f"nginx admin API at {self.admin_url} is unreachable ({exc}); is the stack up? (`rollout up`)"
            ) from exc
        if resp.status_code != 200:
            raise RouterError(f"nginx refused routes for {self.service}: {_error_text(resp)}", delay=0)
        return dict(resp.json())

    def _get(self) -> dict[str, Any] | None:
        try:
            resp = self._client.get(self._url())
        except httpx.HTTPError as exc:
            raise RouterError(f"nginx admin API at {self.admin_url} is unreachable ({exc})") from exc
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RouterError(f"nginx admin API answered {resp.status_code}: {_error_text(resp)}")
        return dict(resp.json())

    @staticmethod
    def _backends(target: RouteTarget) -> dict[str, Any]:
        for b in (target.stable, target.candidate):
            if b is not None and not b.address:
                raise RouterError(f"backend {b.name!r} has no address; nginx needs 127.0.0.1:PORT", delay=0)
        return {
            "stable": target.stable.address,
            "candidate": target.candidate.address if target.candidate else None,
        }

    def ensure(self, target: RouteTarget) -> None:
        """Point the service at the target's backends (idempotent).

        Routes are kept only when the candidate is the same as before; a new or removed candidate
        starts from all-stable, so no traffic reaches a new version before ``set_routes``.
        """
        if target.service != self.service:
            raise RouterError(f"router is for service {self.service!r}, not {target.service!r}", delay=0)
        current = self._get()
        backends = self._backends(target)
        body: dict[str, Any] = {"backends": backends, "versions": _versions(target)}
        old_candidate = ((current or {}).get("backends") or {}).get("candidate")
        if current is None or target.candidate is None or old_candidate != backends["candidate"]:
            body["routes"] = routes_to_wire(Routes.all_stable())
        self._post(body)
        self._target = target

    def set_routes(self, routes: Routes) -> None:
        applied = routes_from_wire(self._post({"routes": routes_to_wire(routes)}).get("routes") or {})
        if applied != routes:
            raise RouterError(f"nginx applied {applied} instead of {routes} for {self.service}")

    def get_routes(self) -> Routes:
        doc = self._get()
        if doc is None:
            raise RouterError(f"no routes for service {self.service!r}; call ensure() first", delay=0)
        return routes_from_wire(doc.get("routes") or {})

    def get_backends(self) -> dict[str, str | None]:
        """The addresses nginx sends stable and candidate traffic to now."""
        doc = self._get() or {}
        backends = doc.get("backends") or {}
        return {"stable": backends.get("stable"), "candidate": backends.get("candidate")}

    def finalize(self, target: RouteTarget) -> None:
        """Atomically: all traffic to ``target.stable``, no candidate, no match, no mirror."""
        self._post(
            {
                "backends": self._backends(RouteTarget(target.service, target.stable)),
                "versions": _versions(RouteTarget(target.service, target.stable)),
                "routes": routes_to_wire(Routes.all_stable()),
            }
        )
        self._target = RouteTarget(target.service, target.stable)

    def close(self) -> None:
        self._client.close()


def _versions(target: RouteTarget) -> dict[str, str]:
    """Which model version each backend serves: requests naming a version (``X-Model-Version``,
    sent with feedback labels) are routed back to the backend serving it."""
    out = {"stable": target.stable.version}
    if target.candidate is not None:
        out["candidate"] = target.candidate.version
    return out


def _error_text(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", resp.text))
    except ValueError:
        return resp.text.strip()[:200]


__all__ = ["Backend", "NginxRouter", "routes_from_wire", "routes_to_wire"]
