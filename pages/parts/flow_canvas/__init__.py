"""NetBuilder's own canvas component: React Flow, built from frontend/ into build/ (committed).

Python sends the graph's compact state; the browser sends back a queue of events (select,
move, connect, delete), never whole states, so nothing echoes and an edit is drawn at once in
the browser before Python answers. The event format is read by pages/parts/canvas.py. To rebuild the
frontend after changing it: `make canvas` (npm ci from the lockfile, then vite build).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit.components.v1 as components

BUILD = Path(__file__).resolve().parent / "build"
# The iframe's title (the component's module and name): how tests and benchmarks find it.
FRAME_TITLE = "pages.parts.flow_canvas.nb_canvas"

_component = components.declare_component("nb_canvas", path=str(BUILD))


def graph_canvas(state: dict[str, Any], key: str, name: str) -> Any:
    """Draw the canvas; returns the last value it sent ({"events": [...]}), or None. `name` is
    what a screen reader says for the frame (its aria-label; the title stays FRAME_TITLE)."""
    return _component(state={**state, "frame_name": name}, key=key, default=None)
