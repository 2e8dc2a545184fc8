"""Browser tests: pytest-playwright's session browser, launched from the system's Chromium (Debian's ``chromium``;
``playwright install`` cannot download browsers here), against a real ``deepgrad-server`` per module.

Skipped with a reason where no Chromium is installed, unless ``DEEPGRAD_REQUIRE_BROWSER=1`` (``.ci/run`` sets it):
then they fail.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live import LiveServer  # noqa: E402

# Quiet, deterministic Chromium: no sandbox (the tests may run as root), no GPU, nothing it would fetch on its own.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]


def chromium() -> str | None:
    """The system's Chromium: ``$DEEPGRAD_CHROMIUM``, else ``chromium`` (or ``chromium-browser``) on the PATH."""
    env = os.environ.get("DEEPGRAD_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, on the system's Chromium."""
    path = chromium()
    if path is None:
        if os.environ.get("DEEPGRAD_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (DEEPGRAD_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium); set DEEPGRAD_CHROMIUM to its binary")
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def browser(browser_type_launch_args: dict[str, Any]) -> Iterator[Browser]:
    """One Chromium per module of browser tests, stopped with it (pytest-playwright's lives for the whole session:
    its sync API keeps an event loop running in the main thread meanwhile, and every later test that runs asyncio
    there, TestClient's among them, fails with 'Already running asyncio in this thread')."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**browser_type_launch_args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real server for the module, with two CPU workers: a job can train while others run."""
    live = LiveServer(tmp_path_factory.mktemp("browser") / "server", None, env={"DEEPGRAD_DEVICE": "cpu,cpu"})
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def api(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


class Console:
    """Errors a page reported: console errors and uncaught exceptions."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda err: self.errors.append(f"{page.url}: uncaught {err}"))
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.location.get('url', '')}: {message.text}")


@pytest.fixture
def console() -> Iterator[Console]:
    """Collects the errors of the pages it watches; the test fails if there are any."""
    seen = Console()
    yield seen
    assert not seen.errors, "errors in the browser console:\n" + "\n".join(seen.errors)


@pytest.fixture
def signed_in(browser: Browser, server: LiveServer, api: httpx.Client, console: Console
              ) -> Iterator[BrowserContext]:
    """A browser context signed in through a login link, as ``deepgrad-client open`` would open it."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=server.url)
    context.on("page", console.watch)
    login(context, api, "/").close()
    yield context
    context.close()


def login(context: BrowserContext, api: httpx.Client, next_page: str) -> Page:
    """Open a fresh login link for ``next_page`` in a new page of ``context``: the page, there."""
    link = api.post("/login-links", json={"next": next_page}).raise_for_status().json()
    page = context.new_page()
    page.goto(link["path"])
    page.wait_for_url(f"**{next_page}")
    return page



@pytest.fixture
def open_login_link(api: httpx.Client) -> Any:
    """``open_login_link(context, next_page)``: a fresh login link opened in a new page of ``context``."""
    return lambda context, next_page: login(context, api, next_page)
