"""``deepgrad-client open`` and ``report`` against the real app (issue 16): a login link that signs a browser in,
and reports written whole to a file, with the errors a user can act on. The idle server's jobs stay queued: a
report of a queued job is still a report (spec, state, and why nothing is drawn yet)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner, Result
from client_live import TINY, Live

from deepgrad_client.cli import cli


def run(live: Live, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--url", live.url, "--token", live.token, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def jobs(idle_server: Live) -> list[str]:
    with idle_server.client() as client:
        return [client.submit(TINY, name=f"report-{i}")["id"] for i in range(2)]


def test_open_print_gives_a_link_that_signs_a_browser_in(idle: Live, jobs: list[str]) -> None:
    result = run(idle, "open", jobs[0], "--print")
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert re.fullmatch(rf"{idle.url}/login\?next=/ui/jobs/{jobs[0]}#ticket=[\w.-]+", url)
    ticket = parse_qs(urlsplit(url).fragment)["ticket"][0]
    with httpx.Client(base_url=idle.url) as browser:
        assert browser.get(f"/jobs/{jobs[0]}").status_code == 401
        r = browser.post("/login", json={"ticket": ticket, "next": f"/ui/jobs/{jobs[0]}"},
                         headers={"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200 and r.json()["next"] == f"/ui/jobs/{jobs[0]}"
        assert browser.get(f"/jobs/{jobs[0]}").status_code == 200


def test_open_starts_a_browser_where_there_is_one(idle: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    monkeypatch.setenv("DISPLAY", ":0")
    result = run(idle, "open")
    assert result.exit_code == 0, result.output
    assert len(opened) == 1 and opened[0].startswith(f"{idle.url}/login#ticket=") and opened[0] in result.stdout
    monkeypatch.delenv("DISPLAY")  # over SSH: no graphical browser; a text one in this terminal could not sign in
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    result = run(idle, "open")
    assert result.exit_code == 0 and len(opened) == 1
    assert "/login#ticket=" in result.stdout and "open the link above in yours" in result.stderr


def test_open_unknown_job_is_an_error(idle: Live) -> None:
    result = run(idle, "open", "0123456789ab", "--print")
    assert result.exit_code == 1 and "no job with id '0123456789ab'" in result.stderr and not result.stdout
    assert run(idle, "open", "not-a-job").exit_code == 2


def test_report_writes_one_html_file(idle: Live, jobs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "job.html"
    out.write_text("an older report")
    result = run(idle, "report", jobs[0], "-o", str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!doctype html>") and jobs[0] in html and "report-0" in html  # replaced
    assert f"wrote {out}" in result.stdout and not list(tmp_path.glob(".*.part"))
    compare = tmp_path / "compare.html"
    assert run(idle, "report", "--compare", ",".join(jobs), "-o", str(compare)).exit_code == 0
    assert all(job_id in compare.read_text() for job_id in jobs)
    stdout = run(idle, "report", jobs[1], "-o", "-")
    assert stdout.exit_code == 0 and stdout.stdout.startswith("<!doctype html>") and jobs[1] in stdout.stdout


def test_report_of_a_study(idle: Live, tmp_path: Path) -> None:
    with idle.client() as client:
        study = client.create_study(base=TINY, grid={"model.kernel_size": [3, 5]}, name="report-study")
    out = tmp_path / "study.html"
    result = run(idle, "report", "--study", study["id"], "-o", str(out))
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "report-study" in html and "kernel_size=3" in html and "kernel_size=5" in html


def test_report_errors_leave_the_file_alone(idle: Live, jobs: list[str], tmp_path: Path) -> None:
    out = tmp_path / "kept.html"
    out.write_text("kept")
    missing = run(idle, "report", "0123456789ab", "-o", str(out))
    assert missing.exit_code == 1 and "no job with id '0123456789ab'" in missing.stderr
    study = run(idle, "report", "--study", "0123456789ab", "-o", str(out))
    assert study.exit_code == 1 and "no study with id" in study.stderr
    assert out.read_text() == "kept"
    for args in ([], [jobs[0], "--study", jobs[1]], ["--compare", jobs[0]]):
        usage = run(idle, "report", *args, "-o", str(out))
        assert usage.exit_code == 2, (args, usage.output)
    assert run(idle, "report", jobs[0]).exit_code == 2  # -o is required
    assert run(idle, "report", jobs[0], "-o", str(tmp_path / "no" / "such" / "dir.html")).exit_code == 1
    assert out.read_text() == "kept"
