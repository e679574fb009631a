"""The runs table with each run's disk usage, and Delete with a confirmation.

The Train page calls `render(runs_dir)`; every string here is English marked for translation,
and each run's message is rendered in the reader's language from the data status.json keeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from compiler.memory import format_bytes
from i18n import _
from pages.parts.live_graph import markdown_literal
from runtime.launcher import warm_up
from runtime.runs import (
    RunError,
    RunInfo,
    delete_run,
    list_runs,
    status_label,
    status_text,
)

_CONFIRM = "runs-panel-confirm-delete"
_NOTICE = "runs-panel-notice"


def run_label(run: RunInfo) -> str:
    return f"{run.name} #{run.id[-6:]}"


def shown_epoch(info: RunInfo) -> int:
    """The epoch a run is in, counted from 1 as its messages count it ("stopped at step 29
    (epoch 1)"): the epochs done, plus the one under way unless all are done."""
    if info.status == "completed" or info.epoch >= info.epochs:
        return info.epoch
    return info.epoch + 1


def table_rows(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """One row per run, newest first, with the columns named in the reader's language."""
    return [
        {
            _("Run"): run_label(run),
            _("Status"): status_label(run.status),
            _("Dataset"): run.dataset,
            _("Epoch"): f"{shown_epoch(run)}/{run.epochs}",
            _("Disk"): format_bytes(run.disk_bytes),
            _("Started"): time.strftime("%Y-%m-%d %H:%M", time.localtime(run.created)),
            _("Message"): status_text(run),
        }
        for run in runs
    ]


def render(runs_dir: Path) -> None:
    """The runs of this workspace with their disk usage; a chosen run can be deleted."""
    warm_up()  # the warm trainer starts importing torch now, so the first Start is quick
    runs = list_runs(runs_dir)
    notice = st.session_state.pop(_NOTICE, None)
    if notice:
        st.success(notice)
    if not runs:
        st.caption(_("No runs yet."))
        return
    total = sum(run.disk_bytes for run in runs)
    st.caption(_("{count} runs take {size} on disk.", count=len(runs), size=format_bytes(total)))
    message = _("Message")
    st.dataframe(  # the message is what is cut first: give it the room
        table_rows(runs),
        hide_index=True,
        width="stretch",
        column_config={message: st.column_config.TextColumn(width="large")},
    )
    by_id = {run.id: run for run in runs}
    chosen = st.selectbox(
        _("Run to delete"),
        list(by_id),
        format_func=lambda run_id: run_label(by_id[run_id]),
        key="runs-panel-choice",
    )
    if st.session_state.get(_CONFIRM) != chosen:
        if st.button(_("Delete run…"), key="runs-panel-delete"):
            st.session_state[_CONFIRM] = chosen
            st.rerun()
        return
    _confirm_delete(runs_dir, by_id[chosen])


def _confirm_delete(runs_dir: Path, run: RunInfo) -> None:
    """The second step: say what goes (and that a running trainer is stopped), then do it."""
    st.warning(
        _(
            "Delete run {run} and its folder ({size})? Its metrics and checkpoints go too;"
            " a running trainer is stopped first. This cannot be undone.",
            run=markdown_literal(run_label(run)),
            size=format_bytes(run.disk_bytes),
        )
    )
    yes, cancel = st.columns(2)
    if yes.button(_("Yes, delete it"), type="primary", key="runs-panel-yes"):
        st.session_state.pop(_CONFIRM, None)
        try:
            delete_run(runs_dir, run.id)
        except (RunError, OSError) as exc:
            reason = exc.detail.render() if isinstance(exc, RunError) else str(exc)
            st.error(_("Could not delete the run: {reason}", reason=markdown_literal(reason)))
            return
        st.session_state[_NOTICE] = _("Deleted run {run}.", run=markdown_literal(run_label(run)))
        st.rerun()
    if cancel.button(_("Cancel"), key="runs-panel-cancel"):
        st.session_state.pop(_CONFIRM, None)
        st.rerun()
