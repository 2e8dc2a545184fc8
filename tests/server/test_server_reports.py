"""Reports (issue 16): a job, a comparison and a study each as one HTML file that refers to nothing outside
itself (so it opens offline), holds the figures and the tables, and prints well. Jobs are seeded straight into
the store, finished with every kind of data, without training."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from live import TOKEN
from PIL import Image

# The seeded-job helpers of the reliability tests (fixtures there: only tests under tests/reliability get them).
from reliability.conftest import seed_job, seed_study

from deepgrad_server import store
from deepgrad_server.app import create_app
from deepgrad_server.routes import reports
from deepgrad_server.settings import Settings

URL_ATTRIBUTES = {"src", "href", "action", "formaction", "srcset", "poster", "data", "background", "xlink:href",
                  "manifest", "cite", "longdesc", "ping"}


@dataclass
class Parsed:
    """What a report's HTML holds, tag by tag."""

    tags: list[tuple[str, dict[str, str | None]]] = field(default_factory=list)
    text: str = ""
    styles: str = ""

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.out = Parsed()
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.out.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.out.styles += data
        else:
            self.out.text += data


def parse(html: str) -> Parsed:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.out


def assert_self_contained(html: str) -> Parsed:
    """No reference outside the file: no URL in any attribute but data: and in-page anchors, no script, no
    stylesheet or frame, no url() in styles, every image an inline PNG; the file's own CSP says the same."""
    page = parse(html)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video",
                           "source"), tag
        for name, value in attrs.items():
            if name in URL_ATTRIBUTES or (name == "content" and attrs.get("http-equiv", "").lower() == "refresh"):
                assert value is not None and (value.startswith("data:") or value.startswith("#")), (tag, name, value)
            assert not (name.startswith("on")), (tag, name)  # no inline script either
            if name == "style":
                assert "url(" not in (value or "")
    assert "url(" not in page.styles and "@import" not in page.styles
    bare = re.sub(r'"data:image/png;base64,[A-Za-z0-9+/=]+"', '""', html)  # base64 may hold "//"
    assert "http:" not in bare and "https:" not in bare and "//" not in bare
    csp = [a for a in page.all("meta") if (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert csp and csp[0]["content"] == reports.CSP
    for img in page.all("img"):
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as png:
            assert png.format == "PNG" and png.width > 200 and png.height > 100
    assert "@media print" in page.styles and "break-before: page" in page.styles and "max-width: 100%" in page.styles
    return page


def drawn(page: Parsed) -> set[str]:
    """Kinds of the figures the report drew (``<figure id="figure-<kind>">`` holding an ``<img>``)."""
    kinds, current = set(), None
    for tag, attrs in page.tags:
        if tag == "figure":
            current = (attrs.get("id") or "").removeprefix("figure-")
        elif tag == "img" and current:
            kinds.add(current)
    return kinds


@dataclass
class Seeded:
    client: TestClient
    done: str  # succeeded, with every kind of data
    diverged: str  # diverged, kernel size 5
    queued: str
    study: str  # over done and diverged
    answers: dict[str, Any] = field(default_factory=dict)

    def report(self, url: str) -> Any:
        """Each report fetched once for the module: they take seconds."""
        if url not in self.answers:
            self.answers[url] = self.client.get(url)
        return self.answers[url]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("reports"), token=TOKEN, worker=False)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        db = client.app.state.db
        done, diverged = seed_job(db, state="succeeded", name="plain"), seed_job(db, state="diverged", nan=True)
        with db.writing() as s:
            job = store.get_job(s, job_id=diverged)
            spec = {**job.spec, "model": {**job.spec["model"], "kernel_size": 5}}
            store.update_job(s, job_id=diverged, spec=spec, name="kernel-5")
        queued = seed_job(db, state="queued", epochs=0, name="waiting")
        yield Seeded(client, done, diverged, queued, seed_study(db, [done, diverged]))


def test_job_report_is_one_self_contained_file(seeded: Seeded) -> None:
    r = seeded.report(f"/jobs/{seeded.done}/report.html")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == reports.CSP
    assert r.headers["content-disposition"] == f'inline; filename="deepgrad-job-{seeded.done}.html"'
    page = assert_self_contained(r.text)
    assert drawn(page) == {kind for kind, _, _ in reports.JOB_FIGURES}
    assert f"DeepGrad job plain ({seeded.done})" in page.text
    for section in ("Results", "Gradient verdict", "Spec", "Metrics per epoch", "Per class", "Confusion matrix",
                    "Cost by layer", "Figures"):
        assert section in page.text, section
    assert "test accuracy" in page.text and "35.00%" in page.text  # the seeded final test_acc, 0.35
    assert "model.width=0.125" in page.text  # what the spec sets beyond its defaults
    assert "not vanishing" in page.text or "vanishing" in page.text
    epochs = [t for t, a in page.tags if t == "tr"]
    assert len(epochs) > 2 + 10 + 10  # epochs, classes, confusion rows at least
    assert len(page.all("section")) >= 5


def test_job_report_reuses_the_figures_cache(seeded: Seeded) -> None:
    """The report draws through the plot endpoints: the figures it drew are the ones they serve from memory."""
    seeded.report(f"/jobs/{seeded.done}/report.html")
    key = ("job", seeded.done, "norms", "weight", None, None, 0, 2000, False)
    cached = seeded.client.app.state.plot_cache.get(key)
    assert cached is not None
    assert seeded.client.get(f"/jobs/{seeded.done}/plots/norms.png").content == cached


def test_report_of_a_queued_job_says_why_nothing_is_drawn(seeded: Seeded) -> None:
    r = seeded.report(f"/jobs/{seeded.queued}/report.html")
    page = assert_self_contained(r.text)
    assert not page.all("img") and "Not drawn" in page.text and "queued" in page.text
    assert "No epoch has ended yet" in page.text


def test_compare_report_shows_how_the_specs_differ(seeded: Seeded) -> None:
    r = seeded.report(f"/compare/report.html?ids={seeded.done},{seeded.diverged}")
    assert r.status_code == 200, r.text
    page = assert_self_contained(r.text)
    assert drawn(page) >= {"metrics", "depth", "ratio", "cost"}
    assert "How the specs differ" in page.text and "model.kernel_size" in page.text
    assert "plain" in page.text and "kernel-5" in page.text and "Test accuracy per epoch" in page.text
    differences = r.text.split('id="differences"')[1].split("</section>")[0]
    assert "model.kernel_size" in differences and "model.width" not in differences  # only what differs


def test_study_report_has_its_summary_and_figures(seeded: Seeded) -> None:
    r = seeded.report(f"/studies/{seeded.study}/report.html")
    assert r.status_code == 200, r.text
    page = assert_self_contained(r.text)
    assert drawn(page) >= {"accuracy", "ratio", "depth", "metrics"}
    assert "seeded-study" in page.text and "kernel_size=3" in page.text and "kernel_size=5" in page.text
    assert "The spec every job starts from" in page.text


def test_reports_of_what_is_not_there_are_404(seeded: Seeded) -> None:
    client = seeded.client
    for url in ("/jobs/0123456789ab/report.html", "/studies/0123456789ab/report.html",
                f"/compare/report.html?ids={seeded.done},0123456789ab"):
        r = client.get(url)
        assert r.status_code == 404 and "0123456789ab" in r.json()["detail"], url
    assert client.get("/compare/report.html?ids=nope").status_code == 422
    assert client.get(f"/jobs/{seeded.done}/report.html", headers={"Authorization": "Bearer wrong"}).status_code \
        == 401


def test_reports_beyond_the_queue_are_refused() -> None:
    """At most MAX_REPORTS are made at once and REPORT_QUEUE wait; the next is a 503 with Retry-After."""
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace()))
    refused: list[HTTPException] = []

    async def main() -> None:
        release = anyio.Event()

        async def hold() -> None:
            async with reports._report_slot(request):  # type: ignore[arg-type]
                await release.wait()

        async with anyio.create_task_group() as group:
            for _ in range(reports.MAX_REPORTS + reports.REPORT_QUEUE):
                group.start_soon(hold)
            await anyio.sleep(0.05)
            try:
                async with reports._report_slot(request):  # type: ignore[arg-type]
                    pass
            except HTTPException as err:
                refused.append(err)
            release.set()

    anyio.run(main)
    assert len(refused) == 1 and refused[0].status_code == 503 and refused[0].headers["Retry-After"]


def test_report_templates_are_package_data() -> None:
    """The templates ship with the package (pyproject's package-data), named report_* (the pages have theirs)."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    data = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "templates/*.html" in data["deepgrad_server"]
    templates = repo / "server" / "deepgrad_server" / "templates"
    assert {p.name for p in templates.glob("report_*.html")} >= {"report_base.html", "report_job.html",
                                                                   "report_compare.html", "report_study.html"}
