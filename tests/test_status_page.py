"""The status page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) while DCMTK storescu sends."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from . import corpus
from .http_support import held_storescu
from .server_support import free_port, in_thread, start_server
from .support import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds the page may take to show what the server already knows (it polls
#: every 2 s).
PAGE_WAIT = 20


def require_browser(testcase: TestCase) -> None:
    """Chromium, chromium-driver and selenium; skip without them, fail under CI."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        message = ("the status page test needs " + ", ".join(missing)
                   + " (scripts/setup-deps.sh test installs them)")
        if in_ci():
            testcase.fail(message + " -- required under CI")
        raise SkipTest(message)


def start_browser(profile: str) -> Any:
    """Headless Chromium with a fresh profile, nothing fetched from outside."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    """Wait up to PAGE_WAIT seconds for ``condition(driver)``; an element
    replaced by the page's own refresh while it was read is read again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, PAGE_WAIT, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, what)


def rows(driver: Any, table: str) -> list[str]:
    """The text of a table's data rows (read again if the page's refresh
    replaced them while they were read)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for attempt in range(5):
        try:
            return [row.text for row in driver.find_elements(By.CSS_SELECTOR,
                                                             f"#{table} tbody tr.item")]
        except StaleElementReferenceException:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


class StatusPageTests(TestCase):
    """The page a newcomer opens at http://127.0.0.1:8080/."""

    timeout = 180

    async def test_page_shows_a_transfer_live_then_the_stored_instances(self) -> None:
        """storescu sends 30 instances and is held mid-transfer (SIGSTOP): the
        page shows its association (peer, calling AE, instances so far); once
        it finishes, the association is gone and the last stored instances
        are listed with AE, SOP class, size and status, the per-AE table
        counts all 30, and no patient name appears.  In a 360 px wide window
        the page does not overflow sideways.  Screenshots stay in the test's
        temp folder."""
        require_browser(self)
        http_port = free_port()
        server = await start_server(self, http={"listen": f"tcp:{http_port}:interface=127.0.0.1"})
        folder = os.path.abspath(self.mktemp())
        samples = corpus.sop_class_corpus(os.path.join(folder, "images"))
        shots = os.path.join(folder, "screenshots")
        os.makedirs(shots)
        profile = tempfile.mkdtemp(prefix="sdcc-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        driver = await in_thread(start_browser, profile)
        self.addCleanup(in_thread, driver.quit)
        await in_thread(driver.get, f"http://127.0.0.1:{http_port}/")

        proto, process = await held_storescu(self, server.port, "PAGEAE", samples,
                                             server.service.monitor)

        def live_association() -> list[str]:
            found = wait_for(driver, lambda d: [r for r in rows(d, "associations")
                                                if "PAGEAE" in r] or False,
                             "the held association on the page")
            driver.save_screenshot(os.path.join(shots, "live.png"))
            return found
        live = await in_thread(live_association)
        self.assertEqual(len(live), 1)
        self.assertIn("127.0.0.1:", live[0])

        process.signalProcess(signal.SIGCONT)
        self.assertEqual(await proto.ended, 0, proto.output.decode(errors="replace"))

        def stored() -> tuple[list[str], list[str], str]:
            wait_for(driver, lambda d: not rows(d, "associations")
                     and any(" 30 " in f" {r} " for r in rows(d, "today")),
                     "the association gone and 30 stored today")
            driver.save_screenshot(os.path.join(shots, "stored.png"))
            return rows(driver, "recent"), rows(driver, "today"), driver.page_source
        recent, today, source = await in_thread(stored)
        self.assertEqual(len(recent), 20)          # the page lists the last 20
        for row in recent:
            self.assertIn("PAGEAE", row)
            self.assertIn("0x0000", row)
            self.assertRegex(row, r"\d+(\.\d)? (B|KiB)")
        names = " ".join(recent)
        self.assertIn("Storage", names)
        self.assertEqual(today[0].split()[:3], ["PAGEAE", "30", "0"])
        self.assertNotIn("Corpus^Patient", source)

        def narrow() -> tuple[int, int]:
            driver.set_window_size(360, 800)
            driver.refresh()
            wait_for(driver, lambda d: len(rows(d, "recent")) == 20, "the page after resizing")
            driver.save_screenshot(os.path.join(shots, "narrow.png"))
            return driver.execute_script(
                "return [document.documentElement.scrollWidth, window.innerWidth]")
        scroll_width, inner_width = await in_thread(narrow)
        self.assertLessEqual(scroll_width, inner_width)
        for name in ("live.png", "stored.png", "narrow.png"):
            self.assertGreater(os.path.getsize(os.path.join(shots, name)), 1000)
