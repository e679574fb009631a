"""Many people on one server, without browsers: N sessions speak Streamlit's own websocket
protocol (its protobuf BackMsg / ForwardMsg, as the browser sends them) to a running app, each
loading the Build page and then editing at a set pace, alternately through the canvas
component's event value (a node moved) and the palette (a layer added).

    .venv/bin/python benchmarks/serve_load.py [--sessions 10 25 50] [--edits 5] [--pace 5]

For each N it prints: page load answered p50/p95 (connect -> the page's run finished), edit
answered p50/p95 (the event sent -> its run finished), and the server's own CPU per page load
and per edit (psutil, the server process alone: no browser shares its figures). Start the
server yourself with --url, or let this start one (a temporary NETBUILDER_HOME). Nothing is
asserted: targets are in issue "a class on one server".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

ROOT = Path(__file__).resolve().parent.parent
CANVAS_COMPONENT = "pages.parts.flow_canvas.nb_canvas"
FINISHED = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}


@dataclass
class Widgets:
    """What the session learnt from the page's deltas: the canvas and the palette pills."""

    canvas_id: str | None = None
    canvas_fragment: str = ""
    canvas_state: dict[str, Any] = field(default_factory=dict)
    pills: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # id -> (fragment, opts)


class Session:
    """One person's tab: a websocket to /_stcore/stream and the widgets its page drew."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http", "ws", 1).rstrip("/") + "/_stcore/stream"
        self.workspace = secrets.token_hex(16)
        self.widgets = Widgets()
        self.seq = 0
        self.socket: Any = None

    async def load(self) -> float:
        """Connect and run the Build page; seconds until its run finished."""
        started = time.perf_counter()
        self.socket = await websockets.connect(
            self.url, subprotocols=["streamlit"], max_size=None, open_timeout=120
        )
        await self._rerun(widget_states=[], fragment="")
        return time.perf_counter() - started

    async def move_a_node(self) -> float:
        """A canvas event: one node dragged a little (the page moves it, no undo step)."""
        nodes = [n["id"] for n in self.widgets.canvas_state.get("nodes", [])]
        node = random.choice(nodes)
        self.seq += 1
        position = [random.uniform(0, 600), random.uniform(0, 900)]
        value = {"events": [{"seq": self.seq, "kind": "move", "positions": {node: position}}]}
        state = {"id": self.widgets.canvas_id, "json_value": json.dumps(value)}
        started = time.perf_counter()
        await self._rerun([state], self.widgets.canvas_fragment)
        return time.perf_counter() - started

    async def add_a_layer(self) -> float:
        """A palette click: the pill of a layer that fits anywhere (ReLU)."""
        for widget_id, (fragment, options) in self.widgets.pills.items():
            if "ReLU" in options:
                state = {"id": widget_id, "string_array_value": ["ReLU"]}  # the shown option
                started = time.perf_counter()
                await self._rerun([state], fragment)
                return time.perf_counter() - started
        raise RuntimeError("no palette pill offers ReLU")

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()

    async def _rerun(self, widget_states: list[dict[str, Any]], fragment: str) -> None:
        message = BackMsg()
        client = message.rerun_script
        client.query_string = f"w={self.workspace}&lang=en"
        client.page_script_hash = ""
        client.fragment_id = fragment
        for given in widget_states:
            widget = client.widget_states.widgets.add()
            widget.id = given["id"]
            if "json_value" in given:
                widget.json_value = given["json_value"]
            else:
                widget.string_array_value.data.extend(given["string_array_value"])
        if not fragment:
            self.widgets.pills = {}  # a full run draws the palette anew, under new keys
        await self.socket.send(message.SerializeToString())
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(await self.socket.recv())
            kind = reply.WhichOneof("type")
            if kind == "delta":
                self._learn(reply)
            elif kind == "script_finished":
                if reply.script_finished in FINISHED:
                    return
                if reply.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    raise RuntimeError(f"the page's run ended with {reply.script_finished}")

    def _learn(self, reply: ForwardMsg) -> None:
        delta = reply.delta
        if delta.WhichOneof("type") != "new_element":
            return
        element = delta.new_element
        kind = element.WhichOneof("type")
        if kind == "component_instance":
            instance = element.component_instance
            if instance.component_name == CANVAS_COMPONENT:
                self.widgets.canvas_id = instance.id
                self.widgets.canvas_fragment = delta.fragment_id
                self.widgets.canvas_state = json.loads(instance.json_args).get("state", {})
        elif kind == "button_group":
            group = element.button_group
            options = [option.content for option in group.options]
            self.widgets.pills[group.id] = (delta.fragment_id, options)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def one_load(url: str, server: psutil.Process, count: int, edits: int, pace: float) -> dict:
    """N sessions: all load the page at once, then each edits `edits` times, one every `pace`
    seconds (started at random offsets within the first pace)."""
    sessions = [Session(url) for _ in range(count)]
    cpu = server.cpu_times()
    loads = await asyncio.gather(*(s.load() for s in sessions))
    after_loads = server.cpu_times()
    answers: list[float] = []

    async def edit_loop(session: Session) -> None:
        await asyncio.sleep(random.uniform(0, pace))
        for number in range(edits):
            tick = time.perf_counter()
            step = session.add_a_layer if number % 2 else session.move_a_node
            answers.append(await step())
            await asyncio.sleep(max(0.0, pace - (time.perf_counter() - tick)))

    await asyncio.gather(*(edit_loop(s) for s in sessions))
    after_edits = server.cpu_times()
    await asyncio.gather(*(s.close() for s in sessions))
    load_cpu = (after_loads.user + after_loads.system) - (cpu.user + cpu.system)
    edit_cpu = (after_edits.user + after_edits.system) - (after_loads.user + after_loads.system)
    return {
        "sessions": count,
        "load_p50": statistics.median(loads),
        "load_p95": percentile(loads, 0.95),
        "edit_p50": statistics.median(answers),
        "edit_p95": percentile(answers, 0.95),
        "cpu_per_load_ms": 1000 * load_cpu / count,
        "cpu_per_edit_ms": 1000 * edit_cpu / max(1, len(answers)),
        "edits": len(answers),
        "load_average": os.getloadavg()[0],
    }


def start_server() -> tuple[subprocess.Popen[bytes], str, Path]:
    home = Path(tempfile.mkdtemp(prefix="netbuilder-serve-load-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", "--server.address", "127.0.0.1"],
        cwd=ROOT,
        env=os.environ | {"NETBUILDER_HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return server, url, home
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the app did not start") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--edits", type=int, default=5, help="edits per session (default 5)")
    parser.add_argument("--pace", type=float, default=5.0, help="seconds between edits")
    parser.add_argument("--url", help="a running server (its pid with --pid); else one is started")
    parser.add_argument("--pid", type=int, help="the running server's process id")
    args = parser.parse_args()
    started = None
    if args.url:
        url, server = args.url, psutil.Process(args.pid)
    else:
        started, url, home = start_server()
        server = psutil.Process(started.pid)
    try:
        asyncio.run(Session(url).load())  # the first run imports everything: not measured
        print(f"server pid {server.pid} on {os.cpu_count()} CPUs; pace {args.pace} s")
        print("sessions  load p50  load p95  edit p50  edit p95  CPU/load  CPU/edit  load avg")
        for count in args.sessions:
            row = asyncio.run(one_load(url, server, count, args.edits, args.pace))
            print(
                f"{row['sessions']:>8}  {row['load_p50'] * 1000:6.0f}ms  {row['load_p95'] * 1000:6.0f}ms"
                f"  {row['edit_p50'] * 1000:6.0f}ms  {row['edit_p95'] * 1000:6.0f}ms"
                f"  {row['cpu_per_load_ms']:6.1f}ms  {row['cpu_per_edit_ms']:6.1f}ms"
                f"  {row['load_average']:6.2f}"
            )
    finally:
        if started is not None:
            started.terminate()
            started.wait(timeout=30)
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
