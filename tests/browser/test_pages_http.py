"""The dashboard's routes over HTTP, without a browser (the app in-process): pages and static files need what the API
needs, answer with their security headers, and never serve a file outside the static folder; the vendored uPlot is
the pinned one."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from live import TOKEN

from deepgrad_server import sessions
from deepgrad_server.app import create_app
from deepgrad_server.settings import Settings

REPO = Path(__file__).resolve().parents[2]
JOB, STUDY = "0123456789ab", "ba9876543210"
PAGES = ["/", f"/ui/jobs/{JOB}", "/ui/compare", f"/ui/compare?ids={JOB},{STUDY}", f"/ui/studies/{STUDY}"]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "app", token=TOKEN, worker=False)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", PAGES)
def test_page_is_html_with_its_security_headers(app: TestClient, path: str) -> None:
    r = app.get(path, headers=bearer())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"] == "no-store"
    assert "<script>" not in r.text  # no inline script: the CSP would block it


@pytest.mark.parametrize("path", [*PAGES, "/static/app.js", "/static/vendor/uplot/uPlot.iife.min.js"])
def test_page_or_asset_without_a_session_is_refused(app: TestClient, path: str) -> None:
    assert app.get(path).status_code == 401  # a script's request: a plain 401
    navigation = app.get(path, headers={"Sec-Fetch-Mode": "navigate", "Accept": "text/html"})
    assert navigation.status_code == 303 and navigation.headers["location"].startswith("/login")


def test_page_ids_are_checked(app: TestClient) -> None:
    for path in ("/ui/jobs/nope", "/ui/studies/0123", "/ui/compare?ids=abc", "/ui/compare?ids=" + ",".join([JOB] * 13)):
        assert app.get(path, headers=bearer()).status_code == 422, path


def test_static_files_stay_in_their_folder(app: TestClient) -> None:
    r = app.get("/static/app.js", headers=bearer())
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["etag"]
    assert app.get("/static/app.js", headers={**bearer(), "If-None-Match": r.headers["etag"]}).status_code == 304
    for path in ("/static/../routes/pages.py", "/static/%2e%2e/routes/pages.py", "/static/..%2fapp.py",
                 "/static/nothing.js", "/static/vendor"):
        assert app.get(path, headers=bearer()).status_code == 404, path


def test_pages_are_not_in_the_api_schema(app: TestClient) -> None:
    paths = app.get("/openapi.json", headers=bearer()).json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/ui", "/static"))]


def test_vendored_uplot_is_the_pinned_release() -> None:
    spec = importlib.util.spec_from_file_location("vendor_uplot", REPO / "scripts" / "vendor_uplot.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    assert vendor.check() == []
    assert "MIT License" in (vendor.DEST / "LICENSE").read_text()


def test_login_links_lead_to_dashboard_pages(app: TestClient) -> None:
    for page in (sessions.HOME_PAGE, sessions.JOB_PAGE.format(job_id=JOB)):
        assert app.get(page, headers=bearer()).status_code == 200, page
