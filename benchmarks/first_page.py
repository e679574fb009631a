"""A fresh server's first page: seconds from opening the Build page to its canvas showing nodes,
for the first browser on a newly started server (while the trainers' forkserver still loads
torch and the data) and for a second one just after; times taken in the browser's process.

    .venv/bin/python benchmarks/first_page.py [--repeats 5]

Prints the median and the spread of each, with the machine's load average; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CANVAS = 'iframe[title="pages.parts.flow_canvas.nb_canvas"]'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_server(browser) -> tuple[float, float]:
    """(first page, second page) seconds on one newly started server."""
    home = Path(tempfile.mkdtemp(prefix="netbuilder-first-page-"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true"],
        cwd=ROOT,
        env=os.environ | {"NETBUILDER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        times = []
        for _ in range(2):
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            started = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.frame_locator(CANVAS).locator(".react-flow__node").first.wait_for(timeout=120_000)
            times.append(time.perf_counter() - started)
            page.close()
        return times[0], times[1]
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    firsts, seconds = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        for _ in range(args.repeats):
            first, second = one_server(browser)
            firsts.append(first)
            seconds.append(second)
        browser.close()
    load = os.getloadavg()[0]
    for name, values in (("first page", firsts), ("second page", seconds)):
        print(
            f"{name}: median {statistics.median(values):.2f} s"
            f" (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
        )
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
