"""The graph comes alive while it trains: a read-only canvas, each node coloured by its gradient.

Alarms sit on the node that has the problem: a vanishing gradient (below 1e-7), an exploding one
(above 1e3 or not finite), a dead ReLU (over 90% zeros) and the first layer whose output stopped
being finite. The health rules are pure functions; `render` only draws them.
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass

import streamlit as st
from plotly.colors import sample_colorscale, unlabel_rgb
from streamlit_flow import streamlit_flow
from streamlit_flow.elements import StreamlitFlowEdge, StreamlitFlowNode
from streamlit_flow.layouts import ManualLayout
from streamlit_flow.state import StreamlitFlowState

from builder.graph import Graph
from builder.layout import auto_layout
from i18n import _
from pages.charts import RunSeries

VANISHING = 1e-7
EXPLODING = 1e3
DEAD_FRACTION = 0.9
LOG_RANGE = (-8.0, 3.0)
NO_GRADIENT = "#f3f4f6"
ALARM = "#dc2626"
ALARM_CHIP = (
    "margin-top:4px;padding:1px 5px;border-radius:4px;background:#fff;color:#b91c1c;font-size:11px"
)
NODE_WIDTH = 170
MIN_HEIGHT = 360
MAX_HEIGHT = 900
COLUMN_SCALE = 0.85
ROW_SCALE = 0.6


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
            alarms.append(_("dead ReLU: {fraction:.0%} zeros", fraction=fraction))
        if node == first_nonfinite:
            alarms.append(_("first non-finite output"))
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
        shown = _("not finite") if norm is None or not math.isfinite(norm) else f"{norm:.1e}"
        return [_("exploding gradient ({norm})", norm=shown)]
    if norm < VANISHING:
        return [_("vanishing gradient ({norm:.1e} < 1e-7)", norm=norm)]
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
    red, green, blue = (round(v) for v in unlabel_rgb(rgb))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _text_colour(background: str) -> str:
    red, green, blue = (int(background[i : i + 2], 16) for i in (1, 3, 5))
    return "#111827" if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else "#ffffff"


def node_content(node_id: str, layer_type: str, health: NodeHealth | None) -> str:
    """The node's face (HTML, as on the Build canvas): type and id, gradient norm, alarms.

    The canvas renders HTML, so every piece of user text is escaped.
    """
    rows = [f"<b>{layer_type}</b> <span style='opacity:.75'>{html.escape(node_id)}</span>"]
    if health is not None and health.grad_norm is not None:
        rows.append(f"<span style='font-size:11px'>‖grad‖ {health.grad_norm:.1e}</span>")
    elif health is not None and health.dead_fraction is not None:
        zeros = _("{fraction:.0%} zeros", fraction=health.dead_fraction)
        rows.append(f"<span style='font-size:11px'>{zeros}</span>")
    rows += [
        f"<div style='{ALARM_CHIP}'>{html.escape(alarm)}</div>"
        for alarm in (health.alarms if health else ())
    ]
    return (
        "<div style='margin:0;text-align:left;line-height:1.35'>"
        + "<br>".join(rows[:2])
        + "".join(rows[2:])
        + "</div>"
    )


def markdown_literal(text: str) -> str:
    """User text for st.markdown and friends: every markup character escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def node_style(health: NodeHealth | None) -> dict[str, str]:
    """A fresh dict per node (streamlit-flow shares a default one between nodes)."""
    background = norm_colour(health.grad_norm if health else None)
    alarmed = bool(health and health.alarms)
    return {
        "background": background,
        "color": _text_colour(background),
        "border": f"3px solid {ALARM}" if alarmed else "1px solid #cbd5e1",
        "borderRadius": "8px",
        "fontSize": "12px",
        "padding": "5px 9px",
        "width": f"{NODE_WIDTH}px",
        "height": "auto",
    }


def compact_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """The Build page's auto-layout, rows and columns drawn closer: the live nodes are small, and
    a whole model has to fit beside the charts at a readable size."""
    return {node: (x * COLUMN_SCALE, y * ROW_SCALE) for node, (x, y) in auto_layout(graph).items()}


def flow_state(graph: Graph, report: dict[str, NodeHealth], timestamp: int) -> StreamlitFlowState:
    """A locked canvas: nothing can be dragged, connected, selected or deleted."""
    positions = compact_positions(graph)
    nodes = [
        StreamlitFlowNode(
            id=node.id,
            pos=positions[node.id],
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
            id=f"{index}:{edge.source}->{edge.target}",
            source=edge.source,
            target=edge.target,
            marker_end={"type": "arrowclosed"},
            style={"stroke": "#94a3b8"},
        )
        for index, edge in enumerate(graph.edges)
    ]
    return StreamlitFlowState(nodes, edges, timestamp=timestamp)


def canvas_height(graph: Graph) -> int:
    """Tall enough that a chain of up to a dozen layers is drawn at nearly full size."""
    rows = len({y for _, y in auto_layout(graph).values()})
    return min(max(rows * 62 + 60, MIN_HEIGHT), MAX_HEIGHT)


def render(graph: Graph, series: RunSeries, key: str) -> None:
    """Draw the live canvas, its alarms and its legend.

    The component is sent new nodes only when a report changed them, because every update it
    takes makes it send a value back, which reruns the fragment that draws it.
    """
    report = node_health(series)
    signature = json.dumps({n: [h.grad_norm, h.dead_fraction, h.alarms] for n, h in report.items()})
    remembered = st.session_state.get(f"{key}-signature")
    if remembered is None or remembered[0] != signature:
        remembered = (signature, int(time.time() * 1000))
        st.session_state[f"{key}-signature"] = remembered
    streamlit_flow(
        key=key,
        state=flow_state(graph, report, remembered[1]),
        height=canvas_height(graph),
        fit_view=True,
        show_controls=True,
        pan_on_drag=True,
        allow_zoom=True,
        min_zoom=0.2,
        layout=ManualLayout(),
        hide_watermark=True,
        style={"border": "1px solid #e2e8f0", "borderRadius": "10px", "background": "#fcfcfd"},
    )
    for node, health in report.items():
        for alarm in health.alarms:
            st.error(f"{markdown_literal(node)}: {alarm}", icon=":material/warning:")
    st.caption(
        _(
            "Each layer is coloured by its gradient norm on a log scale: dark purple for tiny"
            " (vanishing below 1e-7), yellow for large (exploding above 1e3). Grey layers have"
            " no parameters; a red border is an alarm."
        )
    )
