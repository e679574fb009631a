"""The export bundle: everything a person takes home, as file name -> text. Pure.

`model.py` is the very source the runtime trains, so a state_dict saved by a run (or by train.py)
loads into it; `train.py` trains it anywhere with `loop.py`, `run.py`, `builtin_data.py` and
`csv_table.py` (and `image_folder.py` for pictures), the runtime's own training loop, the code
around it, datasets and CSV reader copied verbatim; `graph.json` reopens the design in NetBuilder.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

from builder.graph import Graph, dump_graph
from compiler.analysis import Analysis, analyse
from compiler.gan import check_pair, discriminator_graph
from compiler.codegen import class_name, generate_source, identifier, safe_text
from export.trainscript import (
    gan_model_source,
    gan_train_source,
    shared_sources,
    train_source,
)
from i18n import N_, msg
from runtime.settings import TrainConfig


def bundle_files(
    graph: Graph,
    analysis: Analysis,
    train_defaults: dict[str, Any] | None = None,
    lang: str | None = None,
) -> dict[str, str]:
    """model.py, train.py, loop.py, run.py, builtin_data.py, csv_table.py, graph.json and README.md for a
    valid analysis of `graph`.

    `train_defaults` holds TrainConfig fields (e.g. `config.model_dump()`); train.py takes them as
    its defaults. Raises ValueError for a graph with errors and pydantic's ValidationError for
    settings out of range. The README is written in `lang` (default English); the code is
    always English.
    """
    if not analysis.ok:
        raise ValueError("cannot export a graph with errors")
    defaults = TrainConfig.model_validate(train_defaults or {})
    judge = discriminator_graph(graph)
    if judge is not None:
        return gan_bundle_files(graph, analysis, analyse(judge), defaults, lang)
    return {
        "model.py": generate_source(analysis),
        "train.py": train_source(analysis, defaults),
        **shared_sources(),
        "graph.json": dump_graph(graph),
        "README.md": readme(analysis, defaults, lang),
    }


def gan_bundle_files(
    graph: Graph,
    generator: Analysis,
    judge: Analysis,
    defaults: TrainConfig,
    lang: str | None = None,
) -> dict[str, str]:
    """A GAN pair's bundle: model.py (build_generator, build_discriminator) over generator.py
    and discriminator.py, and a train.py running the shared GanLoop (its images come from an
    NPZ or a built-in dataset, so it carries no CSV reader)."""
    output = next(n.id for n in graph.nodes if n.type == "Output")
    problems = check_pair(generator, judge, tuple(generator.infos[output].shape or ()))
    if problems:
        raise ValueError(f"cannot export this GAN pair: {problems[0]}")
    return {
        "model.py": gan_model_source(graph.name),
        "generator.py": generate_source(generator),
        "discriminator.py": generate_source(judge),
        "train.py": gan_train_source(generator, defaults),
        **{
            name: text
            for name, text in shared_sources().items()
            if name not in ("csv_table.py", "image_folder.py")  # a GAN reads NPZ or built-in data
        },
        "graph.json": dump_graph(graph),
        "README.md": readme(generator, defaults, lang),
    }


def bundle_zip(files: dict[str, str], folder: str) -> bytes:
    """The bundle as one zip (for a single download), its files inside `folder`/, a name made
    safe with the same rule as the code's identifiers."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(f"{identifier(folder)}/{name}", text)
    return buffer.getvalue()


README = N_("""# {name}

Exported from NetBuilder: {params} parameters, input [B, {shape_in}]
({dtype}), output [B, {shape_out}].

| file | what |
| --- | --- |
| model.py | the model: `from model import build_model` gives a `{class_name}` |
| train.py | trains it on one device or many; `python train.py --help` lists every flag |
| loop.py, run.py, builtin_data.py, csv_table.py | NetBuilder's own training loop, the code around it (device, checkpoint, records), built-in datasets and CSV reader, as the app runs them |
| image_folder.py | reads class folders of pictures (a zip or a folder) with Pillow, resized, normalised and augmented as the app does |
| graph.json | the design: open it in NetBuilder to keep editing |

Needs Python 3.10+ and PyTorch 2.3+ (scikit-learn too for the built-in digits).

```sh
python train.py                       # as set in NetBuilder: {settings}
python train.py --data mine.csv       # a header row, one sample per row, labels last
python train.py --data mine.npz       # arrays X [N, {shape_in}] and y [N]
python train.py --data photos.zip     # class folders of pictures: cats/1.jpg, dogs/... (or photos/)
python train.py --data story.txt      # a UTF-8 text, for a next-character model
python train.py --resume              # continue from checkpoints/last.pt
torchrun --nproc_per_node=4 train.py  # 4 GPUs (or CPU processes), DistributedDataParallel
```

train.py writes its checkpoints in checkpoints/ beside it (`--out` chooses another folder).
Load trained weights (from checkpoints/model.pt or NetBuilder's download):

```python
import torch
from model import build_model

model = build_model()
model.load_state_dict(torch.load("model.pt", weights_only=True))
```
""")


def readme(analysis: Analysis, defaults: TrainConfig, lang: str | None = None) -> str:
    """How to run the bundle, in a dozen lines, in the reader's language (the code stays English)."""
    graph = analysis.graph
    input_node = next(n for n in graph.nodes if n.type == "Input")
    output_node = next(n for n in graph.nodes if n.type == "Output")
    return msg(
        README,
        name=safe_text(graph.name),
        params=f"{analysis.total_params:,}",
        shape_in=", ".join(map(str, analysis.infos[input_node.id].shape or ())),
        dtype=analysis.infos[input_node.id].dtype,
        shape_out=", ".join(map(str, analysis.infos[output_node.id].shape or ())),
        class_name=class_name(graph.name),
        settings=msg(
            "epochs {epochs}, {optimizer}, lr {lr}",
            epochs=defaults.epochs,
            optimizer=defaults.optimizer,
            lr=defaults.lr,
        ),
    ).render(lang or "en")
