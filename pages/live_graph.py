"""The graph comes alive while it trains: a read-only canvas, each node coloured by its gradient norm.

Alarms sit on the node that has the problem: a vanishing gradient (below 1e-7), an exploding one
(above 1e3 or not finite), a dead ReLU (over 90% zeros) and the first layer whose output stopped
being finite. The health rules are pure functions; `render` only draws them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import streamlit as st
from plotly.colors import sample_colorscale
from streamlit_flow import streamlit_flow
from streamlit_flow.elements import StreamlitFlowEdge, StreamlitFlowNode
from streamlit_flow.layouts import ManualLayout
from streamlit_flow.state import StreamlitFlowState

from builder.graph import Graph
from builder.layout import needs_layout, with_layout
from pages.charts import RunSeries

VANISHING = 1e-7
EXPLODING = 1e3
DEAD_FRACTION = 0.9
LOG_RANGE = (-8.0, 3.0)
NO_GRADIENT = "#f3f4f6"
ALARM = "#dc2626"


@dataclass(frozen=True)
class NodeHealth:
    """What the latest reports say about one node."""

    grad_norm: float | None = None
    dead_fraction: float | None = None
    alarms: tuple[str, ...] = ()


def node_health(series: RunSeries) -> dict[str, NodeHealth]:
    """Each reported node's latest gradient norm and dead fraction, with the alarms they raise."""
    norms = series.grad_norms[-1]["norms"] if series.grad_norms else {}
    dead = series.health[-1].get("dead_fraction", {}) if series.health else {}
    first_nonfinite = next(
        (r["nonfinite_node"] for r in series.health if r.get("nonfinite_node")), None
    )
    report: dict[str, NodeHealth] = {}
    for node in dict.fromkeys([*norms, *dead, *([first_nonfinite] if first_nonfinite else [])]):
        norm = _number(norms.get(node))
        fraction = _number(dead.get(node))
        alarms = _gradient_alarms(norm, node in norms)
        if fraction is not None and fraction > DEAD_FRACTION:
            alarms.append(f"dead ReLU: {fraction:.0%} zeros")
        if node == first_nonfinite:
            alarms.append("first non-finite output")
        report[node] = NodeHealth(norm, fraction, tuple(alarms))
    return report


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _gradient_alarms(norm: float | None, reported: bool) -> list[str]:
    if not reported:
        return []
    if norm is None or not math.isfinite(norm) or norm > EXPLODING:
        shown = "not finite" if norm is None or not math.isfinite(norm) else f"{norm:.1e}"
        return [f"exploding gradient ({shown})"]
    if norm < VANISHING:
        return [f"vanishing gradient ({norm:.1e} < 1e-7)"]
    return []


def norm_colour(norm: float | None) -> str:
    """Viridis on log10 of the norm: dark purple = vanishing, yellow = large, grey = none."""
    if norm is None or not math.isfinite(norm):
        return NO_GRADIENT if norm is None else ALARM
    low, high = LOG_RANGE
    level = math.log10(norm) if norm > 0 else low
    position = min(max((level - low) / (high - low), 0.0), 1.0)
    return _hex(sample_colorscale("Viridis", [position])[0])


def _hex(rgb: str) -> str:
    red, green, blue = (round(float(v)) for v in rgb[rgb.index("(") + 1 : -1].split(","))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _text_colour(background: str) -> str:
    red, green, blue = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#111827" if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else "#ffffff"


def node_content(node_id: str, layer_type: str, health: NodeHealth | None) -> str:
    """The node's Markdown: id and type, its gradient norm, and one line per alarm."""
    lines = [f"**{_escape(node_id)}** · {layer_type}"]
    if health is not None and health.grad_norm is not None:
        lines.append(f"‖grad‖ {health.grad_norm:.2e}")
    if health is not None and health.dead_fraction is not None and not health.alarms:
        lines.append(f"{health.dead_fraction:.0%} zeros")
    lines += [f"⚠ {alarm}" for alarm in (health.alarms if health else ())]
    return "  \n".join(lines)


def _escape(text: str) -> str:
    """User text shown as literal Markdown, never as markup or HTML."""
    special = "\\`*_{}[]()#+-.!|<>&"
    return "".join(f"\\{c}" if c in special else c for c in text)


def node_style(health: NodeHealth | None) -> dict[str, str]:
    background = norm_colour(health.grad_norm if health else None)
    alarmed = bool(health and health.alarms)
    return {
        "background": background,
        "color": _text_colour(background),
        "border": f"3px solid {ALARM}" if alarmed else "1px solid #9ca3af",
        "borderRadius": "8px",
        "fontSize": "12px",
        "padding": "6px 10px",
        "width": "auto",
        "height": "auto",
    }


def flow_state(graph: Graph, report: dict[str, NodeHealth], timestamp: int) -> StreamlitFlowState:
    """A locked canvas: nothing can be dragged, connected, selected or deleted."""
    nodes = [
        StreamlitFlowNode(
            id=node.id,
            pos=tuple(node.position) if node.position else (0.0, 0.0),
            data={"content": node_content(node.id, node.type, report.get(node.id))},
            node_type=(
                "input"
                if node.type == "Input"
                else "output" if node.type == "Output" else "default"
            ),
            draggable=False,
            connectable=False,
            selectable=False,
            deletable=False,
            style=node_style(report.get(node.id)),
        )
        for node in graph.nodes
    ]
    edges = [
        StreamlitFlowEdge(
            id=f"{edge.source}->{edge.target}#{index}",
            source=edge.source,
            target=edge.target,
            marker_end={"type": "arrowclosed"},
            style={},
        )
        for index, edge in enumerate(graph.edges)
    ]
    return StreamlitFlowState(nodes, edges, timestamp=timestamp)


def render(graph: Graph, series: RunSeries, key: str) -> None:
    """Draw the live canvas. The component is sent new nodes only when a report changed them,
    because every update it receives makes it rerun the fragment that draws it."""
    report = node_health(series)
    signature = json.dumps({n: [h.grad_norm, h.dead_fraction, h.alarms] for n, h in report.items()})
    remembered = st.session_state.get(f"{key}-signature")
    if remembered is None or remembered[0] != signature:
        remembered = (signature, int(time.time() * 1000))
        st.session_state[f"{key}-signature"] = remembered
    if needs_layout(graph):
        graph = with_layout(graph)
    streamlit_flow(
        key=key,
        state=flow_state(graph, report, remembered[1]),
        height=420,
        fit_view=True,
        show_controls=False,
        pan_on_drag=True,
        allow_zoom=True,
        layout=ManualLayout(),
        hide_watermark=True,
    )
    alarms = [(node, alarm) for node, health in report.items() for alarm in health.alarms]
    for node, alarm in alarms:
        st.error(f"**{_escape(node)}**: {alarm}", icon="⚠️")
    st.caption(
        "Colour: the layer's gradient norm on a log scale, dark purple for tiny (vanishing below"
        " 1e-7) to yellow for large (exploding above 1e3); grey layers have no parameters."
    )
