"""Import of PyTorch models through torch.fx: templates survive export -> import, hand-written
models compile to modules with the same outputs for the same weights, and whatever has no
catalog counterpart is reported by name and place, never dropped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from builder.graph import Graph, load_graph, typed_params
from compiler import analyse, generate_source
from compiler.codegen import attribute_names
from compiler.importer import ModelImportError, convert_state_dict, import_file, import_model
from runtime.import_job import import_allowed, import_python_file
from tests.modelkit import load_module

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"
TEMPLATES = sorted(TEMPLATE_DIR.glob("*.json"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def as_networkx(graph: Graph) -> nx.MultiDiGraph:
    """The graph with each node's type, inferred shape and full typed params as attributes;
    the Output's params (its loss) are a training choice that model.py does not hold."""
    analysis = analyse(graph)
    assert analysis.ok, analysis.errors
    dag = nx.MultiDiGraph()
    for node in graph.nodes:
        params = typed_params(node).model_dump() if node.type != "Output" else {}
        described = (node.type, analysis.infos[node.id].shape, params)
        dag.add_node(node.id, described=described)
    for edge in graph.edges:
        dag.add_edge(edge.source, edge.target, port=edge.port)
    return dag


# ---------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.stem)
def test_every_template_survives_export_and_import(template: Path, tmp_path: Path) -> None:
    original = load_graph(template.read_text())
    (tmp_path / "model.py").write_text(generate_source(analyse(original)))
    result = import_file(tmp_path / "model.py")
    assert result.problems == [] and result.warnings == []
    assert analyse(result.graph).total_params == analyse(original).total_params
    assert nx.is_isomorphic(
        as_networkx(original),
        as_networkx(result.graph),
        node_match=lambda a, b: a["described"] == b["described"],
    )


# ---------------------------------------------------------------------------------------------
# Hand-written models


class SmallNet(nn.Module):
    """A CNN as people write them: Sequential, functional relu, residual add, concat, view."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 4, 1)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x + F.relu(self.branch_a(x))
        x = torch.cat([x, self.branch_b(x)], dim=1)
        x = self.pool(x)
        x = x.view(x.size(0), -1)
        return self.head(self.drop(x))


class SequenceNet(nn.Module):
    """Conv1d over features, transpose/permute, recurrent tuples unpacked, last step and mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 16, kernel_size=3, padding=1)
        self.lstm = nn.LSTM(16, 32, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(64, 32, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x.transpose(1, 2)))
        x = x.permute(0, 2, 1)
        x, _ = self.lstm(x)
        h, _ = self.gru(x)
        h = self.norm(h)
        return self.out(torch.cat([h[:, -1], h.mean(dim=1)], dim=1))


class TokenNet(nn.Module):
    """Embedding, an encoder layer, self-attention with its weights unpacked, amax, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(tokens))
        attended, _ = self.attn(x, x, x)
        x = F.gelu(x + attended)
        return F.softmax(self.head(x.amax(dim=1)), dim=-1)


class StackNet(nn.Module):
    """nn.TransformerEncoder: a stack of encoder layers and a final norm."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            16, 2, 32, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=2, norm=nn.LayerNorm(16), enable_nested_tensor=False
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[:, -1])


class GatedNet(nn.Module):
    """Mish and GLU as modules and as functions (F.glu with its dim by position and keyword)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
        self.mish = nn.Mish()
        self.gate = nn.GLU(dim=1)
        self.head = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.gate(self.mish(self.conv(x))), 1)  # [8, 6, 6] -> [4, 6, 6] -> [2, 6, 6]
        x = F.mish(x.flatten(1)).view(x.size(0), 18, 4)
        return self.head(F.glu(x, dim=-1).flatten(1))  # [18, 4] -> [18, 2] -> [36]


HAND_WRITTEN = {
    "cnn": (SmallNet, (3, 16, 16), "float32", {"Add": 1, "Concat": 1, "Reshape": 1, "ReLU": 2}),
    "sequence": (SequenceNet, (10, 6), "float32", {"Permute": 2, "SequencePool": 2, "LSTM": 1}),
    "tokens": (TokenNet, (12,), "int64", {"MultiheadAttention": 1, "SequencePool": 1, "GELU": 1}),
    "stack": (StackNet, (6, 16), "float32", {"TransformerEncoderLayer": 2, "LayerNorm": 1}),
    "gated": (GatedNet, (3, 6, 6), "float32", {"Mish": 2, "GLU": 3}),
}


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_hand_written_model_compiles_to_the_same_outputs_for_the_same_weights(name: str) -> None:
    model_class, shape, dtype, expected_types = HAND_WRITTEN[name]
    torch.manual_seed(0)
    model = model_class().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    result = import_model(model, shape, dtype)
    assert result.problems == [], [str(p) for p in result.problems]
    analysis = analyse(result.graph)
    assert analysis.total_params == sum(p.numel() for p in model.parameters())
    types = [node.type for node in result.graph.nodes]
    assert all(types.count(kind) == count for kind, count in expected_types.items()), types

    compiled = load_module(generate_source(analysis)).build_model().eval()
    names = attribute_names(analysis)
    compiled.load_state_dict(convert_state_dict(model.state_dict(), result.module_paths, names))
    x = torch.randint(0, 20, (4, *shape)) if dtype == "int64" else torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def test_module_paths_name_the_source_modules() -> None:
    result = import_model(SmallNet(), (3, 16, 16))
    assert result.module_paths["features_0"] == "features.0"
    assert result.graph.node("features_0").label == "self.features.0"


# ---------------------------------------------------------------------------------------------
# What cannot be imported


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.ones(8))
        self.shared = nn.Linear(8, 8)
        self.rnn = nn.LSTM(8, 8)
        self.spare = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x) * self.scale.exp()  # a learned tensor, but not as it is
        y = torch.sort(y, dim=-1)[0]
        y = self.shared(self.shared(y))
        y = self.rnn(y)[0]
        return y.exp()


def test_every_unsupported_op_is_reported_by_name_and_line() -> None:
    result = import_model(Odd(), (4, 8))
    assert result.graph is None
    found = {problem.op: problem for problem in result.problems}
    assert set(found) == {
        "operator.mul",
        "torch.sort",
        "nn.Linear (self.shared)",
        "nn.LSTM (self.rnn)",
        "Tensor.exp",
    }
    assert found["torch.sort"].where.startswith("test_import.py:")
    assert found["torch.sort"].where.endswith("y = torch.sort(y, dim=-1)[0]")
    assert "self.scale other than as itself" in str(found["operator.mul"].why)
    assert "second time" in str(found["nn.Linear (self.shared)"].why)
    assert "batch_first=False" in str(found["nn.LSTM (self.rnn)"].why)
    assert [str(warning) for warning in result.warnings] == [
        "self.spare (Linear, 12 parameters) is never used in forward; it is left out"
    ]


class FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.view(3, -1), x.flatten().reshape(3, -1)], dim=1)


def test_reshapes_that_touch_the_batch_dim_are_refused() -> None:
    result = import_model(FixedBatch(), (2, 2))
    whys = sorted(str(problem.why) for problem in result.problems)
    assert any("the first size must be the batch" in why for why in whys)
    assert any("flattens the batch dim" in why for why in whys)


class AlwaysDrops(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.5, training=True)


def test_a_mapping_that_would_change_the_outputs_is_caught_by_running_both() -> None:
    result = import_model(AlwaysDrops(), (64,))
    assert result.graph is None
    (problem,) = result.problems
    assert "outputs differ from the model's" in str(problem.why)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


def test_a_branch_on_tensor_values_raises_a_named_error_with_its_line() -> None:
    with pytest.raises(ModelImportError, match="branches on the values of a tensor at") as caught:
        import_model(Branchy(), (4,))
    assert "return x if x.sum() > 0 else -x" in str(caught.value)


# ---------------------------------------------------------------------------------------------
# The CLI

GOOD_FILE = """
import torch
from torch import nn

INPUT_SHAPE = (8,)


def build_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
"""


def test_cli_import_writes_a_graph_that_checks(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(GOOD_FILE)
    result = run_cli("import", str(tmp_path / "mine.py"), "-o", str(tmp_path / "graph.json"))
    assert result.returncode == 0, result.stderr
    check = run_cli("check", str(tmp_path / "graph.json"))
    assert check.returncode == 0 and '"total_params": 178' in check.stdout


def test_cli_import_lists_unsupported_ops_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "odd.py").write_text(
        GOOD_FILE + "\nclass Sorted(nn.Module):\n    def forward(self, x):\n"
        "        return torch.sort(x)[0]\n\n\ndef build_model():\n    return Sorted()\n"
    )
    result = run_cli("import", str(tmp_path / "odd.py"), "-o", str(tmp_path / "graph.json"))
    assert result.returncode == 1
    assert (
        "unsupported: torch.sort at odd.py:13 in forward: return torch.sort(x)[0]" in result.stderr
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "graph.json").exists()


@pytest.mark.parametrize(
    "source, extra, message",
    [
        ("raise RuntimeError('boom')", [], "running"),
        ("x = 1", [], "defines no build_model()"),
        (
            "import torch.nn as nn\ndef build_model():\n    return nn.Linear(2, 2)",
            [],
            "INPUT_SHAPE",
        ),
        (GOOD_FILE, ["--input-shape", "eight"], "--input-shape must be sizes"),
        (GOOD_FILE, ["--input-shape", "3"], "fails on an input of shape [3, 3]"),
    ],
)
def test_cli_import_of_a_file_it_cannot_load_exits_2_with_one_line(
    tmp_path, source, extra, message
) -> None:
    (tmp_path / "mine.py").write_text(source)
    result = run_cli("import", str(tmp_path / "mine.py"), "-o", str(tmp_path / "g.json"), *extra)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_import_help_says_it_runs_the_users_own_code() -> None:
    result = run_cli("import", "--help")
    assert "executes FILE.py" in " ".join(result.stdout.split())
    assert "your own code, on your own machine" in " ".join(result.stdout.split())


# ---------------------------------------------------------------------------------------------
# Importing an upload: a separate process with limits (runtime.import_job)


def test_a_good_file_imports_in_a_child_process_as_a_graph() -> None:
    outcome = import_python_file(GOOD_FILE.encode(), None, "float32")
    assert outcome.error is None, outcome.error and str(outcome.error)
    assert [node.type for node in outcome.graph.nodes] == [
        "Input", "Linear", "ReLU", "Linear", "Output"
    ]  # fmt: skip
    assert analyse(outcome.graph).total_params == 178


def test_a_file_that_loops_forever_is_stopped_with_a_named_error() -> None:
    source = GOOD_FILE + "\nwhile True:\n    pass\n"
    outcome = import_python_file(source.encode(), None, "float32", time_limit_s=8)
    assert outcome.graph is None
    assert "took over 8 s and was stopped" in str(outcome.error)


@pytest.mark.parametrize(
    "hoard", ["bytearray(6 * 1024**3)", "torch.zeros(2**31)"], ids=["bytes", "tensor"]
)
def test_a_file_that_allocates_too_much_is_stopped_with_a_named_error(hoard: str) -> None:
    source = GOOD_FILE + f"\nhoard = {hoard}\n"
    outcome = import_python_file(source.encode(), None, "float32")
    assert outcome.graph is None
    assert "needed over 4.0 GiB of memory" in str(outcome.error)


def test_a_refused_model_lists_every_unsupported_op_from_the_child() -> None:
    source = GOOD_FILE + (
        "\nclass Odd(nn.Module):\n    def forward(self, x):\n"
        "        return torch.sort(x)[0].exp()\n\n\ndef build_model():\n    return Odd()\n"
    )
    outcome = import_python_file(source.encode(), (8,), "float32")
    assert outcome.graph is None
    assert "2 operations that NetBuilder cannot represent" in str(outcome.error)
    assert [str(p).split(" at ")[0] for p in outcome.problems] == ["torch.sort", "Tensor.exp"]
    assert all("model.py:13 in forward" in str(p) for p in outcome.problems)


@pytest.mark.parametrize(
    "setting, allowed",
    [(None, False), ("", False), ("0", False), ("no", False), ("1", True), ("true", True)],
)
def test_import_is_allowed_only_where_the_operator_turned_it_on(
    setting: str | None, allowed: bool
) -> None:
    assert import_allowed(setting) is allowed


# ---------------------------------------------------------------------------------------------
# Control flow fixed for the input shape


class TinyGPT(nn.Module):
    """nanoGPT's shape checks and learned positions: b, t = idx.size(); assert t <= block_size;
    self.wpe(torch.arange(t)) added to the token embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.block_size = 16
        self.wte = nn.Embedding(20, 8)
        self.wpe = nn.Embedding(self.block_size, 8)
        self.ln_f = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 20, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.size()
        assert t <= self.block_size, f"Cannot forward sequence of length {t}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        return self.lm_head(self.ln_f(x))


def test_shape_checks_pass_and_learned_positions_become_a_positional_encoding() -> None:
    model = TinyGPT().eval()
    result = import_model(model, (10,), "int64")
    assert result.problems == [], [str(p) for p in result.problems]
    (position,) = [n for n in result.graph.nodes if n.type == "PositionalEncoding"]
    assert position.params == {"max_len": 16} and position.label == "self.wpe"
    analysis = analyse(result.graph)
    assert analysis.total_params == sum(p.numel() for p in model.parameters())
    compiled = load_module(generate_source(analysis)).build_model().eval()
    names = attribute_names(analysis)
    compiled.load_state_dict(convert_state_dict(model.state_dict(), result.module_paths, names))
    x = torch.randint(0, 20, (4, 10))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


class BakesTheBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(x.size(0), 4)


def test_a_batch_size_used_as_a_plain_int_is_refused_not_baked_in() -> None:
    with pytest.raises(ModelImportError, match="torch.fx cannot trace"):
        import_model(BakesTheBatch(), (4,))


def test_an_unknown_dtype_is_refused_before_anything_runs() -> None:
    outcome = import_python_file(GOOD_FILE.encode(), None, "float16")
    assert outcome.graph is None
    assert str(outcome.error) == "the input dtype must be float32 or int64, got 'float16'"
