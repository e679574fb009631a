"""Export page: the generated code to read and take home, a run's trained weights, and ONNX.

What the page offers comes from small functions (`weights_match`, `runs_with_weights`,
`onnx_file`) tested without a browser; `render` only lays them out. The ONNX export takes
seconds, so it runs when asked for, once per model and weights.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import streamlit as st
import torch
from pydantic import ValidationError

from builder.graph import dump_graph
from compiler.analysis import Analysis
from compiler.bundle import bundle_files, bundle_zip
from compiler.codegen import identifier
from compiler.onnx_export import OnnxExportError, export_graph_onnx
from pages import state, train
from pages.live_graph import markdown_literal
from runtime.runs import RunInfo, checkpoint_path, list_runs

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


def onnx_file(analysis: Analysis, weights_path: Path | None) -> tuple[bytes | None, str | None]:
    """The model as ONNX with a run's weights (or fresh ones); or why it cannot be made."""
    try:
        weights = torch.load(weights_path, weights_only=True) if weights_path else None
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
        return None, f"the weights file could not be read ({type(exc).__name__}: {exc})"
    try:
        return export_graph_onnx(analysis, weights), None
    except OnnxExportError as exc:
        return None, str(exc)


def render() -> None:
    st.title("Export")
    graph = state.current_graph()
    analysis = state.current_analysis()
    folder = identifier(graph.name)
    if not analysis.ok:
        st.error(
            "The graph has errors, so there is no model code to export yet. Fix them on the Build"
            " page:\n\n" + "\n".join(f"- {markdown_literal(d.message)}" for d in analysis.errors)
        )
        st.download_button(
            "Download graph.json (your work so far)",
            dump_graph(graph),
            file_name=f"{folder}.json",
            mime="application/json",
            on_click="ignore",
        )
        return
    try:
        files = bundle_files(graph, analysis, train.chosen_settings())
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        st.warning(f"The Train page's settings do not fit train.py ({reason}); it uses defaults.")
        files = bundle_files(graph, analysis)
    code_box, weights_box, onnx_box = st.columns(3, gap="medium")
    with code_box.container(border=True, height="stretch"):
        _code_section(files, folder, analysis.total_params)
    with weights_box.container(border=True, height="stretch"):
        weights = _weights_section(state.runs_dir(), files["model.py"], folder)
    with onnx_box.container(border=True, height="stretch"):
        _onnx_section(analysis, files["model.py"], weights, folder)
    for tab, (name, text) in zip(st.tabs(list(files)), files.items(), strict=True):
        with tab:
            language = LANGUAGES.get(Path(name).suffix, "text")
            st.code(text, language=language, line_numbers=True, height=CODE_HEIGHT)


def _code_section(files: dict[str, str], folder: str, parameters: int) -> None:
    st.markdown("**Code**")
    st.caption(
        f"A PyTorch model of {parameters:,} parameters and everything to train it anywhere: "
        + ", ".join(f"`{name}`" for name in files)
        + f", in a folder `{folder}/`."
    )
    st.download_button(
        "Download the code (.zip)",
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
    st.markdown("**Trained weights**")
    found = {run.id: (run, path) for run, path in runs_with_weights(runs_dir)}
    if not found:
        st.caption(
            "No trained weights yet: train the model on the Train page, then take them here."
        )
        return None
    choice = st.selectbox(
        "Run", list(found), format_func=lambda i: train.run_label(found[i][0]), key="export-run"
    )
    run, path = found[choice]
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        st.error(
            f"This checkpoint is {size / 1e6:,.0f} MB, too large to download through the page."
        )
        return None
    st.download_button(
        "Download weights (.pt)",
        path.read_bytes(),
        file_name=f"{folder}-{run.id}.pt",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
    )
    if weights_match(run.path, model_source):
        st.caption(
            "They load into the model below: `model.load_state_dict(torch.load(path,"
            " weights_only=True))`."
        )
        return run, path
    st.warning(
        "This run trained an earlier version of the graph: its weights fit that run's model.py,"
        " not the one below."
    )
    try:
        run_source = (run.path / "model.py").read_text()
    except OSError:
        st.caption("That run's model.py could not be read.")
        return None
    st.download_button(
        "Download that run's model.py",
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
    whose = (
        f"the weights of run #{weights[0].id[-6:]}" if weights else "freshly initialised weights"
    )
    st.caption(f"The model for onnxruntime and other runtimes, with {whose}; any batch size.")
    path = weights[1] if weights else None
    key = (hashlib.sha256(model_source.encode()).hexdigest(), str(path))
    made = st.session_state.get(_ONNX)
    if made is None or made[0] != key:
        slot = st.empty()
        if not slot.button(
            "Build the ONNX file", key="export-onnx-build", icon=":material/memory:"
        ):
            return
        with st.spinner("Exporting with torch.onnx…"):
            made = (key, *onnx_file(analysis, path))
        st.session_state[_ONNX] = made
        slot.empty()
    _, data, error = made
    if error:
        st.error(markdown_literal(f"Could not export to ONNX: {error}"))
        return
    st.download_button(
        "Download model.onnx",
        data,
        file_name=f"{folder}.onnx",
        mime="application/octet-stream",
        on_click="ignore",
        icon=":material/download:",
    )


if __name__ == "__main__":
    render()
