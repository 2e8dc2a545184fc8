"""No way in without the token (Ray's Jobs API, CVE-2023-48022 "ShadowRay": a job API that ran anyone's
commands because it had no authentication and listened on every interface; thousands of clusters were taken).

Every route of the app, enumerated from ``app.routes`` (a route added tomorrow is checked the day it lands),
answers 401 without a token and with a wrong one, except ``/health``; nothing changes in the store meanwhile;
the token is compared in constant time; the server refuses to listen publicly with auth off; the compose file
publishes on loopback only (``tests/test_deploy.py`` checks the rest of the deployment).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from live import TINY, TOKEN
from pydantic import ValidationError

from deepgrad_server import deps
from deepgrad_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# The routes that need no token, and what each answers without one: /health; the login page and POST /login, which
# trade a one-time ticket for a browser session and give nothing else (tests/server/test_server_sessions.py).
PUBLIC = {("GET", "/health"): 200, ("GET", "/login"): 200, ("POST", "/login"): 422}
WRONG = {
    "none": {},
    "wrong token": {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    "token minus one char": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "token plus one char": {"Authorization": f"Bearer {TOKEN}x"},
    "token as prefix": {"Authorization": f"Bearer {TOKEN[:8]}"},
    "empty bearer": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "no scheme": {"Authorization": TOKEN},
    "token in a cookie": {"Cookie": f"token={TOKEN}"},
    "token in another header": {"X-Api-Key": TOKEN, "X-Token": TOKEN},
}


def _url(route: Any, ids: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The route's URL with a real job id and a valid kind, plus its required query (``ids``)."""
    url = route.path.replace("{job_id}", ids["succeeded"]).replace("{kind}", "metrics")
    return url, ({"ids": ids["succeeded"]} if "ids" in route.query_params else {})


def test_every_route_but_health_depends_on_the_token_check(app_client: Any, app_routes: Any) -> None:
    """Structural: every route's dependencies include ``require_token``, but /health's (a route added without
    it fails here before anyone probes it)."""
    routes = app_routes(app_client.app)
    assert len(routes) >= 15
    missing = [(r.method, r.path) for r in routes if "require_token" not in r.dependencies]
    assert sorted(missing) == sorted(PUBLIC)


@pytest.mark.parametrize("how", list(WRONG))
def test_every_route_is_401_without_the_right_token(app_client: Any, app_routes: Any, seed: Any, count_jobs: Any,
                                                    how: str) -> None:
    """Ray Jobs API (CVE-2023-48022, ShadowRay): unauthenticated job submission and control. Every route,
    every method, answers 401 (with ``WWW-Authenticate: Bearer`` and without echoing any token) to a missing or
    wrong token, even when the request is otherwise bad; /health answers 200; the store is unchanged."""
    app_client.headers.pop("Authorization")
    ids = seed(app_client.app.state.db)
    before = count_jobs(app_client.app.state.db)
    answers = {}
    for route in app_routes(app_client.app):
        url, query = _url(route, ids)
        body = {"json": TINY} if route.method == "POST" else {}
        for variant, params in (("valid", query), ("bad params", {**query, "limit": "-5", "kind": "../x"})):
            r = app_client.request(route.method, url, params=params, headers=WRONG[how], **body)
            answers[(route.method, route.path, variant)] = r.status_code
            if (route.method, route.path) in PUBLIC:
                continue
            assert r.headers.get("www-authenticate") == "Bearer", (route, r.headers)
            assert TOKEN not in r.text and TOKEN[:8] not in r.text
    expected = {key: PUBLIC.get(key[:2], 401) for key in answers}
    assert answers == expected
    assert count_jobs(app_client.app.state.db) == before
    assert app_client.get(f"/jobs/{ids['succeeded']}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_every_route_accepts_the_right_token(app_client: Any, app_routes: Any, seed: Any) -> None:
    """The other half: with the token no route answers 401 (the 401s above are the token check, not a
    broken route)."""
    ids = seed(app_client.app.state.db)
    for route in app_routes(app_client.app):
        url, query = _url(route, ids)
        if route.method == "DELETE":
            url = url.replace(ids["succeeded"], ids["failed"])
        if route.path.endswith("/events"):  # an event stream: its status is the answer (the job list's never ends)
            with app_client.stream(route.method, url, params=query) as r:
                assert r.status_code != 401, route
            continue
        r = app_client.request(route.method, url, params=query, **({"json": TINY} if route.method == "POST" else {}))
        assert r.status_code != 401, (route, r.text)


def test_token_is_compared_in_constant_time(app_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing attacks on the token: every check goes through ``secrets.compare_digest`` (a spy sees the right
    and the wrong token compared against the server's), and no ``==``/``!=`` on a token exists in the server."""
    calls: list[tuple[bytes, bytes]] = []
    real = deps.secrets.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.secrets, "compare_digest", spy)
    assert app_client.get("/jobs").status_code == 200
    assert app_client.get("/jobs", headers={"Authorization": "Bearer not-the-token-at-all"}).status_code == 401
    assert calls == [(TOKEN.encode(), TOKEN.encode()), (b"not-the-token-at-all", TOKEN.encode())]

    secretish = {"token", "expected", "credentials", "secret", "password"}
    offenders = []
    for path in (REPO / "server" / "deepgrad_server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                names = {n.id if isinstance(n, ast.Name) else n.attr for n in (node.left, *node.comparators)
                         if isinstance(n, (ast.Name, ast.Attribute))}
                if names & secretish:
                    offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
    assert "compare_digest" in inspect.getsource(deps.require_token)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "0", "192.168.1.10", "10.0.0.1", "example.com",
                                  "localhost.example.com", "127.0.0.1.nip.io", "::ffff:0.0.0.0"])
def test_public_bind_without_auth_is_refused(host: str) -> None:
    """ShadowRay's second half was listening on every interface. Any address that is not loopback, spelled any
    way, is refused with auth off (0.0.0.0 itself: tests/server/test_server_input.py)."""
    with pytest.raises(ValidationError, match="refusing to listen"):
        Settings(host=host, auth=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_without_auth_is_allowed(host: str) -> None:
    """Loopback only: the one place auth may be off (a single-user workstation)."""
    assert Settings(host=host, auth=False).auth is False


def test_server_cli_exits_2_on_public_bind_without_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI, as a user starts it: ``deepgrad-server --host 0.0.0.0`` with DEEPGRAD_AUTH=false exits 2 with the
    reason, before importing uvicorn or binding anything."""
    from deepgrad_server import main

    monkeypatch.setenv("DEEPGRAD_AUTH", "false")
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("uvicorn.run was called"))
    assert main.main(["--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2


def test_compose_publishes_on_loopback_only() -> None:
    """The shipped compose file binds every published port to 127.0.0.1 (a short check; tests/test_deploy.py
    checks it through ``docker compose config`` with the rest of the deployment)."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    default = [s for s in compose["services"].values() if not s.get("profiles")]
    ports = [str(p) for service in default for p in service.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports), ports
    assert all(s.get("network_mode") != "host" for s in default)
    # The opt-in cluster profile spans hosts: it listens on the private address the operator names
    # (DEEPGRAD_CLUSTER_IP / DEEPGRAD_NODE_IP), 127.0.0.1 when unset, and never on every interface.
    cluster = [s for s in compose["services"].values() if s.get("profiles")]
    private = ("${DEEPGRAD_CLUSTER_IP:-127.0.0.1}:", "${DEEPGRAD_NODE_IP:-127.0.0.1}:")
    assert all(str(p).startswith(private) for s in cluster for p in s.get("ports", []))
    for service in cluster:
        if service.get("network_mode") == "host":
            text = " ".join(service.get("command", [])) + str(service.get("environment", {}))
            assert "0.0.0.0" not in text and ("--node-ip-address=${DEEPGRAD_" in text
                                              or service["environment"].get("DEEPGRAD_HOST") == "127.0.0.1"), service
