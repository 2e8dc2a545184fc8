"""How fast do the dashboard's pages draw a 100-epoch job? Page loads in Chromium against a real server.

Two finished jobs shaped like a 100-epoch ResNet-18 run on CIFAR-10 (20 tracked convs x 39,100 steps of weight
norms, activation norms every 10th step, 100 epochs of metrics) are written into the server's SQLite file with
``bench/api.py``'s seeding, then ``python -m deepgrad_server.main`` starts and Chromium (Playwright, the system's
binary) signs in through a login link and loads each page ``--loads`` times:

* **in view**: from navigation to every chart and figure in the first screen drawn (uPlot charts made, PNG
  figures loaded), as the page's own clock (``performance.now()``) says;
* **whole page**: scrolled through a screen at a time, until every figure of the page has loaded.

The first load of a page finds the server's caches cold (figures rendered, series read from the store); the
others are warm, as for a user coming back. On the job page it also times a full redraw of the norm chart (20
lines of the ~2,000 downsampled steps, ``uPlot.setData``) and a zoom: from the drag to the zoomed range drawn in
detail (the server reads and downsamples that range).

``--screenshots DIR`` then also trains real jobs (a study of three architectures on synthetic data, and one left
running) and saves a screenshot of every page to DIR (docs/screenshots/).

    python bench/pages.py                                  # ~1.5 min on 2 cores
    python bench/pages.py --loads 9 --json pages.json
    python bench/pages.py --screenshots docs/screenshots   # ~3 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import hardware
from api import TOKEN, Server, seed_finished_job
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 900}
# When everything in the first screen was drawn, by the page's clock (ms since navigation): charts made (or saying
# they have nothing yet), figures loaded. Null until then. Measured in the page, not by polling it from here.
IN_VIEW_DRAWN = """(() => {
  if (!document.body.dataset.ready) return null;
  const inView = (el) => { const r = el.getBoundingClientRect(); return r.bottom > 0 && r.top < innerHeight; };
  const charts = [...document.querySelectorAll(".chart")].filter(inView);
  const images = [...document.querySelectorAll("figure.png img")].filter(inView);
  const done = charts.every((c) => c.dataset.drawn || c.dataset.empty)
    && images.every((i) => ["loaded", "none"].includes(i.closest("figure").dataset.state));
  if (!done) return null;
  const times = [...charts.map((c) => +(c.dataset.drawnAt || 0)), ...images.map((i) => +(i.dataset.loadedAt || 0))];
  return Math.max(performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd, ...times);
})()"""
# Every figure of the page loaded, or saying that it has nothing to draw yet.
ALL_FIGURES = """[...document.querySelectorAll("figure.png")]
    .every((f) => ["loaded", "none"].includes(f.dataset.state))"""
STUDY = {"name": "depth", "base": {"model": {"arch": "vgg11", "width": 0.25},
                                   "data": {"name": "synthetic", "subset": 32, "test_subset": 8, "image_size": 32},
                                   "train": {"epochs": 4, "batch_size": 32}},
         "grid": {"model.arch": ["vgg11", "vgg_deep", "resnet18"]}}
RUNNING = {"name": "vgg_deep-live", "model": {"arch": "vgg_deep", "width": 0.25},
           "data": {"name": "synthetic", "subset": 64, "test_subset": 8, "image_size": 32},
           "train": {"epochs": 40, "batch_size": 32}, "tracking": {"flush_every": 10}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loads", type=int, default=5, help="loads of each page (the first with cold server caches)")
    p.add_argument("--chromium", default=os.environ.get("DEEPGRAD_CHROMIUM") or shutil.which("chromium"),
                   help="the Chromium binary (default: chromium on the PATH)")
    p.add_argument("--screenshots", metavar="DIR", type=Path, help="also train real jobs and save page screenshots")
    p.add_argument("--json", metavar="PATH", help="also write the settings and timings as JSON to PATH")
    args = p.parse_args(argv)
    if args.loads < 2:
        p.error("--loads must be >= 2 (one cold, one warm at least)")
    if not args.chromium or not Path(args.chromium).exists():
        p.error("no Chromium: apt-get install chromium, or pass --chromium PATH")
    return args


def until(page: Page, expression: str, timeout_s: float = 60) -> Any:
    """Poll ``expression`` until truthy (the pages' CSP forbids ``wait_for_function``'s in-page eval)."""
    deadline = time.monotonic() + timeout_s
    while not (value := page.evaluate(expression)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s} s: {expression[:80]}")
        time.sleep(0.01)
    return value


def scroll_through(page: Page) -> None:
    height = page.evaluate("document.body.scrollHeight")
    for y in range(0, height + VIEWPORT["height"], VIEWPORT["height"] // 2):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(100)


def load(context: Any, url: str) -> dict[str, float]:
    """One load of a page in a new tab: ms to the first screen drawn, and to every figure of the page loaded."""
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(url)
    in_view = until(page, IN_VIEW_DRAWN)
    scroll_through(page)
    until(page, ALL_FIGURES)
    whole = (time.perf_counter() - start) * 1e3
    page.close()
    if errors:
        raise RuntimeError(f"{url}: errors in the console: {errors}")
    return {"in_view_ms": in_view, "whole_ms": whole}


def chart_timings(context: Any, url: str) -> dict[str, float]:
    """On the job page: ms per full redraw of the norm chart, and from a zoom to its range drawn in detail."""
    page = context.new_page()
    page.goto(url)
    until(page, "document.querySelector('#norms-chart').dataset.drawn")
    points = int(page.get_attribute("#norms-chart", "data-points"))
    redraw = page.evaluate("""(async () => {
      const u = DG.charts["norms-chart"].plot, times = [];
      for (let i = 0; i < 15; i++) {
        const t = performance.now();
        u.redraw(true, true); // every path built anew, as new data make it
        await null; // uPlot draws in a microtask
        times.push(performance.now() - t);
      }
      times.sort((a, b) => a - b);
      return times[7];
    })()""")
    box = page.locator("#norms-chart .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, y, steps=3)
    page.mouse.up()
    zoom = until(page, "(d => d.detailAt && [+d.zoomAt, +d.detailAt])(document.querySelector('#norms-chart').dataset)")
    page.close()
    return {"points_per_line": points, "redraw_ms": redraw, "zoom_to_detail_ms": zoom[1] - zoom[0]}


def measure(browser: Browser, base: str, pages: dict[str, str], loads: int) -> dict[str, Any]:
    context = browser.new_context(viewport=VIEWPORT, base_url=base)
    link = httpx.post(base + "/login-links", headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    first = context.new_page()
    first.goto(link.json()["path"])
    first.wait_for_url(base + "/")
    first.close()
    out: dict[str, Any] = {}
    for name, path in pages.items():
        runs = [load(context, path) for _ in range(loads)]
        out[name] = {"cold": runs[0], "warm": {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]},
                     "runs": runs}
        print(f"  {name:<8} in view: cold {runs[0]['in_view_ms']:6.0f} ms, warm {out[name]['warm']['in_view_ms']:6.0f} "
              f"ms   whole page: cold {runs[0]['whole_ms']:6.0f} ms, warm {out[name]['warm']['whole_ms']:6.0f} ms",
              flush=True)
    out["job_chart"] = chart_timings(context, pages["job"])
    c = out["job_chart"]
    print(f"  norm chart: 20 lines x {c['points_per_line']} points; full redraw {c['redraw_ms']:.1f} ms (median of "
          f"15); zoom to the range drawn in detail {c['zoom_to_detail_ms']:.0f} ms", flush=True)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    context.close()
    return out


def screenshots(browser: Browser, server: Server, seeded: str, out: Path) -> list[str]:
    """Real jobs (a study of three architectures, one job left training), then a screenshot of every page."""
    out.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    study = api.post("/studies", json=STUDY).raise_for_status().json()
    ids = [j["job"]["id"] for j in study["jobs"]]
    deadline = time.monotonic() + 900
    while any(api.get(f"/jobs/{i}").json()["state"] not in ("succeeded", "failed") for i in ids):
        if time.monotonic() > deadline:
            raise TimeoutError("the study did not end in 15 minutes")
        time.sleep(1)
    running = api.post("/jobs", json=RUNNING).raise_for_status().json()["id"]
    while (api.get(f"/jobs/{running}").json()["progress"] or {}).get("epoch", 0) < 3:
        time.sleep(1)
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url, device_scale_factor=1)
    page = context.new_page()
    page.goto(api.post("/login-links", json={"next": "/"}).json()["path"])
    page.wait_for_url(server.url + "/")
    saved = []

    def shot(path: str, name: str, full: bool, height: int = VIEWPORT["height"]) -> None:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.goto(path)
        until(page, IN_VIEW_DRAWN)
        if full:
            scroll_through(page)
            until(page, ALL_FIGURES)
            page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(500)
        page.screenshot(path=out / name, full_page=full)
        _shrink(out / name)
        saved.append(name)

    shot("/", "jobs.png", full=False)
    shot(f"/ui/jobs/{seeded}", "job.png", full=False, height=1200)
    shot(f"/ui/jobs/{seeded}", "job-full.png", full=True)
    shot(f"/ui/jobs/{running}", "job-running.png", full=False, height=1200)
    shot(f"/ui/compare?ids={','.join(ids)}", "compare.png", full=True)
    shot(f"/ui/studies/{study['id']}", "study.png", full=True)
    api.post(f"/jobs/{running}/cancel")
    context.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    head = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "hardware": hardware(),
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "settings": {k: str(v) for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory(prefix="deepgrad-bench-pages-") as tmp, sync_playwright() as pw:
        t = time.perf_counter()
        url = f"sqlite:///{Path(tmp) / 'deepgrad.db'}"
        jobs = [seed_finished_job(url) for _ in range(2)]
        _rename(url, jobs[1], "resnet18-cifar10-100ep-b")
        print(f"# seeded 2 jobs (100 epochs x 391 steps x 20 layers) in {time.perf_counter() - t:.1f} s", flush=True)
        server = Server(Path(tmp), {"DEEPGRAD_DEVICE": "cpu,cpu", "OMP_NUM_THREADS": "1"})
        server.start()
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        head["chromium"] = browser.version
        print(f"# dashboard pages  {head['date']}")
        print(f"# hardware: {head['hardware']}  Python {head['python']}  Chromium {head['chromium']}  load average: "
              f"{head['load_average_at_start']}")
        print(f"# server idle after {server.settle():.1f} s; {args.loads} loads per page (the first cold)", flush=True)
        try:
            pages = {"jobs": "/", "job": f"/ui/jobs/{jobs[0]}", "compare": f"/ui/compare?ids={','.join(jobs)}"}
            res = measure(browser, server.url, pages, args.loads)
            if args.screenshots:
                res["screenshots"] = screenshots(browser, server, jobs[0], args.screenshots)
                print(f"# screenshots: {', '.join(res['screenshots'])} in {args.screenshots}")
        finally:
            browser.close()
            server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps({**head, **res}, indent=2))
    return 0


def _shrink(path: Path) -> None:
    """A screenshot as a 256-colour PNG: a third of the bytes, and pages are drawn in few colours."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _rename(database_url: str, job_id: str, name: str) -> None:
    from deepgrad_server import store
    from deepgrad_server.db import Database

    db = Database(database_url)
    try:
        with db.writing() as s:
            store.update_job(s, job_id=job_id, name=name)
    finally:
        db.dispose()


if __name__ == "__main__":
    sys.exit(main())
