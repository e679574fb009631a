"""`python -m compiler check|export|schema`: the contract's output and exit codes, no tracebacks;
and `python -m runtime runs`, which lists every workspace's runs in either language."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.graph import MAX_FILE_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"
LENET = TEMPLATE_DIR / "lenet5.json"


def run(*args: str, module: str = "compiler") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def write(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "graph.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def lenet_with(**changes) -> dict:
    data = json.loads(LENET.read_text())
    data.update(changes)
    return data


def test_check_valid_graph_prints_shapes_and_exits_0() -> None:
    result = run("check", str(LENET))
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["total_params"] == 61706
    assert report["nodes"]["c1"] == {
        "shape": [6, 28, 28],
        "params": 156,
        "macs": 117600,
        "dtype": "float32",
    }


def test_check_graph_with_errors_exits_1_and_names_nodes(tmp_path: Path) -> None:
    data = lenet_with()
    data["nodes"][0]["params"]["shape"] = [1, 3, 3]
    result = run("check", write(tmp_path, json.dumps(data)))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["errors"][0]["node"] == "c3"
    assert "exceeds padded input 1x1" in report["errors"][0]["message"]
    assert report["nodes"]["logits"]["shape"] is None


MALFORMED = {
    "bad json": ("{not json", "not valid JSON"),
    "not an object": ("[1, 2]", "JSON object"),
    "wrong format": (json.dumps(lenet_with(format="netbuilder.graph/9")), "format must be"),
    "missing nodes": (json.dumps({"format": "netbuilder.graph/1"}), "nodes"),
    "unknown type": (
        json.dumps(lenet_with(nodes=[{"id": "a", "type": "Conv3d"}])),
        "unknown layer type 'Conv3d'",
    ),
    "wrong param type": (
        json.dumps(
            lenet_with(
                nodes=[
                    {
                        "id": "c1",
                        "type": "Conv2d",
                        "params": {"out_channels": 6, "kernel_size": "five"},
                    }
                ]
            )
        ),
        "node 'c1' (Conv2d): kernel_size must be a positive int or list of 2, got 'five'",
    ),
    "unknown param": (
        json.dumps(lenet_with(nodes=[{"id": "r", "type": "ReLU", "params": {"inplace": True}}])),
        "unknown parameter 'inplace'",
    ),
    "negative size": (
        json.dumps(
            lenet_with(nodes=[{"id": "fc", "type": "Linear", "params": {"out_features": -3}}])
        ),
        "out_features must be a positive int, got -3",
    ),
    "duplicate ids": (
        json.dumps(lenet_with(nodes=[{"id": "a", "type": "ReLU"}, {"id": "a", "type": "ReLU"}])),
        "appears more than once",
    ),
    "too many nodes": (
        json.dumps(
            lenet_with(nodes=[{"id": str(i), "type": "ReLU"} for i in range(MAX_NODES + 1)])
        ),
        "too many nodes",
    ),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    "binary": (b"\xff\xfe\x00garbage", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_exits_2_with_one_clear_line(case: str, tmp_path: Path) -> None:
    content, expected = MALFORMED[case]
    result = run("check", write(tmp_path, content))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    result = run("check", write(tmp_path, " " * (MAX_FILE_BYTES + 1)))
    assert result.returncode == 2
    assert "too large" in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = run("check", str(tmp_path / "nope.json"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_export_writes_a_standalone_model(tmp_path: Path) -> None:
    result = run("export", str(LENET), "-o", str(tmp_path / "out"))
    assert result.returncode == 0
    source = (tmp_path / "out" / "model.py").read_text()
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import model, torch; m = model.build_model(); print(m(torch.zeros(2, *model.INPUT_SHAPE)).shape)",
        ],
        cwd=tmp_path / "out",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.stdout.strip() == "torch.Size([2, 10])", check.stderr
    assert "netbuilder" not in source.lower().replace("generated by netbuilder", "")


def test_export_of_invalid_graph_exits_1(tmp_path: Path) -> None:
    data = lenet_with(edges=[])
    result = run("export", write(tmp_path, json.dumps(data)), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert not (tmp_path / "out" / "model.py").exists()


def test_schema_lists_every_layer_and_its_params() -> None:
    result = run("schema")
    schema = json.loads(result.stdout)
    assert "Conv2dParams" in schema["$defs"]
    assert schema["$defs"]["Conv2dParams"]["properties"]["out_channels"]["minimum"] == 1
    assert "Conv2d" in schema["$defs"]["Node"]["properties"]["type"]["enum"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_number_in_a_file_exits_2_naming_the_field(tmp_path: Path, value: str) -> None:
    data = json.loads(LENET.read_text())
    data["nodes"].insert(
        -1, {"id": "leaky", "type": "LeakyReLU", "params": {"negative_slope": 0.5}}
    )
    raw = json.dumps(data).replace('"negative_slope": 0.5', f'"negative_slope": {value}')
    result = run("check", write(tmp_path, raw))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(
        "error: node 'leaky' (LeakyReLU): negative_slope must be a float"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_an_integer_of_thousands_of_digits_exits_2_with_one_line(tmp_path: Path) -> None:
    raw = LENET.read_text().replace('"out_features": 120', '"out_features": ' + "9" * 5000)
    result = run("check", write(tmp_path, raw))
    assert result.returncode == 2
    assert result.stderr.startswith("error: not valid JSON")
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_reports_each_error_as_data_with_code_and_values(tmp_path: Path) -> None:
    data = lenet_with()
    data["nodes"][0]["params"]["shape"] = [1, 3, 3]
    report = json.loads(run("check", write(tmp_path, json.dumps(data))).stdout)
    error = report["errors"][0]
    assert error["code"] == (
        "kernel {kernel} (dilated {dilated}) exceeds padded input {padded}; use a smaller kernel or"
        " more padding"
    )
    assert error["values"]["padded"] == "1x1"
    assert error["message"].endswith(error["code"].format(**error["values"]))


def test_lang_zh_renders_messages_in_chinese_and_english_stays_the_default(tmp_path: Path) -> None:
    import i18n

    data = lenet_with()
    data["nodes"][0]["params"]["shape"] = [1, 3, 3]
    path = write(tmp_path, json.dumps(data))
    english = json.loads(run("check", path).stdout)["errors"][0]
    chinese = json.loads(run("check", path, "--lang", "zh").stdout)["errors"][0]
    assert english["code"] == chinese["code"] and english["values"] == chinese["values"]
    message = i18n.Message(english["code"], english["values"])
    if i18n.translate(english["code"], "zh") == english["code"]:
        pytest.skip("this message has no Chinese yet (the translator's pass)")
    assert chinese["message"].endswith(message.render("zh"))
    assert chinese["message"] != english["message"]


def finished_run(folder: Path, created: float) -> None:
    """A run folder as the runs listing reads it: its status.json is all it needs."""
    folder.mkdir(parents=True)
    status = {"status": "completed", "message": "", "created": created, "name": folder.name}
    status |= {"dataset": "digits", "epochs": 2, "epoch": 2, "step": 46, "device": "cpu"}
    (folder / "status.json").write_text(json.dumps(status))


def test_runtime_runs_lists_every_workspaces_runs_with_the_workspace(tmp_path: Path) -> None:
    """The app keeps runs/<workspace>/<run>; the command, given runs/, shows them all."""
    finished_run(tmp_path / "alice" / "run-of-alice", created=1.0)
    finished_run(tmp_path / "bob" / "run-of-bob", created=2.0)
    finished_run(tmp_path / "run-by-hand", created=3.0)
    listed = run("runs", "--runs", str(tmp_path), module="runtime")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        "run-by-hand",
        "bob/run-of-bob",
        "alice/run-of-alice",
    ]
    assert all("completed" in line and "epoch 2/2, step 46" in line for line in lines)


def test_runtime_speaks_chinese_with_lang_zh_and_english_with_lang_en(tmp_path: Path) -> None:
    finished_run(tmp_path / "alice" / "run-of-alice", created=1.0)
    chinese = run("runs", "--runs", str(tmp_path), "--lang", "zh", module="runtime")
    assert chinese.returncode == 0, chinese.stderr
    assert "已完成" in chinese.stdout and "第 2/2 轮，第 46 步" in chinese.stdout
    english = run("runs", "--runs", str(tmp_path), "--lang", "en", module="runtime")
    assert "completed" in english.stdout and "epoch 2/2, step 46" in english.stdout
    empty = run("runs", "--runs", str(tmp_path / "none"), "--lang", "zh", module="runtime")
    assert empty.stdout.strip() == f"{tmp_path / 'none'} 中没有运行"


@pytest.mark.parametrize(
    "module, args",
    [
        ("compiler", ["check", "/no/such/graph.json"]),
        ("runtime", ["train", "/no/such/graph.json", "--dataset", "digits"]),
    ],
)
def test_a_missing_file_is_named_in_chinese_with_no_english_left(module, args):
    done = run(*args, "--lang", "zh", module=module)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: 无法读取 /no/such/graph.json：没有这个文件或文件夹"


def test_a_graph_without_nodes_is_named_in_chinese(tmp_path: Path):
    path = write(tmp_path, json.dumps({"format": "netbuilder.graph/1", "name": "x", "edges": []}))
    done = run("check", path, "--lang", "zh")
    assert done.returncode == 2
    assert "nodes：此字段必填" in done.stderr
    assert "Field required" not in done.stderr
