"""Headless Debian Chromium driven over WebDriver (chromedriver) for console tests.

The browser is started with its own background traffic (component updates, sync, safe
browsing) switched off, and every request a page makes is read back from the DevTools
performance log, so a test can assert that nothing left 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from support.png import distinct_colors

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
)


def available() -> bool:
    return shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None


class Browser:
    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in _FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.requested: list[str] = []
        self.console: list[str] = []
        # the start page's own internal resources (chrome://) are not the console's
        self.driver.get("about:blank")
        self.driver.get_log("performance")

    def close(self) -> None:
        self.driver.quit()

    def get(self, url: str) -> None:
        self.driver.get(url)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def fill(self, selector: str, text: str) -> None:
        field = self.css(selector)
        field.clear()
        field.send_keys(text)

    def select(self, selector: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.css(selector)).select_by_value(value)

    def submit(self, selector: str) -> None:
        """Click a submit button and wait for the next page."""
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.css("html")
        self.css(selector).click()
        WebDriverWait(self.driver, 20).until(ec.staleness_of(old))

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def text(self, selector: str = "body") -> str:
        return str(self.css(selector).text)

    def screenshot(self, path: Path) -> int:
        """Save a screenshot; returns how many colours a sample of it has (1 = blank)."""
        png = self.driver.get_screenshot_as_png()
        path.write_bytes(png)
        return distinct_colors(png)

    def drain_logs(self) -> None:
        """Collect the URLs requested and console messages since the last call."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.append(str(message["params"]["request"]["url"]))
        self.console.extend(str(e.get("message", "")) for e in self.driver.get_log("browser"))
