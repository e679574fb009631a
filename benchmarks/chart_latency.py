"""How long a training step takes to reach the Train page's chart (target: at most 1 s).

A writer appends step records to a run's metrics.jsonl the way the trainer does (a batch every
FLUSH_SECONDS); a reader does what the page's live fragment does every REFRESH_S: read_metrics from
its last offset, add the records to the run's series, build the loss and accuracy figures and
serialise them as Streamlit does. Latency is the time from a record's write to the moment a
figure holding its point is ready.

The baseline, measured in the same run, is the naive refresh: re-read the whole file and rebuild
the series from scratch every tick. Its cost grows with the run; the incremental one does not.

    .venv/bin/python benchmarks/chart_latency.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pages.parts import charts  # noqa: E402
from pages.train import REFRESH_S  # noqa: E402
from runtime import store  # noqa: E402
from builder.graph import load_graph  # noqa: E402
from runtime.runs import create_run, read_metrics  # noqa: E402
from runtime.trainer import FLUSH_SECONDS, TrainConfig  # noqa: E402

TEMPLATE = Path(__file__).resolve().parents[1] / "builder" / "templates" / "lenet5.json"
HISTORY_STEPS = 20_000
STEPS_PER_SECOND = 200
WATCH_SECONDS = 8.0
TARGET_S = 1.0


def step_record(step: int, written: float) -> dict:
    return {
        "kind": "step", "step": step, "epoch": 1 + step // 500, "loss": 2.3 / (1 + step / 500),
        "lr": 1e-3, "samples_per_s": 12_800.0, "time": written,
    }  # fmt: skip


def epoch_record(epoch: int) -> dict:
    return {
        "kind": "epoch", "epoch": epoch, "step": epoch * 500, "train_loss": 1 / epoch,
        "train_accuracy": 0.9, "val_loss": 1.1 / epoch, "val_accuracy": 0.88, "time": 0.0,
    }  # fmt: skip


def history() -> list[dict]:
    """A long run so far: steps, an epoch record every 500 steps, grad norms every 10."""
    records: list[dict] = []
    for step in range(1, HISTORY_STEPS + 1):
        records.append(step_record(step, 0.0))
        if step % 10 == 0:
            norms = {f"layer{i}": 0.01 * (i + 1) for i in range(8)}
            records.append({"kind": "grad_norms", "step": step, "norms": norms})
        if step % 500 == 0:
            records.append(epoch_record(step // 500))
    return records


def draw(series: charts.RunSeries) -> None:
    """What one tick of the live fragment draws, serialised for the browser."""
    charts.loss_figure(series).to_json()
    charts.accuracy_figure(series).to_json()


def incremental_tick(runs_dir: Path, run_id: str) -> Callable[[], set[float]]:
    """The page's refresh; returns the write times of the steps it just drew."""
    series, offset = charts.RunSeries(), 0

    def tick() -> set[float]:
        nonlocal offset
        records, offset = read_metrics(runs_dir, run_id, offset)
        series.add(records)
        draw(series)
        return {r["time"] for r in records if r.get("kind") == "step"}

    return tick


def full_reread_tick(runs_dir: Path, run_id: str) -> Callable[[], set[float]]:
    def tick() -> set[float]:
        records, _ = read_metrics(runs_dir, run_id, 0)
        draw(charts.series_from(records))
        return set()

    return tick


def tick_cost(tick: Callable[[], set[float]], repeats: int = 5) -> float:
    tick()  # the first read of the history is not a steady-state tick
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        tick()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def watch_latency(runs_dir: Path, run_id: str, log: store.MetricsLog) -> list[float]:
    """Write steps like the trainer while reading like the page; latency of every new step."""
    tick = incremental_tick(runs_dir, run_id)
    tick()
    write_times: dict[int, float] = {}
    done = threading.Event()

    def writer() -> None:
        step = HISTORY_STEPS
        while not done.is_set():
            batch = []
            for _ in range(int(STEPS_PER_SECOND * FLUSH_SECONDS)):
                step += 1
                batch.append(step_record(step, 0.0))
            written = time.time()
            for record in batch:
                record["time"] = written
                write_times[record["step"]] = written
            log.write(batch)
            time.sleep(FLUSH_SECONDS)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    latencies: list[float] = []
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        time.sleep(REFRESH_S)
        written = tick()
        ready = time.time()
        latencies += [ready - moment for moment in written]
    done.set()
    thread.join()
    return latencies


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        runs_dir = Path(folder)
        run_dir = create_run(runs_dir, load_graph(TEMPLATE.read_text()), TrainConfig())
        log = store.MetricsLog(run_dir / store.METRICS_FILE)
        log.write(history())
        incremental = tick_cost(incremental_tick(runs_dir, run_dir.name))
        baseline = tick_cost(full_reread_tick(runs_dir, run_dir.name))
        latencies = watch_latency(runs_dir, run_dir.name, log)
        log.close()
    worst = max(latencies)
    print(
        f"history: {HISTORY_STEPS:,} steps; trainer flush every {FLUSH_SECONDS} s;"
        f" page refresh every {REFRESH_S} s"
    )
    print(
        f"refresh work per tick: incremental {incremental * 1e3:.1f} ms,"
        f" full re-read baseline {baseline * 1e3:.1f} ms, ratio {baseline / incremental:.1f}x"
    )
    print(
        f"step written -> point on chart: median {statistics.median(latencies):.2f} s,"
        f" worst {worst:.2f} s over {len(latencies)} trainer flushes"
        f" (target <= {TARGET_S:.1f} s: {'met' if worst <= TARGET_S else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
