"""Start -> first loss point drawn, measured inside the browser (issue 21, target p50 < 1.5 s).

The app runs with a temporary NETBUILDER_HOME; each repetition is a fresh browser tab (its own
workspace, the tiny Flatten -> Linear graph on digits) on the Train page at 1280x720. The page's
own clock (performance.now()) marks the Start click (a capturing pointerdown listener) and, on
every animation frame, looks for a Plotly chart whose layout.meta names the loss of a run that
was not on the page before the click and that holds a point: the first frame it is drawn.
Prints every time, p50, p95 and the machine's load average (1, 5, 15 min) before and after.
Run: .venv/bin/python benchmarks/start_to_first_point.py [--repeats 7] [--lang zh]
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.graph import FORMAT, Edge, Graph, Node, dump_graph  # noqa: E402
from builder.layout import with_layout  # noqa: E402

CHROMIUM = os.environ.get("NETBUILDER_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1280, "height": 720}
TARGET_S = 1.5
# In the page: when Start is pressed, and when a new run's loss chart first holds a point.
WATCH = """() => {
  const runs = () => [...document.querySelectorAll('.js-plotly-plot')]
    .map(plot => [plot, plot.layout && plot.layout.meta])
    .filter(([, meta]) => meta && meta.chart === 'loss');
  const before = new Set(runs().map(([, meta]) => meta.run));
  window.nbStart = null;
  window.nbFirstPoint = null;
  window.addEventListener('pointerdown', () => { window.nbStart ??= performance.now(); }, true);
  const look = () => {
    const drawn = runs().some(([plot, meta]) => !before.has(meta.run)
      && (plot._fullData || []).some(trace => trace.x && trace.x.length > 0));
    if (drawn && window.nbStart !== null) window.nbFirstPoint = performance.now();
    else requestAnimationFrame(look);
  };
  requestAnimationFrame(look);
}"""
START_BUTTON = ".st-key-train-start button"
# The page is drawn as a person sees it before pressing Start: no script running, and the
# placeholder chart plotted (the chart library loaded).
READY = """() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')
    && [...document.querySelectorAll('.js-plotly-plot')].some(plot => plot._fullLayout)"""


def tiny_graph() -> Graph:
    """Digits [1, 8, 8] -> Flatten -> Linear(10): the run's first step comes at once."""
    nodes = [
        Node(id="image", type="Input", params={"shape": [1, 8, 8]}),
        Node(id="flat", type="Flatten"),
        Node(id="fc", type="Linear", params={"out_features": 10}),
        Node(id="out", type="Output"),
    ]
    edges = [Edge(source=a.id, target=b.id) for a, b in zip(nodes, nodes[1:], strict=False)]
    return with_layout(Graph(format=FORMAT, name="tiny", nodes=nodes, edges=edges))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    env = os.environ | {"NETBUILDER_HOME": str(home)}
    log = (home / "server.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1):
                return server, url
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the app did not start: see {home / 'server.log'}")


def workspace(home: Path) -> str:
    """A new workspace whose autosave holds the tiny graph."""
    wid = f"bench{secrets.token_hex(16)}"
    (home / "autosave").mkdir(exist_ok=True)
    (home / "autosave" / f"{wid}.json").write_text(dump_graph(tiny_graph()))
    return wid


def one_start(browser: object, url: str, home: Path, lang: str) -> float:
    """Seconds from the Start click to the new run's first loss point, in the page's clock."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        tab = context.new_page()
        tab.goto(f"{url}/?w={workspace(home)}&lang={lang}")  # app.py first: its menu, warm-up
        menu = tab.get_by_test_id("stSidebarNav")  # (before app.py has run it lists pages/ files)
        menu.get_by_text("训练" if lang == "zh" else "Train", exact=True).click()
        tab.locator(START_BUTTON).wait_for()
        tab.wait_for_function(READY)
        tab.evaluate(WATCH)
        tab.locator(START_BUTTON).click()
        tab.wait_for_function("() => window.nbFirstPoint !== null", timeout=120_000)
        started, drawn = tab.evaluate("() => [window.nbStart, window.nbFirstPoint]")
        return (drawn - started) / 1000
    finally:
        context.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--lang", choices=("en", "zh"), default="en")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        server, url = start_app(home)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
                )
                one_start(browser, url, home, args.lang)  # warm: the forkserver, plotly.js
                times = []
                for index in range(args.repeats):
                    seconds = one_start(browser, url, home, args.lang)
                    times.append(seconds)
                    print(f"start {index + 1}: {seconds:.2f} s", flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=10)
    load_after = os.getloadavg()
    print(f"p50 {statistics.median(times):.2f} s, p95 {percentile(times, 0.95):.2f} s")
    print(f"(target p50 < {TARGET_S} s; {os.cpu_count()} CPUs)")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*load_before))
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*load_after))


if __name__ == "__main__":
    main()
