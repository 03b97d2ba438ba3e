"""Browser tests: the real server (`python webhook.py`) in one headless Chromium, driven by Selenium.

One browser serves the whole session; each test starts its own server through the e2e `Harness` and begins on a
blank page with no cookies. Selenium is given Debian's chromium and chromedriver (`make test` installs both), so
Selenium Manager never runs and nothing is downloaded. Every test in this folder is marked `browser`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver import Chrome, ChromeOptions
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import ROOT
from tests.e2e import conftest as e2e_conftest
from tests.e2e.conftest import Harness, ServerProcess

# Reused from tests/e2e: the `e2e` fixture (servers wired to this test's Redis and fakes, all stopped at the end)
# and its failure report (every server's log and what the fakes received).
e2e = e2e_conftest.e2e
pytest_runtest_makereport = e2e_conftest.pytest_runtest_makereport

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")  # Debian package `chromium`
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian package `chromium-driver`, same version as the browser
SCREENSHOTS = ROOT / "docs" / "screenshots"  # embedded in the README: written by the tests, never by hand
WINDOW_SIZE = (1280, 900)
WAIT_SECONDS = 10.0  # default for wait_for / wait_for_text
PAGE_LOAD_SECONDS = 20.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--force-device-scale-factor=1",  # screenshots of the same size on every machine
)


# ----- helpers ------------------------------------------------------------------------------------------


def wait_for(driver: Chrome, css: str, timeout: float = WAIT_SECONDS, *, visible: bool = True) -> WebElement:
    """Wait until an element matching `css` is on the page (and visible, unless `visible=False`); return it."""
    located = (
        expected_conditions.visibility_of_element_located
        if visible
        else expected_conditions.presence_of_element_located
    )
    try:
        return WebDriverWait(driver, timeout).until(located((By.CSS_SELECTOR, css)))
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout:.1f}s waiting for {css!r} on {driver.current_url}") from None


def wait_for_text(driver: Chrome, css: str, text: str, timeout: float = WAIT_SECONDS) -> WebElement:
    """Wait until the first element matching `css` contains `text` (e.g. after an htmx swap); return it."""
    try:
        has_text = expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text)
        WebDriverWait(driver, timeout).until(has_text)
    except TimeoutException:
        raise AssertionError(
            f"timed out after {timeout:.1f}s waiting for {text!r} in {css!r} on {driver.current_url}"
        ) from None
    return driver.find_element(By.CSS_SELECTOR, css)


def screenshot(driver: Chrome, name: str, folder: Path = SCREENSHOTS) -> Path:
    """Save the viewport as `<folder>/<name>.png` (docs/screenshots/, which the README embeds, by default)."""
    assert name and "/" not in name and not name.endswith(".png"), f"bad screenshot name {name!r}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the browser could not write {path}")
    return path


def reset_browser(driver: Chrome, origins: list[str] | None = None) -> None:
    """Leave the browser on a blank page with no cookies (servers all live on 127.0.0.1) and no storage of `origins`."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    for origin in origins or []:
        driver.execute_cdp_cmd("Storage.clearDataForOrigin", {"origin": origin, "storageTypes": "all"})


class Console:
    """One browser test's world: the e2e harness (Redis, fakes), the shared browser, and the server under test."""

    def __init__(self, harness: Harness, driver: Chrome) -> None:
        self.harness = harness
        self.driver = driver
        self.server: ServerProcess | None = None
        self._log: list[dict[str, Any]] = []

    def start(self, **overrides: Any) -> ServerProcess:
        """Start `python webhook.py` with these environment overrides and wait for /health; `open` then uses it."""
        self.server = self.harness.python_server(**overrides)
        return self.server

    @property
    def base_url(self) -> str:
        assert self.server is not None, "start a server first: console.start()"
        return self.server.url

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def open(self, path: str = "/") -> None:
        """Load `path` of the server; returns once the page's load event has fired."""
        self.driver.get(self.url(path))

    def wait_for(self, css: str, timeout: float = WAIT_SECONDS, *, visible: bool = True) -> WebElement:
        return wait_for(self.driver, css, timeout, visible=visible)

    def wait_for_text(self, css: str, text: str, timeout: float = WAIT_SECONDS) -> WebElement:
        return wait_for_text(self.driver, css, text, timeout)

    def screenshot(self, name: str) -> Path:
        return screenshot(self.driver, name)

    def browser_log(self) -> list[dict[str, Any]]:
        """What the page logged during this test (console calls, JS errors, failed loads): level, message, time."""
        self._log.extend(self.driver.get_log("browser"))
        return list(self._log)


# ----- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """One headless Chromium for the whole session (quit at the end); tests get it clean through `console`."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        needed = "`make test` installs the Debian packages chromium and chromium-driver"
        pytest.fail(f"{' and '.join(missing)} missing: {needed}", pytrace=False)
    folder = tmp_path_factory.mktemp("chromium")
    options = ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={folder / 'profile'}")
    options.add_argument(f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # read by Console.browser_log()
    # An explicit driver path is what keeps Selenium Manager (which would download a driver) from running.
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log"))
    driver = Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture
def console(request: pytest.FixtureRequest, e2e: Harness, chromium: Chrome) -> Iterator[Console]:
    reset_browser(chromium)
    chromium.get_log("browser")  # drop what earlier tests logged
    console = Console(e2e, chromium)
    request.node.browser_console = console
    yield console
    reset_browser(chromium, [server.url for server in e2e.servers])  # before `e2e` stops the servers


# ----- marker and failure report ------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: runs in headless Chromium (tests/browser/); select with -m browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test in this folder `browser`, so `-m browser` / `-m "not browser"` select them."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_browser(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, also attach the page's URL, what the browser logged, and a screenshot (in the test's tmp)."""
    report = yield
    console: Console | None = getattr(item, "browser_console", None)
    if report.failed and console is not None:
        try:
            picture = screenshot(console.driver, f"failure-{report.when}", folder=console.harness.tmp_path)
            lines = [f"url: {console.driver.current_url}", f"screenshot: {picture}"]
            lines += [f"{entry['level']} {entry['message']}" for entry in console.browser_log()]
        except WebDriverException as exc:
            lines = [f"the browser did not answer: {exc.msg}"]
        report.sections.append(("browser", "\n".join(lines)))
    return report
