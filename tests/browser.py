"""Open a page in a real headless Chromium over the DevTools protocol and report what happened.

Used by the report tests: did the plotly figures draw SVG, was any JavaScript error (or dialog, e.g.
an injected ``alert``) raised, and a screenshot as an artefact. Chromium is the Debian package that
``make test`` installs where it can (the ``chromium_path`` fixture in ``conftest.py`` skips the tests
that need it otherwise); the flags keep it from reaching the network.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1400,1000")


def chromium() -> str | None:
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


@dataclass
class PageReport:
    plot_divs: int = 0
    drawn_plots: int = 0
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)


class _Session:
    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self.ws.recv()))


def _start(user_dir: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: _stop ends every helper
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if match := re.search(r"DevTools listening on (ws://\S+)", line):
            port = re.search(r":(\d+)/", match[1])[1]
            return proc, port
        if not line and proc.poll() is not None:
            break
    _stop(proc)
    raise RuntimeError("chromium did not start (no DevTools endpoint)")


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def _errors(events: list[dict]) -> tuple[list[str], list[str]]:
    errors, dialogs = [], []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", "error"))
        elif method == "Page.javascriptDialogOpening":
            dialogs.append(params.get("message", ""))
    return errors, dialogs


def open_page(path: Path, *, screenshot: Path | None = None, evaluate: dict[str, str] | None = None,
              settle: float = 1.0) -> PageReport:
    """Load ``path`` in headless Chromium, let scripts run, and report plots drawn and errors seen."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as user_dir:
        proc, port = _start(user_dir)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            s = _Session(page["webSocketDebuggerUrl"])
            for domain in ("Runtime", "Log", "Page"):
                s.call(f"{domain}.enable")
            s.call("Page.navigate", url=path.resolve().as_uri())
            s.wait_for("Page.loadEventFired", timeout=60)
            time.sleep(settle)
            report = PageReport()
            for name, expression in {
                "plot_divs": "document.querySelectorAll('.js-plotly-plot').length",
                "drawn_plots": "Array.from(document.querySelectorAll('.js-plotly-plot'))"
                               ".filter(d => d.querySelector('svg.main-svg') !== null).length",
                **(evaluate or {}),
            }.items():
                value = s.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")
                if name in ("plot_divs", "drawn_plots"):
                    setattr(report, name, value)
                else:
                    report.values[name] = value
            if screenshot is not None:
                shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            report.errors, report.dialogs = _errors(s.events)
            s.ws.close()
            return report
        finally:
            _stop(proc)
