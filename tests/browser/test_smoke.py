"""Smoke tests of the browser harness: Chromium starts, reaches the real server, and each test starts clean."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.browser.conftest import WINDOW_SIZE, Console, reset_browser, screenshot, wait_for
from tests.conftest import ROOT

HTMX = ROOT / "static" / "vendor" / "htmx.min.js"


def test_health_opens_in_the_browser(console: Console, tmp_path: Path) -> None:
    console.start()
    console.open("/health")

    assert '"status"' in wait_for(console.driver, "body").text
    size = console.driver.get_window_size()
    assert (size["width"], size["height"]) == WINDOW_SIZE
    picture = screenshot(console.driver, "health", folder=tmp_path)  # not docs/: nobody wants this one in the README
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_reset_leaves_no_cookies(console: Console) -> None:
    console.start()
    console.open("/health")
    console.driver.add_cookie({"name": "session", "value": "from-an-earlier-test"})
    assert console.driver.get_cookies()

    reset_browser(console.driver)
    console.open("/health")

    assert console.driver.get_cookies() == []


def test_pages_load_the_vendored_htmx(console: Console) -> None:
    console.start(EVOLUTION_API="")  # no gateway: the simulator is open
    console.open("/simulator")
    wait_for(console.driver, "body")

    version = console.driver.execute_script("return window.htmx && window.htmx.version")
    assert isinstance(version, str) and version.startswith("2."), version
    served = requests.get(console.url("/static/vendor/htmx.min.js"), timeout=5)
    assert served.status_code == 200
    assert served.content == HTMX.read_bytes()
