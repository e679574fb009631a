"""Export page: the generated code to read and take home, a run's trained weights, and ONNX.

What the page offers comes from small functions (`weights_match`, `runs_with_weights`,
`onnx_file`) tested without a browser; `render` only lays them out. The ONNX export takes
seconds, so it runs when asked for, once per model and weights.
"""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path
from typing import Any

import streamlit as st
import torch
from pydantic import ValidationError

import i18n
from builder.graph import Graph, dump_graph
from i18n import _, msg
from compiler.analysis import Analysis
from export.bundle import bundle_files, bundle_zip
from compiler.codegen import identifier
from compiler.memory import format_bytes
from export.onnx_export import OnnxExportError, export_bytes, export_graph_onnx
from pages.parts import state
from pages.parts.live_graph import markdown_literal
from runtime import store
from runtime.runs import RunInfo, checkpoint_path, list_runs
from runtime.settings import TrainConfig
from runtime.sizing import model_budget, server_refusal

LANGUAGES = {".py": "python", ".json": "json", ".md": "markdown"}
MAX_WEIGHTS_BYTES = 500_000_000
CODE_HEIGHT = 560
_ONNX = "export-onnx"  # (model source hash, weights path) -> (file bytes, error)


def weights_match(run_path: Path, model_source: str) -> bool:
    """A run's weights load into today's model.py only if the run trained that very source."""
    try:
        return (run_path / "model.py").read_text() == model_source
    except OSError:
        return False


def runs_with_weights(runs_dir: Path) -> list[tuple[RunInfo, Path]]:
    """Runs that have a checkpoint on disk, newest first."""
    found = []
    for run in list_runs(runs_dir):
        path = checkpoint_path(runs_dir, run.id)
        if path is not None and path.is_file():
            found.append((run, path))
    return found


def default_run(found: list[tuple[RunInfo, Path]], model_source: str) -> int:
    """The picker's first choice: the newest run that trained the graph shown here, else the
    newest run (`found` is newest first)."""
    return next(
        (i for i, (run, _path) in enumerate(found) if weights_match(run.path, model_source)), 0
    )


def onnx_file(analysis: Analysis, weights_path: Path | None) -> tuple[bytes | None, str | None]:
    """The model as ONNX with a run's weights (or fresh ones); or why it cannot be made.

    The model is sized first: building it allocates every parameter in this server's memory,
    so it must fit both the operator's model budget and the memory available now."""
    refusal = server_refusal(export_bytes(analysis), msg("building this model for ONNX"))
    if refusal is not None:
        return None, refusal.render()
    try:
        weights = torch.load(weights_path, weights_only=True) if weights_path else None
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        return None, _(
            "the weights file could not be read ({error}: {detail})",
            error=type(exc).__name__,
            detail=str(exc),
        )
    try:
        return export_graph_onnx(analysis, weights, max_bytes=model_budget()), None
    except OnnxExportError as exc:
        return None, exc.detail.render()


def run_settings(run: RunInfo) -> dict[str, Any] | None:
    """The settings a run trained with (its config.json), for train.py's defaults and the
    README; None where they cannot be read."""
    try:
        config = TrainConfig.model_validate_json((run.path / store.CONFIG_FILE).read_text())
    except (OSError, ValidationError):
        return None
    return config.model_dump()


def export_run_label(run: RunInfo) -> str:
    """A run as the export's narrow picker names it: short id, data and start time (the graph
    is the one shown on this page)."""
    when = time.strftime("%H:%M:%S", time.localtime(run.created))
    return f"#{run.id[-6:]} · {run.dataset} · {when}"


def _bundle(graph: Graph, analysis: Analysis, settings: dict[str, Any]) -> dict[str, str]:
    """The bundle with `settings` as train.py's defaults; settings train.py cannot take are
    named and the defaults used."""
    try:
        return bundle_files(graph, analysis, settings, i18n.language())
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        st.warning(
            _(
                "The Train page's settings do not fit train.py ({reason}); it uses defaults.",
                reason=reason,
            )
        )
        return bundle_files(graph, analysis, lang=i18n.language())


def render() -> None:
    state.through_the_app()
    st.title(_("Export"))
    graph = state.current_graph()
    analysis = state.current_analysis()
    folder = identifier(graph.name)
    if not analysis.ok:
        problems = "\n".join(f"- {markdown_literal(d.text.render())}" for d in analysis.errors)
        st.error(
            _(
                "The graph has errors, so there is no model code to export yet. Fix them on the"
                " Build page:"
            )
            + "\n\n"
            + problems
        )
        st.download_button(
            _("Download graph.json (your work so far)"),
            dump_graph(graph),
            file_name=f"{folder}.json",
            mime="application/json",
            on_click="ignore",
        )
        return
    files = _bundle(graph, analysis, state.chosen_settings())
    code_box, weights_box, onnx_box = st.columns(3, gap="medium")
    with weights_box.container(border=True, height="stretch"):
        weights = _weights_section(state.runs_dir(), files["model.py"], folder)
    if weights is not None:  # the code and README describe the run whose weights go with them
        files = _bundle(graph, analysis, run_settings(weights[0]) or state.chosen_settings())
    with code_box.container(border=True, height="stretch"):
        _code_section(files, folder, analysis.total_params)
    with onnx_box.container(border=True, height="stretch"):
        _onnx_section(analysis, files["model.py"], weights, folder)
    for tab, (name, text) in zip(st.tabs(list(files)), files.items(), strict=True):
        with tab:
            language = LANGUAGES.get(Path(name).suffix, "text")
            st.code(text, language=language, line_numbers=True, height=CODE_HEIGHT)


def _code_section(files: dict[str, str], folder: str, parameters: int) -> None:
    st.markdown("**" + _("Code") + "**")
    st.caption(
        _(
            "A PyTorch model of {count} parameters and everything to train it anywhere: {files},"
            " in a folder `{folder}/`.",
            count=f"{parameters:,}",
            files=", ".join(f"`{name}`" for name in files),
            folder=folder,
        )
    )
    st.download_button(
        _("Download the code (.zip)"),
        bundle_zip(files, folder),
        file_name=f"{folder}.zip",
        mime="application/zip",
        type="primary",
        on_click="ignore",
        icon=":material/download:",
    )


def _weights_section(runs_dir: Path, model_source: str, folder: str) -> tuple[RunInfo, Path] | None:
    """The run picker and its weights; returns the chosen run and weights when they fit the
    model shown here."""
    st.markdown("**" + _("Trained weights") + "**")
    listed = runs_with_weights(runs_dir)
    found = {run.id: (run, path) for run, path in listed}
    if not found:
        st.caption(
            _("No trained weights yet: train the model on the Train page, then take them here.")
        )
        return None
    choice = st.selectbox(
        _("Run"),
        list(found),
        index=default_run(listed, model_source),
        format_func=lambda i: export_run_label(found[i][0]),
        key=f"export-run-{hashlib.sha256(model_source.encode()).hexdigest()[:12]}",
    )
    run, path = found[choice]
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        st.error(
            _(
                "This checkpoint is {size}, too large to download through the page.",
                size=format_bytes(size),
            )
        )
        return None
    st.download_button(
        _("Download weights (.pt)"),
        path.read_bytes(),
        file_name=f"{folder}-{run.id}.pt",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
    )
    if weights_match(run.path, model_source):
        st.caption(
            _(
                "They load into the model below: `{code}`.",
                code="model.load_state_dict(torch.load(path, weights_only=True))",
            )
        )
        return run, path
    st.warning(
        _(
            "This run trained an earlier version of the graph: its weights fit that run's"
            " model.py, not the one below."
        )
    )
    try:
        run_source = (run.path / "model.py").read_text()
    except OSError:
        st.caption(_("That run's model.py could not be read."))
        return None
    st.download_button(
        _("Download that run's model.py"),
        run_source,
        file_name=f"{folder}-{run.id}-model.py",
        mime="text/x-python",
        on_click="ignore",
    )
    return None


def _onnx_section(
    analysis: Analysis, model_source: str, weights: tuple[RunInfo, Path] | None, folder: str
) -> None:
    st.markdown("**ONNX**")
    if weights:
        st.caption(
            _(
                "The model for onnxruntime and other runtimes, with the weights of run #{run};"
                " any batch size.",
                run=weights[0].id[-6:],
            )
        )
    else:
        st.caption(
            _(
                "The model for onnxruntime and other runtimes, with freshly initialised weights;"
                " any batch size."
            )
        )
    path = weights[1] if weights else None
    key = (hashlib.sha256(model_source.encode()).hexdigest(), str(path))
    made = st.session_state.get(_ONNX)
    if made is None or made[0] != key:
        slot = st.empty()
        if not slot.button(
            _("Build the ONNX file"), key="export-onnx-build", icon=":material/memory:"
        ):
            return
        slot.empty()
        made = (key, *_build_onnx(analysis, path))
        st.session_state[_ONNX] = made
    _key, data, error = made
    if error:
        st.error(markdown_literal(_("Could not export to ONNX: {reason}", reason=error)))
        return
    st.download_button(
        _("Download model.onnx"),
        data,
        file_name=f"{folder}.onnx",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
    )


def _build_onnx(analysis: Analysis, path: Path | None) -> tuple[bytes | None, str | None]:
    """The export takes seconds (16 s for a ResNet on a busy machine): say what is happening and
    how long it has taken, and say when it is done."""
    with st.status(_("Building the ONNX file…"), expanded=True) as progress:
        with st.spinner(
            _("Tracing the model with torch.onnx and checking the file (seconds)…"), show_time=True
        ):
            data, error = onnx_file(analysis, path)
        if error:
            progress.update(label=_("The ONNX export failed"), state="error", expanded=False)
        else:
            progress.update(
                label=_("The ONNX file is ready ({size})", size=format_bytes(len(data or b""))),
                state="complete",
                expanded=False,
            )
    return data, error


if __name__ == "__main__":
    render()
