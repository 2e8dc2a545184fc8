"""The dashboard in a real browser (Chromium) against a real server with real training jobs: signing in through a
login link, a page refused without it, the job page following a job as it trains (points within 2 s of being
stored, the view kept while the user zooms and scrolls) and cancelling it, compare and study pages, every figure
drawn, no console errors; a saved report that opens offline."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from live import TINY, wait_for
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect

# Trains for minutes unless cancelled: 40 steps an epoch, norms stored every 5 steps.
LIVE = {"name": "browser-live", "model": {"arch": "resnet18", "width": 0.125},
        "data": {"name": "synthetic", "subset": 64, "test_subset": 4, "image_size": 16},
        "train": {"epochs": 50, "batch_size": 16}, "tracking": {"flush_every": 5}}
STUDY = {"name": "browser-study", "base": dict(TINY), "grid": {"model.width": [0.125, 0.25]}}
LAG_S = 2.0  # new norm points on the page within this long of being stored


@pytest.fixture(scope="module")
def jobs(api: httpx.Client) -> dict[str, Any]:
    """The live job first (a worker starts it at once), then a study of two small jobs for the other worker (the
    first of them is also the finished job the other pages show)."""
    live = api.post("/jobs", json=LIVE).raise_for_status().json()["id"]
    study = api.post("/studies", json=STUDY).raise_for_status().json()
    study_jobs = [j["job"]["id"] for j in study["jobs"]]
    return {"live": live, "finished": study_jobs[0], "study": study["id"], "study_jobs": study_jobs}


def until(page: Page, expression: str, timeout_s: float = 30) -> Any:
    """Poll a JavaScript expression until it is truthy (``page.wait_for_function`` would ``eval`` it inside the
    page, which the pages' Content-Security-Policy forbids); its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.05)


def drawn(png: bytes) -> tuple[float, int]:
    """(share of pixels that are not the background, distinct colours) of a screenshot: a blank chart has neither."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 24)
    background = max(colours)[0]
    return 1 - background / (image.width * image.height), len(colours)


def assert_not_blank(page: Page, selector: str) -> None:
    share, colours = drawn(page.locator(selector).screenshot())
    assert share > 0.02 and colours > 8, f"{selector} looks blank ({share:.1%} drawn, {colours} colours)"


def scroll_through(page: Page) -> None:
    """Scroll to the bottom a screen at a time (figures load as they come into view), then back to the top."""
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height, 600):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(150)
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")


def assert_figures_loaded(page: Page, timeout_s: float = 30) -> None:
    """Every server figure of the page has loaded (naturalWidth > 0)."""
    scroll_through(page)
    until(page, """[...document.querySelectorAll("figure.png img")]
        .every((img) => img.complete && img.naturalWidth > 0)""", timeout_s)


def page_points(page: Page) -> tuple[int, int]:
    chart = page.locator("#norms-chart")
    return int(chart.get_attribute("data-points") or 0), int(chart.get_attribute("data-last-step") or -1)


def stored_step(api: httpx.Client, job_id: str, after: int) -> int | None:
    """The last weight-norm step the job has stored after ``after`` (None: none yet)."""
    r = api.get(f"/jobs/{job_id}/gradients", params={"layers": "conv1", "start": after + 1, "max_points": 2})
    steps = r.json()["steps"] if r.status_code == 200 else []
    return steps[-1] if steps else None


# ---------------------------------------------------------------------------------------------------- sign-in


def test_a_page_without_the_session_is_refused(browser: Browser, server: Any, jobs: dict[str, Any]) -> None:
    context = browser.new_context(base_url=server.url)
    try:
        page = context.new_page()
        page.goto(f"/ui/jobs/{jobs['live']}")
        where = urlsplit(page.url)
        assert where.path == "/login" and parse_qs(where.query)["next"] == [f"/ui/jobs/{jobs['live']}"]
        expect(page.locator("#help")).to_be_visible()
        expect(page.locator("#help")).to_contain_text("deepgrad-client open")
        for path in ("/", f"/ui/jobs/{jobs['live']}", "/ui/compare", f"/ui/studies/{jobs['study']}",
                     "/static/app.js", "/static/vendor/uplot/uPlot.iife.min.js", f"/jobs/{jobs['live']}"):
            r = context.request.get(path, max_redirects=0)  # a script's request, not a navigation: a plain 401
            assert r.status == 401, (path, r.status)
    finally:
        context.close()


def test_a_login_link_opens_the_jobs_page(browser: Browser, server: Any, jobs: dict[str, Any],
                                          open_login_link: Any, console: Any) -> None:
    context = browser.new_context(base_url=server.url)
    try:
        context.on("page", console.watch)
        page = open_login_link(context, "/")
        cookies = {c["name"]: c for c in context.cookies()}
        assert cookies["deepgrad_session"]["httpOnly"] and cookies["deepgrad_session"]["sameSite"] == "Strict"
        assert not cookies["deepgrad_csrf"]["httpOnly"]  # the page reads it, to send it back as a header
        rows = page.locator("#jobs tbody tr")
        for job_id in (jobs["live"], *jobs["study_jobs"]):
            expect(page.locator(f"#jobs tr[data-id='{job_id}']")).to_be_visible()
        expect(page.locator("#studies tbody tr")).to_have_count(1)
        page.fill("#filter-name", "browser-live")  # filtered by the server, kept in the address
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-id", jobs["live"])
        assert "name=browser-live" in page.url
        page.fill("#filter-name", "")
        page.select_option("#filter-state", "queued")
        expect(page.locator(f"tr[data-id='{jobs['finished']}']")).to_have_count(0, timeout=10_000)
        page.goto("/?name=browser-live&state=bogus")  # a shared link: a state it does not know is not applied
        expect(rows).to_have_count(1)
        assert page.input_value("#filter-state") == "" and urlsplit(page.url).query == "name=browser-live"
        page.click("#logout")  # a cookie POST: with the CSRF header
        page.wait_for_url("**/login")
        page.goto("/")
        assert urlsplit(page.url).path == "/login"
    finally:
        context.close()


# --------------------------------------------------------------------------------------------- the job page


def test_the_job_page_follows_a_training_job_and_cancels_it(signed_in: BrowserContext, api: httpx.Client,
                                                            jobs: dict[str, Any]) -> None:
    job_id = jobs["live"]
    page = signed_in.new_page()
    page.goto(f"/ui/jobs/{job_id}")
    until(page, "+document.querySelector('#norms-chart').dataset.points > 0", 90)

    # New points: on the page within LAG_S of the API having them.
    lags = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        _, last = page_points(page)
        step = stored_step(api, job_id, last)
        if step is None:
            time.sleep(0.1)
            continue
        seen = time.monotonic()
        until(page, f"+document.querySelector('#norms-chart').dataset.lastStep >= {step}")
        lags.append(time.monotonic() - seen)
    assert lags, "the job stored no new norms for 4 s"
    print(f"new norm points on the page {min(lags):.2f}-{max(lags):.2f} s after the API had them ({len(lags)} checks)")
    assert max(lags) <= LAG_S, f"new norm points took {max(lags):.2f} s to show (all: {lags})"
    assert_not_blank(page, "#norms-chart")

    # The user zooms in: new points arrive, the view stays.
    over = page.locator("#norms-chart .u-over").bounding_box()
    y = over["y"] + over["height"] / 2
    page.mouse.move(over["x"] + over["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.6, y, steps=5)
    page.mouse.up()
    scale = "(() => { const s = DG.charts['norms-chart'].plot.scales.x; return [s.min, s.max]; })()"
    zoomed = page.evaluate(scale)
    points, last = page_points(page)
    until(page, f"+document.querySelector('#norms-chart').dataset.lastStep > {last}")
    assert page.evaluate(scale) == zoomed, "new points moved the zoomed view"

    # The user scrolls to the heatmap: it is drawn, and redrawn as the job goes on, without moving the page.
    page.locator("#heatmap").scroll_into_view_if_needed()
    until(page, "document.querySelector('#heatmap').naturalWidth > 0")
    before = page.evaluate("[window.scrollY, document.querySelector('#heatmap').getBoundingClientRect().top]")
    src = page.get_attribute("#heatmap", "src")
    until(page, f"document.querySelector('#heatmap').src !== {src!r}")
    assert page.evaluate("[window.scrollY, document.querySelector('#heatmap').getBoundingClientRect().top]") == before
    assert_not_blank(page, "#heatmap")

    # Cancel from the page (a cookie request: it must carry the CSRF header, or the server refuses it).
    page.evaluate("window.scrollTo(0, 0)")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=60_000)
    assert api.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
    expect(page.locator("#delete-job")).to_be_visible()


def test_a_finished_job_page_draws_every_figure(signed_in: BrowserContext, api: httpx.Client,
                                                 jobs: dict[str, Any]) -> None:
    job = wait_for(api, jobs["finished"])
    assert job["state"] == "succeeded", job
    page = signed_in.new_page()
    page.goto(f"/ui/jobs/{job['id']}")
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator("#verdict .verdict")).to_be_visible()
    expect(page.locator("#changes")).to_contain_text("model.width")
    assert_figures_loaded(page)
    for chart in ("#norms-chart", "#loss-chart", "#acc-chart"):
        page.locator(chart).scroll_into_view_if_needed()
        expect(page.locator(chart)).to_have_attribute("data-drawn", "1")
        assert_not_blank(page, chart)
    for figure in ("#heatmap", "#depth", "#ratio", "#filters", "#cost"):
        page.locator(figure).scroll_into_view_if_needed()
        assert_not_blank(page, figure)
    # Log-axis ticks never read "0" (uPlot's own labels print 1e-4 as "0"): powers of ten as such.
    labels = page.evaluate("DG.logAxisValues(null, [1e-9, 1e-4, 0.002, 0.01, 1, 1e3, 1e5])")
    assert labels == ["10\u207b\u2079", "10\u207b\u2074", "0.002", "0.01", "1", "1000", "10\u2075"], labels
    page.locator("#norm-kind").scroll_into_view_if_needed()
    page.select_option("#norm-kind", "activation")  # the activation-gradient series, fetched and drawn anew
    expect(page.locator("#norms-chart")).to_have_attribute("data-drawn", "1")
    expect(page.locator("#norms-info")).to_contain_text("steps recorded")


# ---------------------------------------------------------------------------------------- compare and study


def test_the_compare_page_overlays_jobs(signed_in: BrowserContext, api: httpx.Client, jobs: dict[str, Any]) -> None:
    ids = [jobs["finished"], jobs["live"]]
    for job_id in ids:
        wait_for(api, job_id)
    page = signed_in.new_page()
    page.goto(f"/ui/compare?ids={','.join(ids)}")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    differences = page.locator("#differences tbody")
    expect(differences).to_contain_text("train.epochs")
    expect(differences).to_contain_text("tracking.flush_every")
    expect(differences).not_to_contain_text("model.arch")  # both are ResNet-18s
    for chart in ("#acc-chart", "#loss-chart", "#depth-chart"):
        page.locator(chart).scroll_into_view_if_needed()
        expect(page.locator(chart)).to_have_attribute("data-drawn", "1")
        assert_not_blank(page, chart)
    assert_figures_loaded(page)
    # Picking: unticking a job compares the other alone, and the address says so.
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#picker input[aria-label='compare browser-live']").uncheck()
    expect(page.locator("#results tbody tr")).to_have_count(1)
    assert page.url.endswith(f"?ids={jobs['finished']}")


def test_the_study_page_shows_its_summary_and_figures(signed_in: BrowserContext, api: httpx.Client,
                                                      jobs: dict[str, Any]) -> None:
    for job_id in jobs["study_jobs"]:
        assert wait_for(api, job_id)["state"] == "succeeded"
    page = signed_in.new_page()
    page.goto(f"/ui/studies/{jobs['study']}")
    expect(page.locator("#study-state")).to_have_text("ended")
    rows = page.locator("#summary tbody tr")
    expect(rows).to_have_count(2)
    expect(page.locator("#summary thead")).to_contain_text("model.width")
    expect(rows.nth(1)).to_contain_text("0.25")
    assert_figures_loaded(page)
    for figure in ("#fig-accuracy", "#fig-ratio", "#fig-depth", "#fig-metrics", "#fig-cost"):
        page.locator(figure).scroll_into_view_if_needed()
        assert_not_blank(page, figure)
    page.evaluate("window.scrollTo(0, 0)")
    page.click("#compare-link")
    expect(page.locator("#results tbody tr")).to_have_count(2)


# --------------------------------------------------------------------------------------------------- reports


def test_a_saved_report_opens_offline_with_every_figure(browser: Browser, api: httpx.Client, jobs: dict[str, Any],
                                                         tmp_path: Path, console: Any) -> None:
    wait_for(api, jobs["finished"])
    r = api.get(f"/jobs/{jobs['finished']}/report.html")
    if r.status_code == 404 and r.json().get("detail") == "Not Found":
        pytest.skip("this server has no GET /jobs/{id}/report.html yet")
    assert r.status_code == 200, r.text
    report = tmp_path / "report.html"
    report.write_bytes(r.content)
    context = browser.new_context()
    asked: list[str] = []

    def only_files(route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            asked.append(route.request.url)
            route.abort()

    try:
        context.route("**/*", only_files)
        page = console.watch(context.new_page())
        page.goto(report.as_uri())
        images = page.locator("img")
        assert images.count() > 0
        until(page, "[...document.images].every((img) => img.complete)")
        widths = page.evaluate("[...document.images].map((img) => img.naturalWidth)")
        assert all(w > 0 for w in widths), widths
        assert not asked, f"the report asked the network for {asked}"
    finally:
        context.close()
