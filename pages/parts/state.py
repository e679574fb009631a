"""Per-browser-session state shared by the pages: the workspace, its graph, undo/redo and runs.

A workspace is one person's work. Its id lives in the URL (`?w=...`), so a reload finds the same
workspace again, while a second tab without that id is a second, independent user. The graph is
written to autosave/<workspace>.json on every change and read back when a session starts, so
neither a reload nor a server restart loses work. Everything else (undo history, selection) lives
in `st.session_state`, which Streamlit keeps per browser session.

Set NETBUILDER_HOME to keep autosave/ and runs/ somewhere other than the repository (tests do).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import streamlit as st

import i18n
import pages
from builder import edit
from i18n import Message, msg
from builder.graph import (
    Graph,
    GraphFormatError,
    dump_graph,
    load_graph,
    parse_graph,
    read_file_bounded,
)
from builder.layout import needs_layout, with_layout
from compiler.analysis import Analysis, analyse
from compiler.gan import DISCRIMINATOR, check_pair, discriminator_graph, with_discriminator
from runtime import store

ROOT = Path(__file__).resolve().parents[2]  # the checkout: pages/parts/state.py is two below
TEMPLATES_DIR = ROOT / "builder" / "templates"
DEFAULT_TEMPLATE = "resnet"
QUERY_KEY = "w"
LANG_KEY = "lang"
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{22,64}")
_LEGACY_ID_PATTERN = re.compile(r"[0-9a-f]{16}")

_WORKSPACE = "nb_workspace"
_HISTORY = "nb_history"
_VERSION = "nb_version"
_ANALYSIS = "nb_analysis"
_SELECTED = "nb_selected"
_SELECTED_EDGE = "nb_selected_edge"
_NOTICE = "nb_notice"
_LANGUAGE = "nb_language"
_PART = "nb_part"  # which graph of a GAN pair the Build page edits
TRAIN_SETTINGS = "train-config"  # the Train page's last hyperparameters (TrainConfig fields)
_JUDGE = "nb_judge"  # (graph version, (the pair's discriminator, its analysis))
_DUMPS = "nb_history_dumps"  # id(graph) -> (graph, its file text): each step is dumped once
HISTORY_BYTES = 1_000_000  # the undo and redo steps kept across a reload, nearest first

GENERATOR = "generator"  # also a plain graph's one and only part
PARTS = (GENERATOR, DISCRIMINATOR)


def home() -> Path:
    """Where autosave/ and runs/ live: $NETBUILDER_HOME, else the repository root."""
    return Path(os.environ.get("NETBUILDER_HOME") or ROOT)


def workspace_id() -> str:
    """This session's workspace id, taken from `?w=` or made up, and kept in the URL.

    The id is the only key to a workspace: whoever has the link can open its graph and read,
    stop, resume and delete its runs. So ids are 128 random bits (`secrets`); an id a person
    typed or shortened is refused with a sentence and a new workspace begins. An id of the
    app's earlier 16 hex digits is still taken where that workspace exists, so no one loses
    work. Only letters, digits, '-' and '_' ever name a file.
    """
    wid = st.session_state.get(_WORKSPACE)
    if wid is None:
        given = st.query_params.get(QUERY_KEY, "")
        wid = given if accepted_workspace_id(given) else new_workspace_id()
        if given and wid != given:
            notify(
                msg(
                    "The workspace id in the link is too short or not one NetBuilder made, so it"
                    " could be guessed; this is a new workspace. Keep its link to come back."
                )
            )
        st.session_state[_WORKSPACE] = wid
    if st.query_params.get(QUERY_KEY) != wid:
        st.query_params[QUERY_KEY] = wid
    return wid


def new_workspace_id() -> str:
    return secrets.token_hex(16)  # 128 bits


def accepted_workspace_id(given: str) -> bool:
    """An id as NetBuilder makes them (22 to 64 letters, digits, '-', '_': 128 bits or more
    when random), or one of the earlier 16-hex-digit ids whose workspace exists."""
    if _ID_PATTERN.fullmatch(given):
        return True
    if _LEGACY_ID_PATTERN.fullmatch(given):
        return (home() / "autosave" / f"{given}.json").is_file() or (
            home() / "runs" / given
        ).is_dir()
    return False


def runs_dir() -> Path:
    """runs/<workspace id>: each workspace sees only its own training runs."""
    path = home() / "runs" / workspace_id()
    path.mkdir(parents=True, exist_ok=True)
    return path


def autosave_path() -> Path:
    return home() / "autosave" / f"{workspace_id()}.json"


@functools.cache
def template_names() -> tuple[str, ...]:
    """The bundled templates (builder/templates/*.json), by file stem: read once per server
    (they ship with the code), not on every run of the page (a directory listing per edit was
    about 5% of a class's server CPU)."""
    return tuple(sorted(path.stem for path in TEMPLATES_DIR.glob("*.json")))


def load_template(name: str) -> Graph:
    """A bundled template, laid out when its file has no positions."""
    if name not in template_names():
        raise GraphFormatError(f"no template named {name!r}")
    graph = load_graph((TEMPLATES_DIR / f"{name}.json").read_text())
    return with_layout(graph) if needs_layout(graph) else graph


def _history() -> edit.History:
    history = st.session_state.get(_HISTORY)
    if history is None:
        history = _restore_history(_restore())
        st.session_state[_HISTORY] = history
        st.session_state[_VERSION] = 0
    return history


def history_path() -> Path:
    return home() / "autosave" / f"{workspace_id()}.history.json"


def _restore_history(present: Graph) -> edit.History:
    """The undo and redo steps saved beside the autosave, where they still lead to the graph
    restored (a file from another version of the graph is ignored: its steps would not fit)."""
    try:
        saved = json.loads(read_file_bounded(history_path(), HISTORY_BYTES * 4))
        if not isinstance(saved, dict) or saved.get("present") != json.loads(_file_text(present)):
            return edit.History(present)
        past = tuple(parse_graph(g) for g in saved.get("past", []))
        future = tuple(parse_graph(g) for g in saved.get("future", []))
    except (OSError, ValueError, RecursionError):  # none yet, or unreadable: no steps
        return edit.History(present)
    return edit.History(present, past, future)


def _save_history(history: edit.History) -> None:
    """The undo and redo steps nearest the present, as many as fit in HISTORY_BYTES, so a
    reload (or a server restart) can still undo. Each graph's file text is made once (kept while
    the graph is in the history, and written as the autosave too), so an edit dumps one graph."""
    budget = HISTORY_BYTES
    kept: dict[str, list[str]] = {"past": [], "future": []}
    for side, steps in (("past", reversed(history.past)), ("future", history.future)):
        for graph in steps:
            budget -= len(_file_text(graph))
            if budget < 0:
                break
            kept[side].append(_file_text(graph))
    kept["past"].reverse()
    _write_atomic(
        history_path(),
        f'{{"present":{_file_text(history.present)},'
        f'"past":[{",".join(kept["past"])}],"future":[{",".join(kept["future"])}]}}',
    )


def _file_text(graph: Graph) -> str:
    """dump_graph(graph), made once per graph object while the history holds it."""
    dumps = st.session_state.setdefault(_DUMPS, {})
    if id(graph) not in dumps:  # the graph is kept with its text, so its id stays its own
        history = st.session_state.get(_HISTORY)
        if history is not None:  # forget the texts of graphs the history no longer holds
            alive = {id(g) for g in (history.present, *history.past, *history.future)}
            for key in [key for key in dumps if key not in alive]:
                del dumps[key]
        dumps[id(graph)] = (graph, dump_graph(graph))
    return dumps[id(graph)][1]


def _write_atomic(path: Path, text: str) -> None:
    """Readers (a reload, another server on the same folder) see the old or the new file,
    never half of one: runtime.store's atomic write, without forcing it to disk per edit."""
    store.write_atomic(path, lambda file: file.write(text.encode()), durable=False)


def _restore() -> Graph:
    """The autosaved graph of this workspace, else the default template.

    An autosave that no longer reads as a graph is kept beside it as .bad, never deleted.
    """
    path = autosave_path()
    if path.is_file():
        try:
            graph = load_graph(path.read_text())
            return with_layout(graph) if needs_layout(graph) else graph
        except (GraphFormatError, OSError) as exc:
            path.replace(path.with_suffix(".bad.json"))
            notify(
                msg(
                    "The autosaved graph could not be read ({reason}); it was kept as {file}.",
                    reason=str(exc),
                    file=f"{path.stem}.bad.json",
                )
            )
    return load_template(DEFAULT_TEMPLATE)


def _changed(history: edit.History) -> None:
    before = current_graph()  # edges are selected by index (in either graph of a pair)
    if (history.present.edges, history.present.model_extra) != (before.edges, before.model_extra):
        st.session_state[_SELECTED_EDGE] = None
    st.session_state[_HISTORY] = history
    st.session_state[_VERSION] = graph_version() + 1
    _write_atomic(autosave_path(), _file_text(history.present))
    _save_history(history)


def current_graph() -> Graph:
    """The graph being built in this session (restored from the autosave on first use)."""
    return _history().present


def graph_version() -> int:
    """A counter that grows with every change of the graph: a cheap cache key."""
    _history()
    return st.session_state[_VERSION]


def set_graph(graph: Graph, record_undo: bool = True) -> None:
    """Make `graph` current and autosave it; record_undo=False for moves that need no undo step.

    Setting the graph that is already current changes nothing (no undo step, same version).
    """
    history = _history()
    if graph == history.present:
        return
    _changed(edit.record(history, graph) if record_undo else edit.replace(history, graph))


def can_undo() -> bool:
    return _history().can_undo


def can_redo() -> bool:
    return _history().can_redo


def undo() -> None:
    """Go back one edit (nothing happens when there is none)."""
    if can_undo():
        _changed(edit.undo(_history()))


def redo() -> None:
    """Redo the edit last undone (nothing happens when there is none)."""
    if can_redo():
        _changed(edit.redo(_history()))


def current_analysis() -> Analysis:
    """analyse(current_graph()), computed once per graph version."""
    version = graph_version()
    cached = st.session_state.get(_ANALYSIS)
    if cached is None or cached[0] != version:
        graph = current_graph()
        if cached is not None and moved_only(cached[1].graph, graph):
            # a node dragged on the canvas changes no shape: the analysis stands, on the new graph
            analysis = dataclasses.replace(
                cached[1], graph=graph, nodes={node.id: node for node in graph.nodes}
            )
        else:
            analysis = analyse(graph)
        cached = (version, analysis)
        st.session_state[_ANALYSIS] = cached
    return cached[1]


def moved_only(before: Graph, after: Graph) -> bool:
    """Whether two graphs differ in their nodes' positions at most."""
    return (
        before.edges == after.edges
        and before.name == after.name
        and before.model_extra == after.model_extra
        and [(n.id, n.type, n.params) for n in before.nodes]
        == [(n.id, n.type, n.params) for n in after.nodes]
    )


# ---------------------------------------------------------------------------------------------
# The part of a GAN pair the Build page edits: the generator (a plain graph's only part) or the
# discriminator. Undo, autosave, Save and the other pages work on the whole pair.


def is_pair() -> bool:
    return DISCRIMINATOR in (current_graph().model_extra or {})


def editing() -> str:
    """GENERATOR or DISCRIMINATOR (only for a pair whose discriminator reads as a graph)."""
    if st.session_state.get(_PART) == DISCRIMINATOR and is_pair():
        try:
            _edited()
            return DISCRIMINATOR
        except GraphFormatError:
            pass
    return GENERATOR


def edit_part(part: str) -> None:
    """Show and edit the other graph of the pair (nothing selected in it yet)."""
    st.session_state[_PART] = part if part in PARTS else GENERATOR
    select(None)


def _edited() -> tuple[Graph, Analysis]:
    """The pair's discriminator and its analysis, once per graph version."""
    cached = st.session_state.get(_JUDGE)
    if cached is None or cached[0] != graph_version():
        judge = discriminator_graph(current_graph())
        assert judge is not None
        if needs_layout(judge):  # kept when it is next edited (or moved) on the canvas
            judge = with_layout(judge)
        cached = (graph_version(), (judge, analyse(judge)))
        st.session_state[_JUDGE] = cached
    return cached[1]


def pair_problems() -> list[Message]:
    """Why the pair's two graphs cannot play together, as far as the graphs alone tell (the
    data's sample shape is the Train page's to check)."""
    try:
        judge = _edited()[1]
    except GraphFormatError as exc:
        return [exc.text if isinstance(getattr(exc, "text", None), Message) else msg(str(exc))]
    generator = current_analysis()
    fake = next((n.id for n in generator.graph.nodes if n.type == "Output"), None)
    shape = generator.infos[fake].shape if fake is not None else None
    return check_pair(generator, judge, tuple(shape or ()))


def edited_graph() -> Graph:
    """The graph the Build page shows: the discriminator of a pair while it is chosen, else the
    graph itself (whose `discriminator`, if any, edits keep untouched)."""
    return _edited()[0] if editing() == DISCRIMINATOR else current_graph()


def edited_analysis() -> Analysis:
    return _edited()[1] if editing() == DISCRIMINATOR else current_analysis()


def set_edited_graph(graph: Graph, record_undo: bool = True) -> None:
    """set_graph for the graph the Build page shows (put back into its pair)."""
    if editing() == DISCRIMINATOR:
        graph = with_discriminator(current_graph(), graph)
    set_graph(graph, record_undo)


def selected_node() -> str | None:
    """The node selected on the canvas, if it still exists."""
    node_id = st.session_state.get(_SELECTED)
    if node_id is not None and node_id not in {node.id for node in edited_graph().nodes}:
        return None
    return node_id


def select(node_id: str | None) -> None:
    """Select a node (None: nothing); a node and an edge are never selected together."""
    st.session_state[_SELECTED] = node_id
    st.session_state[_SELECTED_EDGE] = None


def selected_edge() -> int | None:
    """The index in current_graph().edges of the edge selected on the canvas, if any."""
    index = st.session_state.get(_SELECTED_EDGE)
    return index if isinstance(index, int) and index < len(edited_graph().edges) else None


def select_edge(index: int | None) -> None:
    st.session_state[_SELECTED] = None
    st.session_state[_SELECTED_EDGE] = index


def notify(message: Message | str) -> None:
    """A message for the next run of the page (a restore problem, an applied fix...)."""
    st.session_state[_NOTICE] = message


def take_notice() -> Message | str | None:
    """The pending message, once."""
    return st.session_state.pop(_NOTICE, None)


def _language_path() -> Path:
    return home() / "autosave" / f"{workspace_id()}.lang"


def _browser_language() -> str | None:
    """The browser's preferred language, where this Streamlit exposes it."""
    try:
        return getattr(st.context, "locale", None)
    except Exception:  # outside a browser session (AppTest, a bare script run)
        return None


def language() -> str:
    """The reader's language: ?lang= in the URL, else this workspace's last choice, else the
    browser's language, else English. Read once per session, then kept in the session."""
    lang = st.session_state.get(_LANGUAGE)
    if lang is None:
        given = st.query_params.get(LANG_KEY)
        remembered = _language_path()
        if given in i18n.LANGUAGES:
            lang = given
        elif remembered.is_file():
            lang = i18n.normalise(remembered.read_text(encoding="utf-8").strip())
        else:
            lang = i18n.normalise(_browser_language())
        st.session_state[_LANGUAGE] = lang
    if st.query_params.get(LANG_KEY) != lang:
        st.query_params[LANG_KEY] = lang
    return lang


def set_language(lang: str) -> None:
    """Switch this session's language and remember it for the workspace."""
    lang = i18n.normalise(lang)
    st.session_state[_LANGUAGE] = lang
    st.query_params[LANG_KEY] = lang
    path = _language_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lang, encoding="utf-8")


def session_language() -> str:
    """The language for i18n's resolver: the session's choice, English outside a session."""
    try:
        return st.session_state.get(_LANGUAGE) or i18n.DEFAULT_LANGUAGE
    except Exception:  # no script run context (a worker thread, a test calling a page helper)
        return i18n.DEFAULT_LANGUAGE


def chosen_settings() -> dict[str, Any]:
    """The hyperparameters last set on the Train page; the export's train.py takes them as its
    defaults."""
    return dict(st.session_state.get(TRAIN_SETTINGS, {}))


def through_the_app() -> None:
    """Every page's first line: a page that Streamlit's older multipage mode ran without app.py
    (the first link to it on a fresh server) runs again, through app.py's navigation."""
    if pages.OPENED_WITHOUT_APP:
        pages.OPENED_WITHOUT_APP = False
        st.rerun()
