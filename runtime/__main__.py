"""`python -m runtime train GRAPH.json --dataset NAME ...`, `python -m runtime runs` and
`python -m runtime step GRAPH.json --dataset NAME --index I --out DIR`.

train runs the app's trainer headless (a remote GPU box, a script) and writes the same run folder
as the app; it prints one line per epoch and, last, one JSON object with the outcome. Exit codes:
0 completed or stopped, 1 the graph has errors, does not fit the device, or training failed or
diverged, 2 a file, a dataset or an option cannot be read. Every problem is one line on stderr,
never a traceback: a run's traceback goes to its trainer.log. runs lists the runs of a runs
folder and of each workspace in it (the app keeps runs/<workspace>/<run>). step writes one
training step out number by number (runtime/step.py; exit 1 for a graph or batch it cannot
step, 2 for a file or dataset it cannot read). Sentences are English,
or Chinese with --lang zh, as in `python -m compiler`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, get_args

from pydantic import ValidationError

import i18n
from builder.graph import GraphFormatError, os_reason, read_graph_file
from i18n import Message, msg
from runtime import runs, store
from compiler.analysis import analyse
from runtime.datasets import (
    BUILTIN_DATASETS,
    Dataset,
    DatasetError,
    check_compatibility,
    dataset_from_path,
    load_dataset,
)
from runtime.trainer import TrainConfig, dataset_for_run, train_run
from runtime.worker import run_worker, stop_on_signals

UPLOAD_SUFFIXES = (".csv", ".npz", ".txt")  # copied into the run; pictures are read where they lie


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        i18n.set_language(args.lang)
        if args.command == "train":
            return _train(args)
        if args.command == "runs":
            return _list(Path(args.runs))
        if args.command == "step":
            return _step(args)
        return _worker(Path(args.folder))
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return _fail(msg("interrupted"), 1)
    except Exception as exc:  # noqa: BLE001  (the last guard: one line, never a traceback)
        return _fail(msg("unexpected {kind}: {reason}", kind=type(exc).__name__, reason=exc), 1)


class _UsageError(Exception):
    """A bad command line: argparse's message, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line (no usage block) and never exits by itself."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m runtime", description=__doc__.split("\n")[0])
    language = i18n.language_arguments(_Parser)
    parser.set_defaults(lang="en")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train a graph file headless", parents=[language])
    train.add_argument("graph", type=Path)
    train.add_argument(
        "--dataset",
        default="digits",
        help="a built-in name, a .csv/.npz/.txt file, or a folder or .zip of class folders",
    )
    train.add_argument("--label-column", help="the label column of a CSV (default: the last)")
    train.add_argument(
        "--target", choices=("label", "input"), default="label", help="input: reproduce the input"
    )
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    optimizers = get_args(TrainConfig.model_fields["optimizer"].annotation)
    train.add_argument("--optimizer", choices=optimizers, default="adam")
    devices = get_args(TrainConfig.model_fields["device"].annotation)
    train.add_argument("--device", choices=devices, default="auto")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    for name in ("augment_crop", "augment_flip", "augment_rotation", "augment_jitter"):
        field = TrainConfig.model_fields[name]
        kind = {"augment_flip": None, "augment_crop": int}.get(name, float)
        options: dict[str, Any] = (
            {"action": "store_true"} if kind is None else {"type": kind, "default": field.default}
        )
        train.add_argument(f"--{name.replace('_', '-')}", help=field.description, **options)
    train.add_argument("--runs", default="runs", help="the runs folder (default: ./runs)")
    listing = commands.add_parser(
        "runs", help="list runs with their status, each workspace's too", parents=[language]
    )
    listing.add_argument("--runs", default="runs", help="the runs folder (default: ./runs)")
    step = commands.add_parser(
        "step", help="one training step written out number by number", parents=[language]
    )
    step.add_argument("graph", type=Path)
    step.add_argument("--dataset", help="a built-in name or a .csv/.npz file (default: the run's)")
    step.add_argument("--label-column", help="the label column of a CSV (default: the last)")
    step.add_argument("--target", choices=("label", "input"), help="input: reproduce the input")
    step.add_argument("--index", type=int, default=0, help="the first sample (0-based)")
    step.add_argument("--batch", type=int, default=1, help="samples in the batch (default 1)")
    step.add_argument("--optimizer", choices=optimizers, help="default: the run's, else adam")
    step.add_argument("--lr", type=float, help="default: the run's, else 0.001")
    step.add_argument("--weight-decay", type=float, help="default: the run's, else 0")
    step.add_argument("--seed", type=int, help="first weights and Dropout masks (default 0)")
    step.add_argument("--from-run", help="start from this run's checkpoint (a folder or run id)")
    step.add_argument("--runs", default="runs", help="where --from-run looks for a run id")
    step.add_argument("--out", type=Path, required=True, help="the folder to write")
    worker = commands.add_parser("worker", help="(used by the app) train an existing run folder")
    worker.add_argument("folder")
    return parser


def _fail(message: Message | str, code: int) -> int:
    """One line on stderr in the chosen language, and the exit code."""
    print(f"error: {i18n.render(message)}", file=sys.stderr)
    return code


def _train(args: argparse.Namespace) -> int:
    try:
        graph = read_graph_file(args.graph)  # bounded: /dev/zero or a FIFO is refused at once
    except OSError as exc:
        return _fail(msg("cannot read {path}: {reason}", path=args.graph, reason=os_reason(exc)), 2)
    except GraphFormatError as exc:
        return _fail(msg("{path}: {problem}", path=args.graph, problem=exc.text), 2)
    upload = Path(args.dataset)
    pictures = upload.suffix.lower() == ".zip" or upload.is_dir()
    is_file = upload.suffix.lower() in UPLOAD_SUFFIXES
    if (is_file and not upload.is_file()) or (pictures and not upload.exists()):
        return _fail(msg("no such data file: {file}", file=upload), 2)
    if not is_file and not pictures and args.dataset not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_DATASETS)
        return _fail(
            msg(
                "unknown dataset {name}; choose one of: {known}, a .csv/.npz/.txt file, or a"
                " folder or .zip of class folders",
                name=repr(args.dataset),
                known=known,
            ),
            2,
        )
    try:
        config = TrainConfig(
            dataset=(
                str(upload.resolve()) if pictures else upload.name if is_file else args.dataset
            ),
            label_column=args.label_column,
            target=args.target,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            device=args.device,
            seed=args.seed,
            amp=args.amp,
            augment_crop=args.augment_crop,
            augment_flip=args.augment_flip,
            augment_rotation=args.augment_rotation,
            augment_jitter=args.augment_jitter,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        return _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", 2)
    try:
        folder = runs.create_run(Path(args.runs), graph, config, upload if is_file else None)
    except runs.RunError as exc:
        return _fail(exc.detail, 1)
    except OSError as exc:
        return _fail(
            msg(
                "cannot write the run folder in {folder}: {reason}",
                folder=args.runs,
                reason=os_reason(exc),
            ),
            2,
        )
    stop = stop_on_signals()
    store.update_status(folder, pid=os.getpid(), pid_started=runs.process_start_time(os.getpid()))
    with (folder / store.LOG_FILE).open("a") as log, contextlib.redirect_stderr(log):
        result = train_run(  # a fault's traceback goes to the run's log, its sentence to status
            folder,
            on_epoch=lambda record: print(_epoch_line(record, config), flush=True),
            stop=stop,
        )
    summary = {
        "status": result.status,
        "val_loss": result.val_loss,
        "val_accuracy": result.val_accuracy,
        "val_mae": (result.metrics or {}).get("val_mae"),
        "epochs": result.epochs,
        "run": str(folder),
    }
    if result.status not in ("completed", "stopped"):
        print(i18n.render(store.message_from_json(result.code) or result.message), file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0 if result.status in ("completed", "stopped") else 1


def _step(args: argparse.Namespace) -> int:
    """One training step, written to --out (see runtime/step.py and README)."""
    from runtime import step as one_step  # (its imports are needed by this command alone)

    try:
        graph = read_graph_file(args.graph)
    except OSError as exc:
        return _fail(msg("cannot read {path}: {reason}", path=args.graph, reason=os_reason(exc)), 2)
    except GraphFormatError as exc:
        return _fail(msg("{path}: {problem}", path=args.graph, problem=exc.text), 2)
    analysis = analyse(graph)
    if not analysis.ok:
        return _fail(runs.graph_errors(analysis), 1)
    run_dir, run_config = None, TrainConfig()
    if args.from_run:
        run_dir = Path(args.from_run)
        if not run_dir.is_dir():
            run_dir = Path(args.runs) / args.from_run
        if not (run_dir / store.CONFIG_FILE).is_file():
            return _fail(
                msg("no run {run} (looked in {folder})", run=args.from_run, folder=args.runs), 2
            )
        try:
            run_config = TrainConfig.model_validate_json((run_dir / store.CONFIG_FILE).read_text())
        except (ValidationError, OSError):
            return _fail(msg("config.json of run {run} cannot be read", run=args.from_run), 2)
    chosen = {
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "target": args.target,
    }
    try:
        settings = run_config.model_copy(update={k: v for k, v in chosen.items() if v is not None})
        settings = TrainConfig.model_validate(settings.model_dump())
    except ValidationError as exc:
        first = exc.errors()[0]
        return _fail(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}", 2)
    input_node = next(n for n in graph.nodes if n.type == "Input")
    shape = tuple(analysis.infos[input_node.id].shape or ())
    try:
        dataset = _step_dataset(args, run_dir, settings, shape)
        problems = check_compatibility(analysis, dataset, settings.target)
        if problems:
            return _fail(problems[0], 1)
        x, y = one_step.batch_from(dataset, analysis, args.index, args.batch, settings.target)
        weights = one_step.run_weights(run_dir) if run_dir is not None else None
        record = one_step.take_step(analysis, x, y, settings, weights)
    except one_step.StepError as exc:
        return _fail(exc.detail, 1)
    except DatasetError as exc:
        return _fail(getattr(exc, "detail", None) or str(exc), 2)
    about = {
        "graph": graph.name,
        "dataset": dataset.name,
        "index": args.index,
        "batch": args.batch,
        "from_run": str(run_dir) if run_dir else None,
    }
    try:
        one_step.write_step(args.out, record, about)
    except OSError as exc:
        return _fail(msg("cannot write {path}: {reason}", path=args.out, reason=os_reason(exc)), 2)
    print(
        json.dumps(
            {
                "loss_before": record.loss_before,
                "loss_after": record.loss_after,
                "out": str(args.out),
            }
        )
    )
    return 0


def _step_dataset(
    args: argparse.Namespace, run_dir: Path | None, settings: TrainConfig, shape: tuple[int, ...]
) -> Dataset:
    """--dataset (a built-in name or a file), else the run's own data."""
    if args.dataset is None and run_dir is not None:
        return dataset_for_run(run_dir, settings, shape)
    name = args.dataset or "digits"
    upload = Path(name)
    if upload.suffix.lower() in (*UPLOAD_SUFFIXES, ".zip") or upload.is_dir():
        if not upload.exists():
            raise DatasetError(msg("no such data file: {file}", file=upload))
        return dataset_from_path(upload, args.label_column, shape, settings)
    return load_dataset(name, seed=settings.seed, input_shape=shape)


def _epoch_line(record: dict[str, Any], config: TrainConfig) -> str:
    parts = [f"epoch {record['epoch']}/{config.epochs}"]
    if "d_loss" in record:  # a GAN: both players' losses and the discriminator's verdicts
        parts += [f"D loss {record['d_loss']:.4f}", f"G loss {record['g_loss']:.4f}"]
        parts += [f"D(x) {record['d_real']:.2f}", f"D(G(z)) {record['d_fake']:.2f}"]
        return "  ".join(parts)
    parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("train_accuracy") is not None:
        parts.append(f"train acc {record['train_accuracy']:.1%}")
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if record.get("val_accuracy") is not None:
        parts.append(f"val acc {record['val_accuracy']:.1%}")
    if record.get("val_mae") is not None:
        parts.append(f"val MAE {record['val_mae']:.4f}")
    return "  ".join(parts)


def _list(runs_root: Path) -> int:
    """The runs in runs_root and in each workspace folder in it (shown as workspace/run), newest
    first; a run whose status.json is broken is listed as failed, saying why."""
    found = [(run.id, run) for run in runs.list_runs(runs_root)]
    for workspace in runs.workspaces(runs_root):
        found += [(f"{workspace.name}/{run.id}", run) for run in runs.list_runs(workspace)]
    if not found:
        print(i18n.render(msg("no runs in {folder}", folder=str(runs_root))))
    for name, run in sorted(found, key=lambda item: item[1].created, reverse=True):
        progress = msg(
            "epoch {epoch}/{epochs}, step {step}", epoch=run.epoch, epochs=run.epochs, step=run.step
        )
        label = runs.status_label(run.status)
        line = f"{name}  {label:<11}  {i18n.render(progress):<24}  {run.dataset:<12}"
        print(f"{line}  {runs.status_text(run)}".rstrip())
    return 0


def _worker(folder: Path) -> int:
    """Wait for the launcher to record the pid (it closes stdin), then train."""
    sys.stdin.read()
    return run_worker(folder)


if __name__ == "__main__":
    sys.exit(main())
