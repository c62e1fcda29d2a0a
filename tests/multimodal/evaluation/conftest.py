"""A real headless browser for the HTML reports: Chromium from the system packages, driven over the DevTools
protocol through a pipe (``--remote-debugging-pipe``: no port, no extra Python package).

`browser_check(path)` opens the page, waits for its load event, and returns what a reader would see: a
screenshot (PNG bytes), every <img> with whether it loaded, and every console error, uncaught exception and
failed resource load. Tests using it are skipped, with the reason, where no Chromium is installed
(``apt-get install -y chromium``)."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 90.0


@dataclass
class PageCheck:
    """What the browser saw of one page."""

    screenshot: bytes
    images: list[tuple[str, bool]]  # (src, loaded)
    errors: list[str] = field(default_factory=list)


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's pipe (fds 3 and 4 in the browser)."""

    def __init__(self, executable: str, profile: str) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def wire() -> None:  # in the child, before exec: the pipe ends the browser expects
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError("the browser did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict:
        """Call `method` and return its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.time() + TIMEOUT_S
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        """The first event `method` (already received or still to come)."""
        deadline = time.time() + TIMEOUT_S
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found is not None:
                return found
            self.events.append(self._message(deadline))

    def close(self) -> None:
        """Ask the browser to quit; end it if it does not."""
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._read)
        os.close(self._write)


IMAGES_JS = "JSON.stringify(Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]))"


def errors_of(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among DevTools events."""
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
    return out


def open_page(executable: str, path: str) -> PageCheck:
    """Load `path` in a fresh headless browser profile and report what it saw."""
    profile = tempfile.mkdtemp(prefix="report-browser-")
    tools = DevTools(executable, profile)
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=session)
        tools.wait_for("Page.loadEventFired")
        images = json.loads(tools.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                       session=session)["result"]["value"])
        shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        errors = errors_of([e for e in tools.events if e.get("sessionId") == session])
        return PageCheck(base64.b64decode(shot["data"]), [tuple(i) for i in images], errors)
    finally:
        tools.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def browser_check():
    """`check(path) -> PageCheck` in headless Chromium; skips the test where no Chromium is installed."""
    executable = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium) to check the HTML reports in a browser")
    return lambda path: open_page(executable, str(path))
