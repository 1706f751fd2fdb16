"""Headless Chromium for the browser tests, and a server for their pages.

Chromium and ChromeDriver come from Debian (``apt-get install chromium
chromium-driver``, which ``make test`` does); nothing is downloaded at run
time.  A missing browser fails the test with the command that installs it:
a browser test that skips silently would let CI pass without ever running it.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .processes import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver  (or `make test`, which installs them)"
# The built client, as the node serves it at /fanline/ (npm run build in clients/js puts it there).
CLIENT_DIR = ROOT / "node" / "js-client"
PAGES = ROOT / "tests" / "browser"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Pages in background tabs must keep their timers: the tests watch two at once.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--window-size=1280,900",
]


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        pytest.fail(f"the browser tests need {' and '.join(missing)}: {INSTALL}", pytrace=False)
    if not (CLIENT_DIR / "index.js").exists():
        pytest.fail(f"no built client in {CLIENT_DIR}: run `npm ci && npm run build` in clients/js", pytrace=False)


@contextmanager
def chromium() -> Iterator[object]:
    """A fresh headless Chromium (its own empty profile), driven by selenium through the system chromedriver."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fanline-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # An explicit driver path: selenium never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def translate_path(self, path: str) -> str:
        # /fanline/* is the built client; everything else a test page.
        path = path.split("?", 1)[0]
        if path.startswith("/fanline/"):
            return str(CLIENT_DIR / Path(path).name)
        return str(PAGES / Path(path).name)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def page_server() -> Iterator[str]:
    """Serve tests/browser/ and the built client on a free loopback port; yields the origin."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
