"""How fast the Build page answers in a real browser (issue 13 §4, issue 10 §4).

Starts the app as deployed (.streamlit/config.toml) and, as the baseline in the same run, with
Streamlit's defaults (file watcher on, gc.collect after every run). Headless Chromium, driven by
Playwright, then measures:

- first load: a new tab -> the canvas shows its nodes (target < 3 s);
- an edit on a 50-node graph: a palette click adds a layer, then the Delete key removes it;
  click/keypress -> the canvas's DOM shows the change (targets p50 < 150 ms, p95 < 300 ms),
  and -> the page's answer is drawn too (shapes and counts recomputed: the canvas has nothing
  pending), with the server's CPU time per edit (target < 50 ms);
- eight browsers editing at once: every edit seen, p50 (target < 1 s), drawn and answered;
- big graphs: a 300- and a 600-node graph, load -> nodes drawn, then edits until answered.

The canvas draws an edit before the page answers (pages/parts/flow_canvas); both figures are printed,
so the round trip through Streamlit is never hidden behind the first.

Times are taken inside the browser (Date.now() at the click and at the DOM change), so Playwright's
own overhead is not counted. The machine's load average is printed with the figures.

    .venv/bin/python benchmarks/ui_latency.py [--rounds 20] [--no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
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

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.graph import FORMAT, Edge, Graph, Node, dump_graph  # noqa: E402
from builder.layout import with_layout  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CANVAS = 'iframe[title="pages.parts.flow_canvas.nb_canvas"]'
DEPLOYED: list[str] = []  # .streamlit/config.toml as it is
STREAMLIT_DEFAULTS = ["--server.fileWatcherType", "auto", "--runner.postScriptGC", "true"]
WATCH = """() => {
  // Record, in the page's clock (the frame shares Date), when the canvas draws a new node count
  // (data-nodes: drawn, the canvas shows an edit at once) and when Python's answer is drawn too
  // (data-pending back to 0: shapes and counts recomputed, the edit confirmed).
  const frame = document.querySelector('iframe[title="pages.parts.flow_canvas.nb_canvas"]');
  const doc = frame.contentDocument;
  const box = () => doc.querySelector('.nb-canvas');
  window.nbCount = () => Number(box().dataset.nodes);
  window.nbChanges = [];
  window.nbSettled = [];
  let last = window.nbCount();
  new MutationObserver(() => {
    const now = window.nbCount();
    if (now !== last) { window.nbChanges.push([Date.now(), now]); last = now; }
    if (box().dataset.pending === '0') window.nbSettled.push([Date.now(), now]);
  }).observe(doc.body, {attributes: true, subtree: true, attributeFilter: ['data-nodes', 'data-pending']});
  window.nbStarts = [];
  const mark = () => window.nbStarts.push(Date.now());
  window.addEventListener('pointerdown', mark, true);
  window.addEventListener('keydown', mark, true);
  frame.contentWindow.addEventListener('keydown', mark, true);
}"""


def chain_graph(layers: int, name: str) -> Graph:
    """Input [64] -> (Linear, ReLU) x n -> Output: `layers` + 2 nodes, laid out."""
    nodes = [Node(id="x", type="Input", params={"shape": [64]})]
    for index in range(layers):
        kind = ("Linear", "ReLU")[index % 2]
        params = {"out_features": 64} if kind == "Linear" else {}
        nodes.append(Node(id=f"n{index}", type=kind, params=params))
    nodes.append(Node(id="y", type="Output"))
    edges = [Edge(source=a.id, target=b.id) for a, b in zip(nodes, nodes[1:], strict=False)]
    return with_layout(Graph(format=FORMAT, name=name, nodes=nodes, edges=edges))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(home: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
        "--server.address", "127.0.0.1", *extra,
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


def workspace(home: Path, graph: Graph) -> str:
    """A workspace whose autosave holds `graph`: opening ?w=<id> shows it."""
    wid = f"bench{secrets.token_hex(16)}"
    (home / "autosave").mkdir(exist_ok=True)
    (home / "autosave" / f"{wid}.json").write_text(dump_graph(graph))
    return wid


async def open_tab(browser, url: str, wid: str, timeout_ms: float = 60_000):
    """A new tab on the workspace; returns it and the seconds until the canvas showed nodes."""
    context = await browser.new_context(viewport={"width": 1440, "height": 900})
    page = await context.new_page()
    started = time.perf_counter()
    await page.goto(f"{url}/?w={wid}&lang=en")
    await page.frame_locator(CANVAS).locator(".react-flow__node").first.wait_for(timeout=timeout_ms)
    loaded = time.perf_counter() - started
    await page.wait_for_function(
        "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"
    )
    await page.evaluate(WATCH)
    return page, loaded


async def one_change(
    page, action, expected: int, timeout_s: float = 30.0
) -> tuple[float, float] | None:
    """Run `action`; ms from the input until the canvas drew `expected` nodes, and until Python's
    answer was drawn too (nothing pending). None: not seen within the timeout, or not measured."""
    starts, changes, settled = await page.evaluate(
        "() => [window.nbStarts.length, window.nbChanges.length, window.nbSettled.length]"
    )
    await action()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await page.evaluate(
            """([s, c, k, n]) => {
              const start = window.nbStarts[s];
              const hit = window.nbChanges.slice(c).find(x => x[1] === n);
              if (!hit) return null;
              const done = window.nbSettled.slice(k).find(x => x[1] === n && x[0] >= hit[0]);
              const pending = document.querySelector('iframe[title="pages.parts.flow_canvas.nb_canvas"]')
                .contentDocument.querySelector('.nb-canvas').dataset.pending;
              if (!done && pending !== '0') return null;
              if (start === undefined) return [-1, -1];
              return [hit[0] - start, (done ? done[0] : hit[0]) - start];
            }""",
            [starts, changes, settled, expected],
        )
        if found is not None:
            await page.wait_for_function(
                "() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon]')"
            )
            return (float(found[0]), float(found[1])) if found[0] >= 0 else None
        await asyncio.sleep(0.01)
    return None


async def edit_rounds(page, rounds: int) -> tuple[list[float], list[float], int]:
    """Palette click (add a Dropout, selected) then Delete (remove it): ms until drawn, ms until
    Python's answer was drawn, and misses."""
    drawn: list[float] = []
    confirmed: list[float] = []
    misses = 0
    count = await page.evaluate("() => window.nbCount()")
    pill = page.get_by_test_id("stSidebar").get_by_text("Dropout", exact=True)
    for _ in range(rounds):
        added = await one_change(page, lambda: pill.click(), count + 1)
        removed = await one_change(page, lambda: page.keyboard.press("Delete"), count)
        for result in (added, removed):
            if result is None:
                misses += 1
            else:
                drawn.append(result[0])
                confirmed.append(result[1])
        if removed is None:
            count = await page.evaluate("() => window.nbCount()")
    return drawn, confirmed, misses


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def browsers_cpu_seconds() -> float:
    """CPU time of every Chromium process on the machine (the benchmark's browsers)."""
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if "chrom" in (process.info["name"] or ""):
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


def cpu_seconds(server: subprocess.Popen) -> float:
    process = psutil.Process(server.pid)
    times = process.cpu_times()
    return times.user + times.system


async def measure(label: str, extra: list[str], rounds: int, crowd: int, big: bool) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        server, url = start_app(home, extra)
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
                )
                await run_all(label, browser, home, url, server, rounds, crowd, big)
                await browser.close()
        finally:
            server.terminate()
            server.wait(timeout=20)


async def run_all(label, browser, home, url, server, rounds, crowd, big) -> None:
    graph = chain_graph(48, "fifty")
    loads = []
    for _ in range(3):
        page, loaded = await open_tab(browser, url, workspace(home, graph))
        loads.append(loaded)
        await page.context.close()
    page, _ = await open_tab(browser, url, workspace(home, graph))
    await edit_rounds(page, 2)  # warm-up
    before = cpu_seconds(server)
    drawn, confirmed, misses = await edit_rounds(page, rounds)
    cpu_ms = (cpu_seconds(server) - before) * 1000 / max(1, 2 * rounds)
    await page.context.close()
    print(f"[{label}] first load to canvas: median {statistics.median(loads):.2f} s (of 3)")
    print(
        f"[{label}] edit on a 50-node graph, click/key -> canvas DOM: p50 {percentile(drawn, .5):.0f}"
        f" ms, p95 {percentile(drawn, .95):.0f} ms; -> Python's answer drawn: p50"
        f" {percentile(confirmed, .5):.0f} ms, p95 {percentile(confirmed, .95):.0f} ms"
        f" ({len(drawn)} edits, {misses} not shown); server CPU {cpu_ms:.1f} ms per edit"
    )
    print(
        f"[{label}]   by kind, p50: palette add drawn {statistics.median(drawn[0::2]):.0f} ms,"
        f" answered {statistics.median(confirmed[0::2]):.0f} ms; Delete key drawn"
        f" {statistics.median(drawn[1::2]):.0f} ms, answered {statistics.median(confirmed[1::2]):.0f} ms"
    )
    if crowd > 1:
        tabs = [await open_tab(browser, url, workspace(home, graph)) for _ in range(crowd)]
        server_before, browsers_before = cpu_seconds(server), browsers_cpu_seconds()
        results = await asyncio.gather(*(edit_rounds(tab, 5) for tab, _ in tabs))
        server_cpu = cpu_seconds(server) - server_before
        browsers_cpu = browsers_cpu_seconds() - browsers_before
        seen = [t for drawn_, _, _ in results for t in drawn_]
        together = [t for _, confirmed_, _ in results for t in confirmed_]
        missed = sum(m for _, _, m in results)
        print(
            f"[{label}] {crowd} browsers at once: drawn p50 {percentile(seen, .5):.0f} ms,"
            f" p95 {percentile(seen, .95):.0f} ms; until Python's answer is drawn: p50"
            f" {percentile(together, .5):.0f} ms, p95 {percentile(together, .95):.0f} ms;"
            f" {missed} of {len(together) + missed} edits not shown within 30 s (or not measured)"
        )
        print(
            f"[{label}]   CPU while they edited: the browsers {browsers_cpu:.1f} s, the server"
            f" {server_cpu:.1f} s ({os.cpu_count()} cores shared by both)"
        )
        for tab, _ in tabs:
            await tab.context.close()
    if big:
        for size in (300, 600):
            page, loaded = await open_tab(browser, url, workspace(home, chain_graph(size, "big")))
            nodes = await page.evaluate("() => window.nbCount()")
            _, confirmed, misses = await edit_rounds(page, 3)
            print(
                f"[{label}] {size + 2}-node graph: load to canvas {loaded:.2f} s ({nodes} nodes);"
                f" edit p50 {percentile(confirmed, .5):.0f} ms until Python's answer is drawn,"
                f" {misses} not shown"
            )
            await page.context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--crowd", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-big", action="store_true")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: install chromium to run this benchmark")
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    asyncio.run(measure("deployed", DEPLOYED, args.rounds, args.crowd, not args.no_big))
    if not args.no_baseline:
        asyncio.run(measure("streamlit defaults", STREAMLIT_DEFAULTS, args.rounds, 1, False))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
