"""Well-known architectures, drawn as graphs, have their published parameter counts."""

from __future__ import annotations

from typing import Any

from builder.graph import Graph, parse_graph
from compiler import analyse


class Drawing:
    """A tiny graph writer for these tests: add nodes after the current one, merge branches."""

    def __init__(self, shape: list[int]) -> None:
        self.nodes: list[dict[str, Any]] = [
            {"id": "in", "type": "Input", "params": {"shape": shape}}
        ]
        self.edges: list[dict[str, Any]] = []
        self.last = "in"

    def add(self, node_id: str, layer: str, after: str | None = None, **params: Any) -> str:
        self.nodes.append({"id": node_id, "type": layer, "params": params})
        self.edges.append({"source": after or self.last, "target": node_id})
        self.last = node_id
        return node_id

    def graph(self) -> Graph:
        self.add("out", "Output")
        return parse_graph(
            {
                "format": "netbuilder.graph/1",
                "name": "net",
                "nodes": self.nodes,
                "edges": self.edges,
            }
        )


def resnet18() -> Graph:
    d = Drawing([3, 224, 224])
    d.add("conv1", "Conv2d", out_channels=64, kernel_size=7, stride=2, padding=3, bias=False)
    d.add("bn1", "BatchNorm2d")
    d.add("relu", "ReLU")
    d.add("maxpool", "MaxPool2d", kernel_size=3, stride=2, padding=1)
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            skip = d.last
            p = f"l{stage}_{block}"
            d.add(
                f"{p}_conv1",
                "Conv2d",
                out_channels=width,
                kernel_size=3,
                stride=stride,
                padding=1,
                bias=False,
            )
            d.add(f"{p}_bn1", "BatchNorm2d")
            d.add(f"{p}_relu1", "ReLU")
            d.add(f"{p}_conv2", "Conv2d", out_channels=width, kernel_size=3, padding=1, bias=False)
            main = d.add(f"{p}_bn2", "BatchNorm2d")
            if stride != 1 or channels != width:
                d.add(
                    f"{p}_down",
                    "Conv2d",
                    after=skip,
                    out_channels=width,
                    kernel_size=1,
                    stride=stride,
                    bias=False,
                )
                skip = d.add(f"{p}_down_bn", "BatchNorm2d")
            d.add(f"{p}_add", "Add", after=main)
            d.edges.append({"source": skip, "target": f"{p}_add"})
            d.add(f"{p}_relu", "ReLU")
            channels = width
    d.add("avgpool", "AdaptiveAvgPool2d", output_size=1)
    d.add("flatten", "Flatten")
    d.add("fc", "Linear", out_features=1000)
    return d.graph()


def vgg16() -> Graph:
    d = Drawing([3, 224, 224])
    config = [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        "M",
    ]
    for index, item in enumerate(config):
        if item == "M":
            d.add(f"pool{index}", "MaxPool2d", kernel_size=2, stride=2)
        else:
            d.add(f"conv{index}", "Conv2d", out_channels=item, kernel_size=3, padding=1)
            d.add(f"relu{index}", "ReLU")
    d.add("avgpool", "AdaptiveAvgPool2d", output_size=7)
    d.add("flatten", "Flatten")
    for index, width in enumerate((4096, 4096)):
        d.add(f"fc{index}", "Linear", out_features=width)
        d.add(f"fc_relu{index}", "ReLU")
        d.add(f"drop{index}", "Dropout")
    d.add("classifier", "Linear", out_features=1000)
    return d.graph()


def bert_base_encoder() -> Graph:
    """BERT-base's 12 encoder layers (without its embeddings and pooler): 85,054,464 parameters."""
    d = Drawing([128, 768])
    for layer in range(12):
        d.add(
            f"layer{layer}",
            "TransformerEncoderLayer",
            nhead=12,
            dim_feedforward=3072,
            activation="gelu",
        )
    return d.graph()


def test_resnet18_has_11_689_512_parameters() -> None:
    analysis = analyse(resnet18())
    assert analysis.ok
    assert analysis.total_params == 11_689_512
    assert analysis.infos["l4_1_relu"].shape == (512, 7, 7)
    assert round(analysis.total_macs / 1e9, 2) == 1.81  # the published 1.8 GMACs


def test_vgg16_has_138_357_544_parameters() -> None:
    analysis = analyse(vgg16())
    assert analysis.ok
    assert analysis.total_params == 138_357_544


def test_bert_base_encoder_stack_has_85_054_464_parameters() -> None:
    analysis = analyse(bert_base_encoder())
    assert analysis.ok
    assert analysis.total_params == 85_054_464
