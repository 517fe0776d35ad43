"""End to end in a real browser: ``batchgw dashboard`` against a live gateway, driven in headless Chromium.

Uses Debian's Chromium (no browser download). In CI (``CI=true``) a missing Chromium fails the test;
elsewhere it skips. With ``BATCHGW_SCREENSHOTS=1`` it saves a screenshot of each page into
``dashboard/screenshots/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import CHROMIUM, TIMEOUT_MS, Seeded, browser_log_in, require_browser, run_dashboard

SCREENSHOTS = Path(__file__).resolve().parents[2] / "dashboard" / "screenshots"


@pytest.fixture(scope="module")
def dashboard_url(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``batchgw dashboard`` on a free port, pointed at the seeded gateway."""
    with run_dashboard(seeded.gateway.base_url, tmp_path_factory.mktemp("dashboard")) as url:
        yield url


@pytest.fixture
def fresh_dashboard_url(seeded: Seeded, tmp_path: Path) -> Iterator[str]:
    """A dashboard of its own, which no browser has opened yet."""
    with run_dashboard(seeded.gateway.base_url, tmp_path) as url:
        yield url


def _shot(page: Any, name: str) -> None:
    if os.environ.get("BATCHGW_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        page.wait_for_timeout(1500)  # let charts and tables finish drawing
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _open(page: Any, url: str, heading: str) -> None:
    """Open ``url`` (a new browser session, so it asks for the admin key first), log in and wait for the page."""
    page.goto(url)
    browser_log_in(page)
    page.get_by_role("heading", name=heading).first.wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Loading").first.wait_for(state="hidden", timeout=TIMEOUT_MS)


def test_jobs_page_shows_the_batch_and_cancel_works(seeded: Seeded, dashboard_url: str) -> None:
    sync_api = require_browser()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1500})
            page.set_default_timeout(TIMEOUT_MS)
            _open(page, dashboard_url, "Jobs")
            running = page.get_by_role("link", name=seeded.running.id)
            running.wait_for()
            assert page.get_by_text("Running now (1)").is_visible()
            _shot(page, "jobs")

            # While a job runs the list refreshes on its own, and a click on a job still lands on it.
            updated = page.get_by_text("Updated ").last
            before = updated.inner_text()
            page.wait_for_function(
                "before => [...document.querySelectorAll('p')].some(p => p.innerText.startsWith('Updated ')"
                " && p.innerText !== before)",
                arg=before,
            )
            running.click()
            page.get_by_role("heading", name=f"Job {seeded.running.id}").wait_for()
            assert "batch=" + seeded.running.id in page.url
            page.get_by_role("button", name="Cancel job").click()
            page.get_by_text("Cancel requested").first.wait_for()
            assert seeded.admin.batch(seeded.running.id)["status"] in ("cancelling", "cancelled")

            _open(page, f"{dashboard_url}/job?batch={seeded.flaky.id}", f"Job {seeded.flaky.id}")
            page.get_by_text("failed requests").first.wait_for()
            _shot(page, "job")
            for path, heading in (("spend", "Spend"), ("alerts", "Alerts & budgets"), ("providers", "Providers")):
                _open(page, f"{dashboard_url}/{path}", heading)
                assert not page.get_by_text("Traceback").count()
                _shot(page, path)
        finally:
            browser.close()


def test_every_page_opened_first_by_its_url_has_the_apps_navigation_caption_and_wide_layout(
    seeded: Seeded, fresh_dashboard_url: str
) -> None:
    """A deep link (as the Jobs table's links are) opened in a fresh session, on a dashboard no one has opened
    at ``/`` yet, renders the app's own frame: not Streamlit's automatic pages, centered and without a caption."""
    sync_api = require_browser()
    # Jobs, the default page, is at "/" (Streamlit answers "/jobs" with its "Page not found" dialog).
    headings = {
        "job?batch=" + seeded.done.id: f"Job {seeded.done.id}", "spend": "Spend", "alerts": "Alerts & budgets",
        "advisor": "Advisor", "providers": "Providers", "": "Jobs", "webhooks": "Webhooks",
    }  # fmt: skip
    problems: dict[str, list[str]] = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            for path, heading in headings.items():
                context = browser.new_context(viewport={"width": 1500, "height": 1200})
                try:
                    page = context.new_page()
                    page.set_default_timeout(TIMEOUT_MS)
                    _open(page, f"{fresh_dashboard_url}/{path}", heading)
                    found = _app_frame_problems(page, seeded.gateway.base_url)
                    if found:
                        problems[path] = found
                finally:
                    context.close()
        finally:
            browser.close()
    assert not problems, problems


def _app_frame_problems(page: Any, gateway_url: str) -> list[str]:
    """What is missing of the app's own frame: its navigation, the gateway caption, the wide layout."""
    from playwright.sync_api import TimeoutError as Timeout

    problems = []
    nav = page.get_by_test_id("stSidebarNav")
    try:
        nav.get_by_role("link", name="Job detail", exact=True).wait_for(timeout=5_000)
    except Timeout:
        problems.append("not the app's navigation")
    else:
        titles = ("Jobs", "Job detail", "Spend", "Alerts & budgets", "Advisor", "Providers")
        missing = [title for title in titles if not nav.get_by_role("link", name=title, exact=True).count()]
        if missing:
            problems.append(f"the navigation lacks {missing}")
    try:
        page.get_by_test_id("stSidebar").get_by_text(gateway_url).first.wait_for(timeout=10_000)
    except Timeout:
        problems.append("no gateway caption")
    width = page.get_by_test_id("stMainBlockContainer").first.bounding_box()["width"]
    if width < 900:  # the centered layout caps the content at 736 px
        problems.append(f"narrow layout ({width:.0f} px)")
    return problems
