"""Headless Chromium for the end-to-end tests: Debian's ``chromium`` driven by its
``chromedriver`` through Selenium, waited on in real time, and screenshots that are checked.

Its job: find the browser and its driver (or fail under ``RELAY_REQUIRE_SERVICES``/CI,
else skip, saying ``make deps``), start one isolated browser window per call (a profile
of its own under the test's directory, no network beyond what the page asks for),
explicit waits on the page's DOM, the page's console for a failure report, and
``check_screenshot`` (the PNG decoded: it must not be blank).

Must not: start relays or databases (tests/fixtures/relays.py does), assert what a page
shows (the tests do), let Selenium fetch a driver or a browser (the paths are given, so
Selenium Manager never runs), or use ``--dump-dom``/``--virtual-time-budget``, which do
not wait for WebSocket data.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.wait import WebDriverWait

from tests.fixtures.postgres import services_required

__all__ = [
    "Browser",
    "ScreenshotStats",
    "check_screenshot",
    "find_chromium",
    "open_browser",
    "screenshot_stats",
    "wait_until",
]

T = TypeVar("T")

#: Debian's package names, for the message when they are missing.
APT_PACKAGES = "chromium chromium-driver fonts-dejavu-core"
_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_DRIVERS = ("chromedriver",)
_DRIVER_DIRS = ("/usr/bin", "/usr/lib/chromium")
#: A white pixel, and how far from it a pixel must be to count as ink.
_WHITE = (255, 255, 255)
_INK_DISTANCE = 60


def _which(names: tuple[str, ...], dirs: tuple[str, ...] = ()) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for folder in dirs:
            candidate = Path(folder) / name
            if candidate.is_file():
                return str(candidate)
    return None


def find_chromium() -> tuple[str, str]:
    """``(browser, chromedriver)`` paths; fails (CI, ``RELAY_REQUIRE_SERVICES=1``) or skips
    the test when either is missing."""
    browser = _which(_BROWSERS)
    driver = _which(_DRIVERS, _DRIVER_DIRS)
    if browser and driver:
        return browser, driver
    missing = ", ".join(
        name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path
    )
    reason = f"{missing} not found (apt-get install {APT_PACKAGES}, or `make deps`)"
    if services_required():
        pytest.fail(f"headless Chromium required (CI, RELAY_REQUIRE_SERVICES): {reason}")
    pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


@dataclass
class Browser:
    """One Chromium window: ``driver`` is Selenium's handle, ``name`` labels its output."""

    driver: webdriver.Chrome
    name: str
    directory: Path

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait(self, condition: Callable[[webdriver.Chrome], T], timeout: float, what: str) -> T:
        """``condition(driver)``'s first truthy value, polled in real time (250 ms), or
        AssertionError naming ``what`` with the page's state."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(condition)
        except TimeoutException:
            raise AssertionError(
                f"{self.name}: waited {timeout:.0f} s for {what}\n{self.diagnostics()}"
            ) from None

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def console(self) -> list[str]:
        """The page's console lines so far (errors included)."""
        try:
            entries: list[dict[str, Any]] = self.driver.get_log("browser")  # type: ignore[no-untyped-call]
        except WebDriverException as exc:
            return [f"(console unavailable: {exc.msg})"]
        return [f"{e.get('level')}: {e.get('message')}" for e in entries]

    def diagnostics(self) -> str:
        """What a failure report needs: the URL, the connection line, the console."""
        try:
            header = self.js(
                "var s = document.getElementById('status'), x = document.getElementById('session');"
                "return [location.href, s && s.textContent, x && x.textContent,"
                " document.querySelectorAll('#books li').length].join(' | ');"
            )
        except WebDriverException as exc:
            header = f"(page unavailable: {exc.msg})"
        console = self.console()[-30:]
        return f"page: {header}\nconsole ({len(console)} last lines):\n" + "\n".join(console)

    def screenshot(self, name: str) -> Path:
        path = self.directory / f"{self.name}-{name}.png"
        if not self.driver.save_screenshot(str(path)):
            raise AssertionError(f"{self.name}: no screenshot written to {path}")
        return path


@contextlib.contextmanager
def open_browser(
    directory: Path, name: str, *, width: int = 1200, height: int = 1000
) -> Iterator[Browser]:
    """A headless Chromium window with a profile of its own under ``directory``; closed
    (browser and driver processes ended) when the block ends, whatever happened."""
    browser_path, driver_path = find_chromium()
    profile = directory / f"{name}-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (
        "--headless=new",
        # Root in a container: Chromium's sandbox needs user namespaces it may not have.
        "--no-sandbox",
        "--disable-gpu",
        # /dev/shm is small in containers; a full one crashes the renderer mid-test.
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # A hidden window must keep its timers at full speed: the page's reconnect
        # countdown and Meteor's retry timers are what the tests watch.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=str(directory / f"{name}-driver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        yield Browser(driver, name, directory)
    finally:
        driver.quit()


@dataclass(frozen=True)
class ScreenshotStats:
    """What a screenshot holds: its size, how many distinct colours, and how many pixels
    are far from white (text, borders, badges)."""

    width: int
    height: int
    colours: int
    ink_pixels: int

    @property
    def ink_fraction(self) -> float:
        return self.ink_pixels / max(1, self.width * self.height)


def _far_from_white(colour: tuple[int, ...] | float) -> bool:
    if not isinstance(colour, tuple):  # a single-band image; RGB gives tuples
        return False
    return sum(abs(a - b) for a, b in zip(colour, _WHITE, strict=True)) > _INK_DISTANCE


def screenshot_stats(path: Path) -> ScreenshotStats:
    """``path`` (a PNG) decoded with Pillow and counted."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        colours = rgb.getcolors(maxcolors=width * height) or []
        ink = sum(count for count, colour in colours if _far_from_white(colour))
    return ScreenshotStats(width, height, len(colours), ink)


def check_screenshot(
    path: Path, *, min_colours: int = 16, min_ink: float = 0.005
) -> ScreenshotStats:
    """``screenshot_stats(path)``, or AssertionError when the image is blank: fewer than
    ``min_colours`` colours (anti-aliased text alone gives dozens) or less than ``min_ink``
    of its pixels away from white."""
    stats = screenshot_stats(path)
    if stats.colours < min_colours or stats.ink_fraction < min_ink:
        raise AssertionError(f"{path} looks blank: {stats}")
    return stats


def wait_until(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """``condition()``'s first truthy value, polled until ``timeout``, else AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)
