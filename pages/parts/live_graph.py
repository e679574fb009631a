"""The graph comes alive while it trains: a read-only canvas, each node coloured by its gradient.

Alarms sit on the node that has the problem: a vanishing gradient (below 1e-7), an exploding one
(above 1e3 or not finite), a dead ReLU (over 90% zeros) and the first layer whose output stopped
being finite. The health rules are pure functions; `render` only draws them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import streamlit as st
from plotly.colors import sample_colorscale, unlabel_rgb

from builder.graph import Graph
from builder.layout import auto_layout
from i18n import _
from pages.parts.canvas import edge_face, node_kind
from pages.parts.charts import RunSeries
from pages.parts.flow_canvas import graph_canvas

VANISHING = 1e-7
EXPLODING = 1e3
DEAD_FRACTION = 0.9
LOG_RANGE = (-8.0, 3.0)
NO_GRADIENT = "#f3f4f6"
ALARM = "#dc2626"
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


def node_face(
    node_id: str, layer_type: str, position: tuple[float, float], health: NodeHealth | None
) -> dict[str, Any]:
    """The node as the canvas draws it (plain text: React escapes it): type and id, gradient
    norm or dead fraction, alarms; filled with its gradient colour, red-bordered on an alarm."""
    detail = ""
    if health is not None and health.grad_norm is not None:
        detail = f"‖grad‖ {health.grad_norm:.1e}"
    elif health is not None and health.dead_fraction is not None:
        detail = _("{fraction:.0%} zeros", fraction=health.dead_fraction)
    fill = norm_colour(health.grad_norm if health else None)
    alarms = health.alarms if health else ()
    return {
        "id": node_id,
        "x": position[0],
        "y": position[1],
        "kind": node_kind(layer_type),
        "type": layer_type,
        "name": node_id,
        "params": detail,
        "shape": "",
        "count": "",
        "note": " · ".join(alarms),
        "note_severity": "alarm" if alarms else "",
        "status": "error" if alarms else "ok",
        "selected": False,
        "fill": fill,
        "ink": _text_colour(fill),
    }


def markdown_literal(text: str) -> str:
    """User text for st.markdown and friends: every markup character escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


def compact_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """The Build page's auto-layout, rows and columns drawn closer: the live nodes are small, and
    a whole model has to fit beside the charts at a readable size."""
    return {node: (x * COLUMN_SCALE, y * ROW_SCALE) for node, (x, y) in auto_layout(graph).items()}


def live_state(graph: Graph, report: dict[str, NodeHealth]) -> dict[str, Any]:
    """A locked canvas (read_only): nothing can be dragged, connected, selected or deleted."""
    positions = compact_positions(graph)
    nodes = [
        node_face(node.id, node.type, positions[node.id], report.get(node.id))
        for node in graph.nodes
    ]
    edges = [edge_face(index, edge) for index, edge in enumerate(graph.edges)]
    return {"nodes": nodes, "edges": edges, "read_only": True}


def canvas_height(graph: Graph) -> int:
    """Tall enough that a chain of up to a dozen layers is drawn at nearly full size."""
    rows = len({y for _, y in auto_layout(graph).values()})
    return min(max(rows * 62 + 60, MIN_HEIGHT), MAX_HEIGHT)


def render(graph: Graph, series: RunSeries, key: str, coloured: bool = True) -> None:
    """Draw the live canvas, its alarms and its legend; `coloured=False` for a run that records
    no gradient norms (a GAN pair): the plain graph, without the legend of colours.

    The canvas keeps the view the person chose: it fits the graph once, as it mounts, and a new
    report only recolours the nodes (its version changes when a report changed them).
    """
    report = node_health(series) if coloured else {}
    state = live_state(graph, report)
    signature = json.dumps([state["nodes"], state["edges"]], sort_keys=True)
    graph_canvas(
        {
            **state,
            "version": hashlib.sha1(signature.encode()).hexdigest()[:16],
            "ack": 0,
            "fit": 0,
            "height": canvas_height(graph),
            "min_zoom": 0.2,
            "node_width": NODE_WIDTH,
        },
        key=key,
        name=_("The network during training (read-only), each layer coloured by its gradients"),
    )
    for node, health in report.items():
        for alarm in health.alarms:
            st.error(f"{markdown_literal(node)}: {alarm}", icon=":material/warning:")
    if not coloured:
        return
    st.caption(
        _(
            "Each layer is coloured by its gradient norm on a log scale: dark purple for tiny"
            " (vanishing below 1e-7), yellow for large (exploding above 1e3). Grey layers have"
            " no parameters; a red border is an alarm."
        )
    )
