"""Nothing a person chooses is allocated in the server process before it is sized (issue 17).

Each test hands the server a hostile input (a zip bomb, a million-token Input, a CSV a million
columns wide, an attention map of a long sequence, a metrics line of megabytes, a model of
terabytes) and checks that it is refused or cut down with a sentence that carries the figures,
and, where memory is the point, that the refusal allocated almost nothing (tracemalloc sees
numpy's and Python's allocations).
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from builder.graph import dump_graph, parse_graph
from compiler import analyse
from export.onnx_export import OnnxExportError, export_graph_onnx
import runtime.runs
from pages import export, train
from runtime import builtin_data, datasets, store, upload_job
from runtime.datasets import DatasetTooLarge, dataset_from_upload, load_dataset
from runtime.metrics import (
    MAX_ATTENTION_HEADS,
    MAX_ATTENTION_SIZE,
    attention_lists,
    capture_attention,
    downsample_attention,
)
from runtime.runs import create_run
from runtime.sizing import MODEL_BUDGET_ENV, ByteBudgetCache, TooLargeForServer
from runtime.trainer import TrainConfig
from tests.modelkit import huge_graph, token_model

ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = "datalimits-workspace-0001"
MB = 10**6
CHUNK = bytes(1 << 20)


@pytest.fixture(autouse=True)
def default_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the defaults an operator gets (1024 MB of data, 2048 MB a model)."""
    monkeypatch.delenv(datasets.DATA_BUDGET_ENV, raising=False)
    monkeypatch.delenv(MODEL_BUDGET_ENV, raising=False)


def peak_bytes(action: Callable[[], Any]) -> tuple[Any, int]:
    """What `action` returned or raised, and the most memory it had allocated at once."""
    tracemalloc.start()
    try:
        try:
            outcome: Any = action()
        except Exception as exc:  # the refusal is the outcome
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    """A version 1 .npy header (its magic included), as np.save writes it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def streamed_npz(members: dict[str, tuple[bytes, int]]) -> bytes:
    """An .npz whose members are a header followed by that many MB of zeros, deflated as they
    are written (1 GB of zeros becomes about 1 MB: the test never holds the unpacked size)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, (header, megabytes) in members.items():
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(header)
                for _ in range(megabytes):
                    member.write(CHUNK)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """1 MB on the wire: X is [1000, 1000, 1000] uint8, 1 GB of zeros, and y 1,000 labels."""
    return streamed_npz(
        {
            "X.npy": (npy_header((1000, 1000, 1000), "|u1"), 954),  # 954 MiB = 1e9 bytes
            "y.npy": (npy_header((1000,), "<i8") + bytes(8000), 0),
        }
    )


# -- uploads ---------------------------------------------------------------------------------


def test_a_zip_bomb_npz_is_refused_from_its_headers_before_anything_is_unpacked(zip_bomb):
    assert len(zip_bomb) < 2 * MB
    refusal, peak = peak_bytes(lambda: dataset_from_upload("bomb.npz", zip_bomb))
    assert isinstance(refusal, DatasetTooLarge)
    text = str(refusal)
    assert "X [1000, 1000, 1000] uint8" in text  # as read, then as int64 tensors: 9 GB
    assert "needs 9.0 GB" in text and "allows 1.0 GB" in text
    assert peak < 16 * MB


def test_an_npy_header_that_never_ends_is_not_unpacked_past_its_cap():
    endless = np.lib.format.magic(2, 0) + struct.pack("<I", 0xFFFFFFFF)  # a 4 GB header
    payload = streamed_npz(
        {"X.npy": (endless, 200), "y.npy": (npy_header((2,), "<i8") + bytes(16), 0)}
    )
    refusal, peak = peak_bytes(lambda: dataset_from_upload("endless.npz", payload))
    assert isinstance(refusal, DatasetTooLarge)
    assert "the header of X unpacks to more than 65.5 kB" in str(refusal)
    assert peak < 16 * MB


def test_the_counting_reader_stops_one_byte_past_its_limit():
    reader = datasets.CountingReader(io.BytesIO(bytes(1000)), limit=10)
    assert len(reader.read(4)) == 4
    with pytest.raises(datasets._PastLimit):
        reader.read()  # asks for everything: gets at most 7 bytes, and the count says so
    assert reader.count == 11


def test_an_npz_within_the_budget_is_read_to_the_same_arrays():
    x = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=np.asfortranarray(x), y=np.array([0, 1]))
    data = dataset_from_upload("ok.npz", buffer.getvalue())
    assert torch.equal(data.x, torch.tensor(x, dtype=torch.float32))
    assert data.y.tolist() == [0, 1] and data.num_classes == 2


def test_a_csv_with_a_million_columns_is_refused_from_its_header(monkeypatch):
    import pandas as pd

    def must_not_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pandas parsed the file")

    monkeypatch.setattr(pd, "read_csv", must_not_parse)
    header = b",".join(b"c%d" % i for i in range(1_000_000))
    wide = header + b"\n" + b",".join([b"0"] * 1_000_000) + b"\n"
    with pytest.raises(DatasetTooLarge, match="header row is longer than 1.0 MB"):
        dataset_from_upload("wide.csv", wide)
    narrow_names = b",".join(b"%d" % (i % 10) for i in range(20_000)) + b"\n1\n"
    with pytest.raises(DatasetTooLarge, match="has 20,000 columns; .* at most 10,000 columns"):
        dataset_from_upload("wide.csv", narrow_names)
    assert train.csv_columns(wide) == [] and train.csv_columns(narrow_names) == []


def test_a_csv_over_the_data_budget_is_refused_before_it_is_parsed(monkeypatch):
    monkeypatch.setenv(datasets.DATA_BUDGET_ENV, "0.001")  # 1 kB
    rows = b"".join(b"%d,%d,%d\n" % (i, i, i % 2) for i in range(200))
    with pytest.raises(DatasetTooLarge, match=r"reading big.csv needs .* allows 1.0 kB"):
        dataset_from_upload("big.csv", b"a,b,label\n" + rows)


def test_the_server_process_never_parses_an_upload(monkeypatch):
    """read_upload parses in a child process: this process's parsers are never called."""

    def must_not_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server process parsed the upload")

    monkeypatch.setattr(datasets, "_read_csv", must_not_parse)
    rows = "".join(f"{i},{i * 0.5},{i % 3}\n" for i in range(30))
    data = upload_job.read_upload("mine.csv", f"a,b,label\n{rows}".encode())
    assert data.name == "mine.csv" and str(data.description).startswith("uploaded mine.csv: 30")
    assert data.x.shape == (30, 2) and data.num_classes == 3


def test_a_wide_csv_is_refused_by_the_child_with_the_sentence():
    header = b",".join(b"c%d" % i for i in range(50_000))
    with pytest.raises(DatasetTooLarge, match="has 50,000 columns"):
        upload_job.read_upload("wide.csv", header + b"\n" + header + b"\n")


# -- generated data --------------------------------------------------------------------------


@pytest.fixture
def no_text_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_generate(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("text was generated")

    monkeypatch.setattr(builtin_data, "text", must_not_generate)


def test_a_million_token_input_is_refused_before_any_text_is_generated(no_text_generated):
    with pytest.raises(DatasetTooLarge) as refused:
        load_dataset("text", input_shape=(1_000_000,))
    assert "[1000000]" in str(refused.value) and "at most 2048" in str(refused.value)


def test_a_text_length_within_the_cap_but_over_the_budget_names_both_figures(
    monkeypatch, no_text_generated
):
    monkeypatch.setenv(datasets.DATA_BUDGET_ENV, "100")
    with pytest.raises(DatasetTooLarge, match=r"needs 201.4 MB of memory; .* allows 100.0 MB"):
        load_dataset("text", input_shape=(2048,))


def test_the_suggestion_for_a_million_token_input_generates_nothing(no_text_generated):
    assert train.suggested_dataset(analyse(parse_graph(token_model(1_000_000)))) == "text"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NETBUILDER_HOME", str(tmp_path))
    return tmp_path


def open_page(home: Path, graph: dict, page: str = "pages/train.py") -> AppTest:
    """The page as a browser at ?w=WORKSPACE sees it, with `graph` as the workspace's graph."""
    autosave = home / "autosave" / f"{WORKSPACE}.json"
    autosave.parent.mkdir(parents=True, exist_ok=True)
    autosave.write_text(dump_graph(parse_graph(graph)))
    app = AppTest.from_file(str(ROOT / page), default_timeout=60)
    app.query_params["w"] = WORKSPACE
    app.run()
    return app


def shown(app: AppTest) -> str:
    parts = [e.value for kind in ("error", "warning", "success", "caption") for e in app.get(kind)]
    return re.sub(r"\\(.)", r"\1", "\n".join(str(p) for p in parts))


def test_the_train_page_says_why_a_million_token_input_gets_no_text(home, no_text_generated):
    app = open_page(home, token_model(1_000_000))
    assert not app.exception
    assert app.selectbox(key="train-dataset").value == "text"
    assert "this server generates at most 2048" in shown(app)
    assert app.button(key="train-start").disabled


# -- attention maps and the metrics log ------------------------------------------------------


def test_attention_maps_are_cut_to_a_fixed_budget_per_head():
    weights = torch.softmax(torch.randn(12, 1024, 1024), dim=-1)
    small = downsample_attention(weights)
    assert small.shape == (MAX_ATTENTION_HEADS, MAX_ATTENTION_SIZE, MAX_ATTENTION_SIZE)
    # each cell is the mean of its 16 x 16 block
    block = weights[0, 16:32, 48:64].mean()
    assert torch.allclose(small[0, 1, 3], block)
    looking_back = torch.eye(1024).expand(2, 1024, 1024)  # each position attends to itself
    assert (downsample_attention(looking_back).argmax(dim=-1) == torch.arange(64)).all()
    short = torch.softmax(torch.randn(2, 5, 5), dim=-1)
    assert torch.equal(downsample_attention(short), short)  # a short sequence is kept as it is


def test_a_long_sequence_records_a_small_attention_map():
    layer = nn.MultiheadAttention(16, num_heads=4, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    captured = capture_attention(SelfAttention(), {"a": layer}, torch.randn(1, 500, 16))
    assert captured["a"].shape == (4, MAX_ATTENTION_SIZE, MAX_ATTENTION_SIZE)
    line = json.dumps({"kind": "attention", "weights": attention_lists(captured["a"])})
    assert len(line) < 4 * MAX_ATTENTION_SIZE**2 * 10  # a few characters a weight


def write_lines(path: Path, lines: list[bytes]) -> None:
    with path.open("wb") as file:
        for line in lines:
            file.write(line + b"\n")


def test_the_metrics_reader_reads_in_bounded_chunks_and_skips_a_huge_line(tmp_path, caplog):
    path = tmp_path / store.METRICS_FILE
    huge = json.dumps({"kind": "attention", "weights": "x" * (3 * store.MAX_READ_BYTES)})
    write_lines(
        path, [b'{"kind": "step", "step": 1}', huge.encode(), b'{"kind": "step", "step": 2}']
    )
    first, offset = store.read_records(path)
    assert first == [{"kind": "step", "step": 1}]
    skipped, peak = peak_bytes(lambda: store.read_records(path, offset))
    records, after = skipped
    assert records == [] and after == offset + len(huge) + 1
    assert peak < 2 * store.MAX_READ_BYTES
    assert "skipped a record of" in caplog.text
    assert store.read_records(path, after) == ([{"kind": "step", "step": 2}], path.stat().st_size)


def test_a_huge_line_still_being_written_is_left_for_the_next_read(tmp_path):
    path = tmp_path / store.METRICS_FILE
    path.write_bytes(b"x" * (store.MAX_READ_BYTES + 10))  # no end of line yet
    assert store.read_records(path, 0) == ([], 0)


def test_the_train_page_catches_up_over_many_bounded_reads(home, monkeypatch):
    reads: list[int] = []

    def small_reads(runs_dir: Path, run_id: str, offset: int) -> tuple[list[dict], int]:
        reads.append(offset)
        return store.read_records(Path(runs_dir) / run_id / store.METRICS_FILE, offset, 200)

    monkeypatch.setattr(runtime.runs, "read_metrics", small_reads)
    graph = parse_graph(token_model(16))
    folder = create_run(home / "runs" / WORKSPACE, graph, TrainConfig(dataset="text"))
    steps = [
        {"kind": "step", "step": s, "epoch": 1, "loss": 1.0 / s, "time": s} for s in range(1, 41)
    ]
    write_lines(folder / store.METRICS_FILE, [json.dumps(r).encode() for r in steps])
    store.update_status(folder, status="completed", epoch=1, step=40)
    app = open_page(home, token_model(16))
    assert not app.exception
    # a language model's run opens on its generated text: show its loss
    next(b for b in app.button_group if str(b.key).startswith("train-view-")).set_value(
        "Loss"
    ).run()
    loss = next(
        json.loads(c.proto.spec)
        for c in app.get("plotly_chart")
        if json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "").startswith("Loss")
    )
    steps_drawn = next(t["x"] for t in loss["data"] if t["name"] == "step loss")
    assert np.frombuffer(base64.b64decode(steps_drawn["bdata"]), steps_drawn["dtype"]).size == 40
    assert len(reads) > 10  # 40 records of about 80 bytes, 200 bytes a read


# -- models the server builds ----------------------------------------------------------------


def test_onnx_export_refuses_a_model_over_its_budget_before_building_it(monkeypatch):
    import export.onnx_export

    def must_not_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr(export.onnx_export, "generate_source", must_not_build)
    with pytest.raises(OnnxExportError, match=r"needs about 1.6 PB, over the 2.0 GB allowed"):
        export_graph_onnx(analyse(parse_graph(huge_graph())), max_bytes=2 * 10**9)


def test_the_export_page_sizes_onnx_against_the_model_budget(monkeypatch):
    monkeypatch.setenv(MODEL_BUDGET_ENV, "1")  # 1 MB: LeNet-5's export needs more
    lenet = (ROOT / "builder" / "templates" / "lenet5.json").read_text()
    data, error = export.onnx_file(analyse(parse_graph(json.loads(lenet))), None)
    assert data is None
    assert "building this model for ONNX needs about" in error and "allows 1.0 MB" in error


def test_a_runs_model_over_the_budget_is_not_loaded_for_samples(home, monkeypatch):
    folder = create_run(home / "runs", parse_graph(token_model(16)), TrainConfig())
    train.check_model_size(folder)  # a small model fits the default budget
    monkeypatch.setenv(MODEL_BUDGET_ENV, "0.001")  # 1 kB
    with pytest.raises(TooLargeForServer, match=r"loading this run's model .* allows 1.0 kB"):
        train.check_model_size(folder)


def test_the_model_cache_is_bounded_by_bytes_not_entries():
    budget = 100
    cache: ByteBudgetCache[str] = ByteBudgetCache(lambda: budget)
    cache.put("a", "A", 40)
    cache.put("b", "B", 40)
    assert cache.get("a") == "A"  # now b is the least recently used
    cache.put("c", "C", 40)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("A", None, "C")
    cache.put("huge", "H", 101)  # larger than the whole budget: never kept
    assert cache.get("huge") is None and cache.total_bytes == 80


def test_an_upload_read_in_the_child_keeps_its_class_names_and_says_so_in_chinese() -> None:
    rows = "".join(f"{i},{i % 7},{'cat' if i % 2 else 'dog'}\n" for i in range(20))
    data = upload_job.read_upload("pets.csv", ("width,height,kind\n" + rows).encode())
    assert data.class_names == ("cat", "dog")
    described = data.description.render("zh")
    assert described.startswith("上传的 pets.csv：20 个") and "2 个类别" in described
    assert "(cat, dog)" in described
