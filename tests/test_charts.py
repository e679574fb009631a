"""The Train page's figures and the live graph's health rules, from metric records written the
way runtime/runs.py writes them."""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from builder.graph import load_graph
from pages.parts import charts, live_graph

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "builder" / "templates"


def step(n: int, loss: float, lr: float = 1e-3) -> dict:
    return {
        "kind": "step",
        "step": n,
        "epoch": 0,
        "loss": loss,
        "lr": lr,
        "samples_per_s": 500.0,
        "time": n,
    }


def epoch(n: int, at_step: int, val_loss: float | None, val_accuracy: float | None) -> dict:
    return {
        "kind": "epoch",
        "epoch": n,
        "step": at_step,
        "train_loss": 1.0,
        "train_accuracy": val_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "time": at_step,
    }


def plotted(values) -> list[float | None]:
    """A trace's values as plotly draws them: NaN is a gap (None)."""
    return [None if np.isnan(v) else float(v) for v in np.asarray(values, dtype=float)]


def trace(fig, name: str):
    return next(t for t in fig.data if t.name == name)


def test_records_are_grouped_by_kind_and_unknown_kinds_ignored():
    series = charts.series_from(
        [
            step(1, 2.0),
            epoch(1, 1, 1.5, 0.5),
            {"kind": "grad_norms", "step": 1, "norms": {"a": 1.0}},
            {"kind": "event", "step": 1, "message": "hi"},
            {"kind": "future-kind"},
            {"no": "kind"},
        ]
    )
    assert [len(series.steps), len(series.epochs), len(series.grad_norms), len(series.events)] == [
        1
    ] * 4


def test_records_missing_what_their_chart_needs_are_left_out():
    series = charts.series_from(
        [
            {"kind": "grad_norms", "step": 3},
            {"kind": "attention", "step": 3, "node": "a"},
            step(1, 2.0),
        ]
    )
    assert (series.grad_norms, series.attention, len(series.steps)) == ([], [], 1)
    charts.grad_norm_heatmap(series)
    live_graph.node_health(series)


def test_smoothing_is_debiased_so_the_first_point_is_the_value_itself():
    smoothed = charts.smooth(np.array([4.0, 2.0]), weight=0.5)
    assert smoothed.tolist() == pytest.approx([4.0, (0.5 * 0.5 * 4 + 0.5 * 2) / 0.75])


def test_smoothing_keeps_gaps_without_poisoning_later_points():
    assert plotted(charts.smooth(np.array([1.0, np.nan, 1.0]))) == [1.0, None, pytest.approx(1.0)]


def test_thinning_bounds_the_points_and_keeps_the_last():
    kept = charts.thin(10_001, max_points=1000)
    assert len(kept) <= 1001 and kept[-1] == 10_000 and (np.diff(kept) > 0).all()
    assert charts.thin(2).tolist() == [0, 1]


def test_loss_figure_draws_every_step_and_the_validation_loss_at_its_step():
    series = charts.series_from([step(1, 2.0), step(2, 1.0), epoch(1, 2, 0.8, 0.7)])
    fig = charts.loss_figure(series)
    assert plotted(trace(fig, "step loss").y) == [2.0, 1.0]
    assert plotted(trace(fig, "validation").x) == [2] and plotted(trace(fig, "validation").y) == [
        0.8
    ]


def test_non_finite_loss_is_a_gap_not_a_crash():
    fig = charts.loss_figure(
        charts.series_from([step(1, 2.0), step(2, float("nan")), step(3, float("inf"))])
    )
    assert plotted(trace(fig, "step loss").y) == [2.0, None, None]
    fig.to_json()


def test_empty_run_shows_a_waiting_message():
    fig = charts.loss_figure(charts.RunSeries())
    assert "waiting" in fig.layout.annotations[0].text


def test_accuracy_is_in_percent_and_regression_runs_show_the_mean_absolute_error():
    fig = charts.accuracy_figure(charts.series_from([epoch(1, 10, 0.5, 0.25)]))
    assert plotted(trace(fig, "validation").y) == [25.0]
    assert fig.layout.title.text == "Accuracy"
    record = {"kind": "epoch", "epoch": 1, "step": 10, "train_mae": 0.5, "val_mae": 0.25}
    regression = charts.accuracy_figure(charts.series_from([record]))
    assert regression.layout.title.text == "Mean absolute error"
    assert plotted(trace(regression, "validation").y) == [0.25]
    assert plotted(trace(regression, "train").y) == [0.5]


def test_confusion_matrix_shows_the_last_epochs_counts_true_class_down():
    first = {"kind": "epoch", "epoch": 1, "step": 5, "confusion": [[1, 0], [0, 1]]}
    last = {"kind": "epoch", "epoch": 2, "step": 10, "confusion": [[3, 1], [2, 4]]}
    fig = charts.confusion_figure(charts.series_from([first, last]))
    assert np.asarray(fig.data[0].z).tolist() == [[3, 1], [2, 4]]
    assert "epoch 2" in fig.layout.title.text
    assert fig.layout.yaxis.title.text == "true class"
    assert fig.layout.xaxis.title.text == "predicted"
    empty = charts.confusion_figure(charts.series_from([epoch(1, 10, 0.5, None)]))
    assert "no confusion matrix" in empty.layout.annotations[0].text


def test_reconstructions_sit_under_their_inputs():
    inputs = np.random.default_rng(0).random((3, 1, 8, 8))
    outputs = 1 - inputs
    fig = charts.reconstruction_figure(inputs, outputs)
    assert len(fig.data) == 6
    titles = sorted(a.text for a in fig.layout.annotations)
    assert titles == ["input 1", "input 2", "input 3", "output 1", "output 2", "output 3"]
    assert np.allclose(fig.data[1].z, inputs[1, 0]) and np.allclose(fig.data[4].z, outputs[1, 0])

    def top(trace) -> float:
        axis = "yaxis" + trace.yaxis.removeprefix("y")
        return fig.layout[axis].domain[1]

    assert top(fig.data[1]) > top(fig.data[4])  # inputs on the upper row


def test_learning_rate_figure_follows_the_schedule():
    fig = charts.lr_figure(charts.series_from([step(1, 1.0, lr=0.1), step(2, 1.0, lr=0.05)]))
    assert plotted(fig.data[0].y) == [0.1, 0.05]


def test_gradient_heatmap_is_log10_with_layers_in_graph_order():
    records = [
        {"kind": "grad_norms", "step": 10, "norms": {"fc": 100.0, "conv": 1e-8}},
        {"kind": "grad_norms", "step": 20, "norms": {"fc": 10.0, "conv": 0.0, "late": 1.0}},
    ]
    fig = charts.grad_norm_heatmap(charts.series_from(records), order=["conv", "fc"])
    heat = fig.data[0]
    assert list(heat.y) == ["conv", "fc", "late"]
    assert [plotted(row) for row in heat.z] == [
        [pytest.approx(-8.0), None],
        [2.0, 1.0],
        [None, 0.0],
    ]


def test_gradient_lines_have_one_trace_per_layer_on_a_log_axis():
    records = [{"kind": "grad_norms", "step": s, "norms": {"a": 1.0 * s, "b": 2.0}} for s in (1, 2)]
    fig = charts.grad_norm_lines(charts.series_from(records))
    assert [t.name for t in fig.data] == ["a", "b"] and plotted(trace(fig, "a").y) == [1.0, 2.0]
    assert fig.layout.yaxis.type == "log"


def test_attention_figure_has_one_heatmap_per_head_at_the_chosen_step():
    first = [[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [1.0, 0.0]]]
    later = [[[0.2, 0.8], [0.3, 0.7]], [[0.6, 0.4], [0.9, 0.1]]]
    series = charts.series_from(
        [
            {"kind": "attention", "step": 50, "node": "attn", "weights": first},
            {"kind": "attention", "step": 100, "node": "attn", "weights": later},
        ]
    )
    assert charts.attention_layers(series) == ["attn"] and charts.attention_steps(
        series, "attn"
    ) == [50, 100]
    fig = charts.attention_figure(series, "attn", step=50)
    assert len(fig.data) == 2 and [list(map(list, t.z)) for t in fig.data] == first
    assert "step 100" in charts.attention_figure(series, "attn").layout.title.text


def test_compare_overlays_every_selected_run():
    runs = {
        "run-a": charts.series_from([step(1, 2.0), step(2, 1.0)]),
        "run-b": charts.series_from([step(1, 3.0), epoch(1, 1, 2.5, 0.1)]),
    }
    fig = charts.compare_figure(runs)
    assert [t.name for t in fig.data] == ["run-a train", "run-b train", "run-b val"]
    assert trace(fig, "run-a train").y[0] == 2.0


def test_long_runs_are_thinned_before_plotting():
    series = charts.series_from([step(n, 1.0 / (n + 1)) for n in range(20_000)])
    fig = charts.loss_figure(series)
    assert len(trace(fig, "step loss").x) <= charts.MAX_POINTS + 1
    assert trace(fig, "step loss").x[-1] == 19_999
    assert math.isclose(trace(fig, "step loss").y[-1], 1 / 20_000)


# The live graph's health rules (pages/parts/live_graph.py).


def health_series(norms: dict, dead: dict | None = None, nonfinite: list | None = None):
    records = [{"kind": "grad_norms", "step": 10, "norms": norms}]
    for index, node in enumerate(nonfinite or [None]):
        records.append(
            {
                "kind": "health",
                "step": 10 + index,
                "dead_fraction": dead or {},
                "nonfinite_node": node,
            }
        )
    return charts.series_from(records)


def test_healthy_gradients_raise_no_alarm():
    report = live_graph.node_health(health_series({"c1": 0.05, "fc": 1.2}))
    assert report["c1"].alarms == () and report["fc"].grad_norm == 1.2


def test_vanishing_and_exploding_gradients_are_flagged_on_their_node():
    report = live_graph.node_health(health_series({"c1": 5e-8, "fc": 4e3, "ok": 1e-7}))
    assert "vanishing" in report["c1"].alarms[0]
    assert "exploding" in report["fc"].alarms[0]
    assert report["ok"].alarms == ()


def test_a_non_finite_gradient_counts_as_exploding():
    report = live_graph.node_health(health_series({"c1": float("nan"), "c2": float("inf")}))
    assert all(
        "exploding" in report[n].alarms[0] and "not finite" in report[n].alarms[0]
        for n in ("c1", "c2")
    )


def test_dead_relu_above_ninety_percent_zeros():
    report = live_graph.node_health(health_series({}, dead={"relu1": 0.95, "relu2": 0.9}))
    assert report["relu1"].alarms == ("dead ReLU: 95% zeros",)
    assert report["relu2"].alarms == ()


def test_the_first_non_finite_node_keeps_the_alarm_when_later_reports_name_another():
    report = live_graph.node_health(health_series({}, nonfinite=[None, "c3", "fc"]))
    assert report["c3"].alarms == ("first non-finite output",)
    assert "fc" not in report


def test_norm_colours_run_from_dark_for_vanishing_to_bright_for_large():
    brightness = [
        sum(int(live_graph.norm_colour(n)[i : i + 2], 16) for i in (1, 3, 5))
        for n in (1e-9, 1e-3, 1e2)
    ]
    assert brightness == sorted(brightness)
    assert live_graph.norm_colour(None) == live_graph.NO_GRADIENT
    assert live_graph.norm_colour(float("inf")) == live_graph.ALARM


def test_live_canvas_is_locked_and_marks_alarmed_nodes_red():
    graph = load_graph(open(TEMPLATE_DIR / "lenet5.json").read())
    state = live_graph.live_state(graph, live_graph.node_health(health_series({"c1": 1e-9})))
    nodes = {n["id"]: n for n in state["nodes"]}
    assert state["read_only"] is True
    assert nodes["c1"]["status"] == "error" and "vanishing gradient" in nodes["c1"]["note"]
    assert nodes["c3"]["status"] == "ok" and nodes["c3"]["note"] == ""
    assert nodes["c1"]["fill"] == live_graph.norm_colour(1e-9)
    assert nodes["c3"]["fill"] == live_graph.NO_GRADIENT  # not reported: no gradient colour
    assert len(state["edges"]) == len(graph.edges)


def test_node_text_reads_on_its_gradient_colour():
    dark, light = live_graph.norm_colour(1e-8), live_graph.norm_colour(1e3)
    assert live_graph.node_face("c1", "Conv2d", (0, 0), None)["ink"] == "#111827"
    health = live_graph.NodeHealth(grad_norm=1e-8)
    assert live_graph.node_face("c1", "Conv2d", (0, 0), health)["ink"] == "#ffffff"
    assert live_graph.node_face("c1", "Conv2d", (0, 0), health)["fill"] == dark != light
    assert live_graph.node_face("c1", "Conv2d", (0, 0), health)["params"] == "‖grad‖ 1.0e-08"


def test_user_text_in_node_ids_is_shown_literally_not_as_markup():
    hostile = "<img src=x onerror=alert(1)>"
    assert live_graph.node_face(hostile, "Linear", (0, 0), None)["name"] == hostile  # React text
    assert live_graph.markdown_literal("[a](b) *c*") == r"\[a\]\(b\) \*c\*"


def test_live_layout_keeps_the_build_layout_order_but_draws_it_closer():
    graph = load_graph(open(TEMPLATE_DIR / "lenet5.json").read())
    compact = live_graph.compact_positions(graph)
    rows = sorted({y for _, y in compact.values()})
    assert len(rows) == len(graph.nodes) and rows[1] - rows[0] < 110


def gan_step(n: int, d_loss: float, g_loss: float, d_real: float, d_fake: float) -> dict:
    return {
        "kind": "gan",
        "step": n,
        "d_loss": d_loss,
        "g_loss": g_loss,
        "d_real": d_real,
        "d_fake": d_fake,
    }


def test_gan_figures_plot_both_losses_and_both_verdicts():
    series = charts.series_from([gan_step(1, 1.4, 0.7, 0.5, 0.5), gan_step(2, 1.2, 0.9, 0.6, 0.4)])
    losses = charts.gan_loss_figure(series)
    smoothed = [t for t in losses.data if t.showlegend is not False]
    assert [t.name for t in smoothed] == ["discriminator", "generator"]
    raw = [t for t in losses.data if t.showlegend is False]
    assert plotted(raw[0].y) == [1.4, 1.2] and plotted(raw[1].y) == [0.7, 0.9]
    verdicts = charts.gan_verdict_figure(series)
    assert [t.name for t in verdicts.data] == ["D(x)", "D(G(z))"]
    assert plotted(verdicts.data[0].y)[0] == pytest.approx(0.5)
    assert "waiting" in charts.gan_loss_figure(charts.RunSeries()).layout.annotations[0].text


def test_the_sample_grid_shows_the_latest_samples():
    first = {"kind": "samples", "step": 5, "images": np.zeros((4, 1, 8, 8)).tolist()}
    latest = {"kind": "samples", "step": 9, "images": np.full((4, 1, 8, 8), 0.5).tolist()}
    fig = charts.sample_grid_figure(charts.series_from([first, latest]))
    assert len(fig.data) == 4 and np.allclose(fig.data[0].z, 0.5)
    assert fig.layout.title.text == "Generated samples, step 9"


def test_a_constant_learning_rate_gets_an_axis_around_its_value():
    series = charts.series_from(
        {"kind": "step", "step": s, "loss": 1.0, "lr": 0.001} for s in range(1, 5)
    )
    axis = charts.lr_figure(series).layout.yaxis.range
    assert axis is not None and axis[0] < 0.001 < axis[1] and axis[0] > 0
    varying = charts.series_from(
        {"kind": "step", "step": s, "loss": 1.0, "lr": 0.001 * s} for s in range(1, 5)
    )
    assert charts.lr_figure(varying).layout.yaxis.range is None


def test_gan_figures_are_the_latest_epoch_s_mean_as_the_summary_states_them():
    steps = [
        {"kind": "gan", "step": s, "epoch": 1, "d_loss": 1.0, "g_loss": 2.0, "d_real": r,
         "d_fake": 0.2}
        for s, r in ((1, 0.9), (2, 0.5))
    ]  # fmt: skip
    running = charts.series_from(steps)
    assert charts.gan_epoch_means(running)["d_real"] == pytest.approx(0.7)
    ended = {"kind": "epoch", "epoch": 1, "step": 2, "d_loss": 1.0, "g_loss": 2.0,
             "d_real": 0.63, "d_fake": 0.2}  # fmt: skip
    assert charts.gan_epoch_means(charts.series_from([*steps, ended]))["d_real"] == 0.63
    assert charts.gan_epoch_means(charts.series_from([])) == {}
