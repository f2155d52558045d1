"""Helpers for tests that drive the web UIs (Dagster, MLflow) in headless Chromium.

Servers run as their own process group (``start_new_session=True``) so that one ``os.killpg`` ends them together with
the children they spawn (Dagster's code server, uvicorn workers). Selenium is imported only inside
``headless_chromium``, so this module imports on machines without it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

# Debian packages `chromium` and `chromium-driver`.
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Headless, no sandbox (root in containers), and nothing that phones home or updates itself.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of a log file ('' when it does not exist)."""
    if not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers HTTP 200; fail early if the server process exits.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` seconds (message ends with its log tail).
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}; log tail:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last_error = repr(exc)
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s (last: {last_error}); log tail:\n{log_tail(log)}")


_LOCATIONS_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace { locationEntries { name loadStatus locationOrLoadError {
      __typename ... on PythonError { message } } } }
    ... on PythonError { message }
  }
}
"""


def wait_for_dagster_code_locations(base_url: str, log: Path, timeout: float = 120.0) -> list[str]:
    """Wait until every code location of a running Dagster webserver has loaded; return their names.

    ``/server_info`` answers before the code server has loaded the definitions; a location that fails to load (an
    import error) would otherwise only show up as assets without definitions in the UI.

    Raises:
        RuntimeError: a location failed to load (with its error) or is still loading after ``timeout`` seconds.
    """
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": _LOCATIONS_QUERY}).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + timeout
    state: Any = None
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=30) as response:
            state = json.load(response)["data"]["workspaceOrError"]
        if state["__typename"] != "Workspace":
            raise RuntimeError(f"{base_url}: workspace failed to load: {state}\nlog tail:\n{log_tail(log)}")
        entries = state["locationEntries"]
        for entry in entries:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise RuntimeError(
                    f"{base_url}: code location {entry['name']!r} failed to load:\n{error['message']}"
                    f"\nlog tail:\n{log_tail(log)}"
                )
        if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
            return [entry["name"] for entry in entries]
        time.sleep(0.5)
    raise RuntimeError(f"{base_url}: code locations still loading after {timeout:.0f} s: {state}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process in the group we may not signal still counts as alive
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM a server started with ``start_new_session=True`` and its children; SIGKILL what is left after ``grace``.

    Only this process's own group (its pid) is signalled, never processes matched by name.
    """
    pgid = proc.pid  # start_new_session=True: the child leads a new session and process group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        proc.kill()
    proc.wait(timeout=10)


@contextmanager
def running_server(
    cmd: Sequence[str],
    env: Mapping[str, str],
    ready_url: str,
    log: Path,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (stdout + stderr to ``log``), wait until ``ready_url`` answers, stop its process group on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_for_http(ready_url, proc, log, timeout)
        yield proc
    finally:
        stop_process_group(proc)


@contextmanager
def headless_chromium(user_data_dir: Path, log: Path, window: tuple[int, int] = (1600, 1200)) -> Iterator[Any]:
    """A Selenium 4 Chrome driver on the system Chromium with a fresh profile in ``user_data_dir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    # Both paths given explicitly, so Selenium Manager never tries to download a browser or driver.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER), log_output=str(log)))
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: Any) -> str:
    """The visible text of the current page ('' while the body is not there yet)."""
    from selenium.common.exceptions import WebDriverException

    try:
        return driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    except WebDriverException:
        return ""


def wait_until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float, failure_shot: Path) -> Any:
    """``WebDriverWait`` for ``condition``; on timeout save a screenshot and fail naming ``what`` and the page text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        failure_shot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(failure_shot))
        raise AssertionError(
            f"{driver.current_url}: {what} within {timeout:.0f} s (screenshot {failure_shot}); page text:\n"
            f"{page_text(driver)[:3000]}"
        ) from None


def wait_for_texts(driver: Any, texts: Sequence[str], timeout: float, failure_shot: Path) -> None:
    """Wait until every string in ``texts`` is part of the page's visible text."""

    def all_present(d: Any) -> bool:
        body = page_text(d)
        return all(text in body for text in texts)

    try:
        wait_until(driver, all_present, f"expected texts {list(texts)}", timeout, failure_shot)
    except AssertionError as exc:
        missing = [text for text in texts if text not in page_text(driver)]
        raise AssertionError(f"missing {missing}: {exc}") from None


def loaded_image_width(driver: Any, css: str) -> int:
    """``naturalWidth`` of the first ``<img>`` matching ``css`` that is loaded and fully shown, else 0.

    Fully shown: it and every ancestor have opacity 1, so dialogs that fade in are screenshotted after the fade.
    """
    script = """
        const shown = (el) => {
            for (let e = el; e; e = e.parentElement) {
                if (getComputedStyle(e).opacity !== '1') return false;
            }
            return true;
        };
        const imgs = Array.from(document.querySelectorAll(arguments[0]));
        const ok = imgs.find(i => i.complete && i.naturalWidth > 0 && shown(i));
        return ok ? ok.naturalWidth : 0;
    """
    return int(driver.execute_script(script, css) or 0)
