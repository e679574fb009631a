"""The browser tests' harness: the app on a free port (8610-8619; ten more per pytest-xdist worker) with a temporary home for its
runs and autosaves, Debian's headless chromium driven by Playwright, and a screenshot per step in
test-artifacts/. Without /usr/bin/chromium every browser test is skipped, with the reason; in CI
(CI=true) each fails instead, so a broken CI image cannot pass by skipping them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("NETBUILDER_CHROMIUM", "/usr/bin/chromium"))


def _worker_number() -> int:
    """pytest-xdist's worker (gw0, gw1...): each worker's app listens on its own ten ports."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


PORTS = range(8610 + 10 * _worker_number(), 8620 + 10 * _worker_number())
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 60
# Resolves after the browser has drawn two more frames (layout done after a resize).
NEXT_FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
# Streamlit has drawn everything: no element is a loading placeholder and no script is running.
SETTLED = """() => !document.querySelector('[data-testid=stSkeleton]')
    && !document.querySelector('[data-testid=stStatusWidget] [data-testid=stStatusWidgetRunningIcon]')"""


def chromium_missing() -> str | None:
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is missing: install it (apt-get install chromium) to run the browser tests"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without chromium the browser tests are skipped, except in CI, where they fail."""
    reason = chromium_missing()
    if reason is None or in_ci():
        return
    for item in items:
        if Path(item.fspath).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def chromium_required() -> None:
    """In CI (CI=true) a missing chromium is a failure of every browser test, never a skip."""
    reason = chromium_missing()
    if reason is not None:
        pytest.fail(f"CI=true and {reason}" if in_ci() else reason, pytrace=False)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PORTS.start}-{PORTS.stop - 1} for the app")


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"the app did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def app_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NETBUILDER_HOME of the app under test: its runs/ and autosave/ go here, not the repo."""
    return tmp_path_factory.mktemp("netbuilder-home")


@pytest.fixture(scope="session")
def app_url(app_home: Path) -> Iterator[str]:
    port = free_port()
    log = app_home / "streamlit.log"
    env = os.environ | {"NETBUILDER_HOME": str(app_home), "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        traceback_lines = [line for line in log.read_text().splitlines() if "Traceback" in line]
        if traceback_lines:
            print(f"\nthe app logged {len(traceback_lines)} traceback(s); see {log}")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)  # a loaded 2-core machine: the app may take seconds
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url: str) -> Iterator[object]:
    """A fresh browser tab (a new context: no cookies, a new workspace) for each test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="session")
def shot() -> Callable[[object, str], Path]:
    """Save a numbered screenshot of the whole page under test-artifacts/ (look at them).

    Streamlit scrolls inside its main block, so the window is stretched to the page's height
    for the picture and then put back.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    counter = iter(range(1, 1000))

    def take(tab, name: str) -> Path:
        path = ARTIFACTS / f"{next(counter):02d}-{name}.png"
        tab.wait_for_function(SETTLED, timeout=30_000)
        size = tab.viewport_size
        height = tab.evaluate(
            "() => document.querySelector('[data-testid=stMain]')?.scrollHeight ?? 0"
        )
        tab.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
        tab.wait_for_function(SETTLED, timeout=30_000)
        tab.evaluate(NEXT_FRAMES)  # the resized page has been laid out and painted
        tab.screenshot(path=str(path))
        tab.set_viewport_size(size)
        tab.wait_for_function(SETTLED, timeout=30_000)
        tab.evaluate(NEXT_FRAMES)  # the next step starts from the page at its own size
        return path

    return take


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed step leaves a picture of the page as it was, next to the step screenshots."""
    name = next((n for n in ("page", "small") if n in request.fixturenames), None)
    page = request.getfixturevalue(name) if name is not None else None
    yield  # (the tab was asked for first, so it is still open when the test has failed)
    if request.node.stash.get(FAILED, False) and page is not None:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"))
