"""Every table and figure of gcctl: rich tables for the terminal, PNG plots and the Markdown comparison table.

Reads the metrics JSON written by `gcctl evaluate` (keys of `gcctl.metrics`, each {mean, std} over seeds),
a run directory's training curves (`gcctl.curves.read_seeded_curve`), the pseudo-labelling agreement report
and the pretraining loss history.

The top library layer: nothing but the CLI imports it. A library function that writes a figure as part of
its artifact (a run's `curve.png`, pretraining's `loss.png`, pseudo-labelling's confusion PNG) takes the
drawing function as its `plot=` argument, which the CLI fills from here. Likewise `write_report`'s `page`
(`gcctl.html.PageOptions`) brings the HTML page's own gathering and rendering, so a command that imports this
module for a plot never loads the page's code. Figures use `matplotlib.figure.Figure`, never pyplot, so no global
backend is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from rich.table import Table

from gcctl.curves import CURVE_DIR, read_seeded_curve
from gcctl.errors import GcctlError
from gcctl.files import atomic_directory, atomic_path, check_output, read_json, write_json
from gcctl.metrics import (
    BOOTSTRAP_RESAMPLES,
    CALIBRATION_KEYS,
    INTERVAL_KEYS,
    INTERVAL_LEVEL,
    METRIC_KEYS,
    bootstrap_intervals,
    paired_comparison,
    predictions_path,
    read_predictions,
)

REPORT_TABLE = "results.md"  # in every report folder; its first sentence is how `gcctl report` knows its own
_RUNS_OPENING = "Accuracy in % on the "
_SUITES_OPENING = "Zero-shot accuracy in %, mean ± std over seeds"
_SWEEP_OPENING = "Worst-group accuracy in % against"
COMPARISONS_CAPTION = (f"Paired comparisons (A − B on the same test samples; {INTERVAL_LEVEL:.0%} interval and p-value "
                       "from a paired bootstrap over samples and seeds):")
ALL_IMAGES = "all"  # the sweep's column for a run trained on every image (no --minority-per-group)

_HEADERS = {
    "acc_avg": "avg",
    "acc_wg": "worst-group",
    "acc_mean_group": "mean-group",
    "acc_adj_avg": "adjusted avg",
    "acc_balanced": "balanced",
    "acc_worst_class": "worst-class",
    "acc_wg_pseudo": "worst pseudo-group",  # a selection rule only: the worst group of inferred validation groups
}


def load_metrics(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The metrics files of `gcctl evaluate`, in the given order."""
    if not paths:
        raise GcctlError("no metrics files given; pass the JSON files written by `gcctl evaluate`")
    loaded = []
    for path in map(Path, paths):
        if not path.is_file():
            raise GcctlError(f"metrics file {path} not found; create it with `gcctl evaluate --out {path}`")
        metrics = read_json(path)
        if not isinstance(metrics, dict) or not all(key in metrics for key in (*METRIC_KEYS, "per_group", "provenance")):
            raise GcctlError(f"{path} is not a metrics file of `gcctl evaluate` (keys {', '.join(METRIC_KEYS)} expected)")
        loaded.append(metrics)
    return loaded


def label(metrics: dict) -> str:
    """A run's name in tables and legends: its run directory's name."""
    return metrics["provenance"]["run"]


def percent(stat: dict) -> str:
    """'87.1 ± 1.2' from {mean, std} fractions."""
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def with_interval(metrics: dict, key: str) -> str:
    """'87.1 ± 1.2 [85.0, 89.1]': the mean ± std over seeds and, where the run's predictions gave one, the
    bootstrap interval over seeds and test samples (`attach_intervals`)."""
    interval = metrics.get("interval", {}).get(key)
    text = percent(metrics[key])
    return text if interval is None else f"{text} [{100 * interval['over_seeds'][0]:.1f}, {100 * interval['over_seeds'][1]:.1f}]"


def calibration_text(metrics: dict, key: str = "ece_worst_group") -> str:
    """A calibration figure (`gcctl.metrics.calibration_metrics`) in percent, mean ± std; '–' where the metrics
    predate it."""
    stat = metrics.get("calibration", {}).get(key)
    return "–" if stat is None else percent(stat)


def attach_intervals(runs: list[dict], metrics_paths: Sequence[str | os.PathLike],
                     resamples: int = BOOTSTRAP_RESAMPLES) -> None:
    """Each run's bootstrap intervals (`gcctl.metrics.bootstrap_intervals`) from the predictions beside its metrics
    file, as `interval` (in memory: the metrics file stays as `gcctl evaluate` wrote it); none without them."""
    for metrics, path in zip(runs, metrics_paths):
        predictions = predictions_path(path)
        if predictions.is_file():
            metrics["interval"] = bootstrap_intervals(read_predictions(predictions)[0], resamples)
            metrics["predictions"] = str(predictions)


def compare_runs(runs: list[dict], pairs: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """`A:B` pairs of run names → paired comparisons of A minus B (`gcctl.metrics.paired_comparison`)."""
    by_name = {label(metrics): metrics for metrics in runs}
    compared = []
    for pair in pairs:
        first, sep, second = pair.partition(":")
        if not sep or first not in by_name or second not in by_name:
            raise GcctlError(f"--compare '{pair}' is not A:B of two reported runs (the runs: {', '.join(by_name)})")
        missing = [name for name in (first, second) if "predictions" not in by_name[name]]
        if missing:
            raise GcctlError(f"--compare '{pair}': run {missing[0]} has no predictions beside its metrics file; "
                             "evaluate it again with `gcctl evaluate`")
        frames = [read_predictions(by_name[name]["predictions"])[0] for name in (first, second)]
        compared.append({"a": first, "b": second, **paired_comparison(*frames, resamples=resamples)})
    return compared


def _p_value_text(p_value: float) -> str:
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def comparison_columns() -> list[str]:
    """The paired comparisons table's headers: A, B, then per compared metric its difference and p-value."""
    return ["A", "B", *(header for key in INTERVAL_KEYS for header in (f"{_HEADERS[key]} difference", "p"))]


def comparison_cells(row: dict) -> list[str]:
    """A, B, then per compared metric its difference with interval (percentage points) and p-value."""
    cells = [row["a"], row["b"]]
    for key in INTERVAL_KEYS:
        low, high = row[key]["interval"]
        cells += [f"{100 * row[key]['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]", _p_value_text(row[key]["p_value"])]
    return cells


def comparisons_markdown(compared: list[dict]) -> str:
    lines = [f"\n{COMPARISONS_CAPTION}\n",
             "| " + " | ".join(comparison_columns()) + " |",
             "|---|---|" + "---:|---:|" * len(INTERVAL_KEYS)]
    lines += ["| " + " | ".join(comparison_cells(row)) + " |" for row in compared]
    return "\n".join(lines) + "\n"


def comparisons_table(compared: list[dict]) -> Table:
    table = Table(title="A − B, paired bootstrap (percentage points)")
    table.add_column("A")
    table.add_column("B")
    for key in INTERVAL_KEYS:
        table.add_column(f"{_HEADERS[key]} diff", justify="right")
        table.add_column("p", justify="right")
    for row in compared:
        table.add_row(*comparison_cells(row))
    return table


def seeds_text(seeds: list) -> str:
    """'0,1,2'; '-' stands for a model without a known seed."""
    return ",".join("-" if seed is None else str(seed) for seed in seeds)


def group_table(metrics: dict) -> Table:
    """One run's accuracy per group, then its summary metrics."""
    provenance = metrics["provenance"]
    table = Table(title=f"{label(metrics)} ({provenance['method']}) on {provenance['split']}, seeds {seeds_text(provenance['seeds'])}")
    table.add_column("group")
    table.add_column("n", justify="right")
    table.add_column("accuracy %", justify="right")
    table.add_column("ECE %", justify="right")
    calibration = metrics.get("calibration", {}).get("per_group", {})
    for name, stats in metrics["per_group"].items():
        ece = calibration.get(name, {}).get("ece")
        table.add_row(name, str(stats["n"]), percent(stats["acc"]), "–" if ece is None else percent(ece))
    table.add_section()
    for key in METRIC_KEYS:
        table.add_row(key, "", percent(metrics[key]), "")
    for key in CALIBRATION_KEYS:
        table.add_row(key, "", "", calibration_text(metrics, key))
    return table


def group_supervision_text(metrics: dict) -> str:
    """Whose group labels a run used ("val", "train + val", "none"); "–" where its evaluation does not say."""
    splits = metrics["provenance"].get("group_supervision")
    if splits is None:
        return "–"
    return " + ".join(splits) if splits else "none"


def selection_text(metrics: dict) -> str:
    """What kept the run's epoch: 'val worst-group', 'val worst-class', …; '–' for a method that keeps none."""
    rule = metrics["provenance"].get("select_by")
    return "–" if rule is None else f"val {_HEADERS.get(rule, rule)}"


def comparison_table(runs: list[dict]) -> Table:
    table = Table(title=f"accuracy % (mean ± std over seeds [{INTERVAL_LEVEL:.0%} bootstrap interval])")
    table.add_column("run")
    table.add_column("group labels")
    for key in METRIC_KEYS:
        table.add_column(_HEADERS[key], justify="right")
    table.add_column("ECE worst group", justify="right")
    for metrics in runs:
        table.add_row(label(metrics), group_supervision_text(metrics), *(with_interval(metrics, key) for key in METRIC_KEYS),
                      calibration_text(metrics))
    return table


_SUITE_HEADERS = {
    "source_acc": "source",
    "domain_shift_acc": "domain shifts",
    "group_shift_acc_wg": "group shifts worst-group",
    "group_shift_acc_avg": "group shifts avg",
    "other_acc": "other",
}


def suite_table(summary: dict) -> Table:
    """A transfer suite's summary (`gcctl transfer`): the paper's columns, then every target, mean ± std over seeds."""
    table = Table(title=f"{summary['run']}: zero-shot transfer, accuracy % (mean ± std over seeds {', '.join(summary['seeds'])})")
    table.add_column("measure")
    table.add_column("accuracy %", justify="right")
    for key, stat in summary["mean"].items():
        table.add_row(_SUITE_HEADERS.get(key, key), percent(stat))
    return table


def _suite_columns(summaries: list[dict]) -> list[str]:
    """The summary measures every suite has, in the paper's order."""
    return [key for key in _SUITE_HEADERS if all(key in summary["mean"] for summary in summaries)]


def suite_markdown(summaries: list[dict]) -> str:
    """Transfer suites side by side: one row per run, the paper's summary columns, mean ± std over seeds."""
    columns = _suite_columns(summaries)
    targets = summaries[0]["targets"]
    roles = {role: ", ".join(name for name, target in targets.items() if target["role"] == role)
             for role in ("source", "domain", "group", "other")}
    lines = [f"| run | seeds | {' | '.join(_SUITE_HEADERS[key] for key in columns)} |",
             "|---|---|" + "---:|" * len(columns)]
    for summary in summaries:
        seeds = ",".join("-" if seed == "none" else seed for seed in summary["seeds"])
        lines.append(f"| {summary['run']} | {seeds} | " + " | ".join(percent(summary["mean"][key]) for key in columns) + " |")
    described = "; ".join(f"{role}: {names}" for role, names in roles.items() if names)
    return (f"{_SUITES_OPENING} ({described}); group shifts: the mean over their "
            "targets of worst-group and of average accuracy.\n\n" + "\n".join(lines) + "\n")


def plot_suites(summaries: list[dict], path: str | os.PathLike) -> None:
    """Grouped bars: each run's summary measures (mean, with the std over seeds as error bars)."""
    from matplotlib.figure import Figure

    columns = _suite_columns(summaries)
    figure = Figure(figsize=(2 + 1.6 * len(columns), 3.8), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(summaries)
    for index, summary in enumerate(summaries):
        means = [100 * summary["mean"][key]["mean"] for key in columns]
        stds = [100 * summary["mean"][key]["std"] for key in columns]
        axes.bar(np.arange(len(columns)) + index * width, means, width, yerr=stds, label=summary["run"], capsize=2)
    axes.set_xticks(np.arange(len(columns)) + width * (len(summaries) - 1) / 2, [_SUITE_HEADERS[key] for key in columns])
    axes.set_ylabel("accuracy %")
    axes.set_title("zero-shot transfer")
    axes.legend(fontsize=8)
    _save(figure, Path(path))


def write_suite_report(summaries: list[dict], out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """`results.md` and `suites.png` comparing transfer suites of the same targets, written as the folder `out`
    (`check_report_out`)."""
    check_report_out(out, overwrite)
    target_sets = {tuple(sorted(summary["targets"])) for summary in summaries}
    if len(target_sets) > 1:
        raise GcctlError("the suites scored different targets; compare suites of the same --target list")
    written = _write_plot_and_table(Path(out), "suites.png", lambda path: plot_suites(summaries, path),
                                    suite_markdown(summaries))
    return {"suites": summaries, **written}


def _write_plot_and_table(out: Path, plot_name: str, draw, markdown: str) -> dict:
    """The folder `out` (already checked) holding one figure, drawn by `draw(path)`, and the Markdown table."""
    names = {"plot": plot_name, "table": REPORT_TABLE}
    with atomic_directory(out) as staging:
        draw(staging / plot_name)
        (staging / REPORT_TABLE).write_text(markdown, encoding="utf-8")
    return {"markdown": markdown, "paths": {key: str(out / name) for key, name in names.items()}}


@dataclass(frozen=True)
class SweepAxis:
    """What a sweep varies: the provenance key, its column header, where its default (every image, every
    label) lies, and the words of its table and figure."""

    key: str  # in a metrics file's provenance
    header: Callable[[object], str]
    is_default: Callable[[object], bool]  # the run trained without the sweep's option
    default_column: str
    opening: str  # the table's opening, after "Worst-group accuracy in % against "
    draws: str  # how its samples are drawn
    xlabel: str
    title: str


SWEEP_AXES = (
    SweepAxis("minority_per_group", lambda k: f"K = {k}", lambda k: k is None, ALL_IMAGES,
              "K, the training images kept in each minority group (a group smaller than its class's largest; "
              f"{ALL_IMAGES}: every image)", "each seed draws its own images, the same for every method",
              "training images per minority group (K)", "few-sample minority groups"),
    SweepAxis("val_fraction", lambda f: f"{100 * f:g}%", lambda f: f is None or f == 1.0, "100%",
              "the share of each validation group whose group labels the run had (its selection, DFR's and TIE's "
              "fits, val-probe's pseudo-labels), the rest unused", "the samples are drawn once (--val-seed), the same "
              "for every method and seed", "validation samples with group labels",
              "validation-label budget"),
)


def sweep_axis(runs: list[dict]) -> SweepAxis | None:
    """The axis the runs sweep (a run off its default), None for none; two at once are refused."""
    swept = [axis for axis in SWEEP_AXES if any(not axis.is_default(m["provenance"].get(axis.key)) for m in runs)]
    if len(swept) > 1:
        raise GcctlError(f"the runs sweep both {' and '.join(axis.key for axis in swept)}; report each sweep on its own")
    return swept[0] if swept else None


def sweep_points(runs: list[dict], axis: SweepAxis) -> tuple[list, dict[str, dict]]:
    """A sweep's columns (its values, then the default column when some run is at the default) and, per run
    name, its metrics by column."""
    rows: dict[str, dict] = {}
    for metrics in runs:
        value = metrics["provenance"].get(axis.key)
        column = axis.default_column if axis.is_default(value) else value
        if column in rows.setdefault(label(metrics), {}):
            shown = column if column == axis.default_column else axis.header(column)
            raise GcctlError(f"two metrics files of run '{label(metrics)}' at {shown}; give each run once per value")
        rows[label(metrics)][column] = metrics
    values = sorted({column for row in rows.values() for column in row if column != axis.default_column})
    return values + ([axis.default_column] if any(axis.default_column in row for row in rows.values()) else []), rows


def _sweep_header(axis: SweepAxis, column) -> str:
    return column if column == axis.default_column else axis.header(column)


def sweep_markdown(runs: list[dict], axis: SweepAxis) -> str:
    """The sweep as one row per run, its worst-group accuracy (mean ± std over seeds) at each value."""
    columns, rows = sweep_points(runs, axis)
    lines = [f"| run | method | group labels | {' | '.join(_sweep_header(axis, c) for c in columns)} |",
             "|---|---|---|" + "---:|" * len(columns)]
    for name, row in rows.items():
        first = next(iter(row.values()))
        cells = [percent(row[k]["acc_wg"]) if k in row else "–" for k in columns]
        lines.append(f"| {name} | {first['provenance']['method']} | {group_supervision_text(first)} | " + " | ".join(cells) + " |")
    split = runs[0]["provenance"]["split"]
    return (f"{_SWEEP_OPENING} {axis.opening}, {split} split, mean ± std over seeds; {axis.draws}.\n\n"
            + "\n".join(lines) + "\n")


def sweep_table(runs: list[dict], axis: SweepAxis) -> Table:
    columns, rows = sweep_points(runs, axis)
    table = Table(title=f"worst-group accuracy % against {axis.xlabel} (mean ± std over seeds)")
    table.add_column("run")
    for k in columns:
        table.add_column(_sweep_header(axis, k), justify="right")
    for name, row in rows.items():
        table.add_row(name, *(percent(row[k]["acc_wg"]) if k in row else "–" for k in columns))
    return table


def plot_sweep(runs: list[dict], path: str | os.PathLike, axis: SweepAxis) -> None:
    """Worst-group accuracy against the swept value, one line per run (error bars: std over seeds)."""
    from matplotlib.figure import Figure

    columns, rows = sweep_points(runs, axis)
    figure = Figure(figsize=(6.4, 4), layout="constrained")
    axes = figure.subplots()
    for name, row in rows.items():
        at = [i for i, k in enumerate(columns) if k in row]
        stats = [row[columns[i]]["acc_wg"] for i in at]
        axes.errorbar(at, [100 * s["mean"] for s in stats], yerr=[100 * s["std"] for s in stats], marker="o",
                      capsize=2, label=name)
    axes.set_xticks(range(len(columns)), [_sweep_header(axis, k) for k in columns])
    axes.set_xlabel(axis.xlabel)
    axes.set_ylabel("worst-group accuracy %")
    axes.set_title(f"{axis.title} ({runs[0]['provenance']['split']} split)")
    axes.legend(fontsize="small")
    _save(figure, Path(path))


def write_sweep_report(runs: list[dict], out: Path, axis: SweepAxis) -> dict:
    """`results.md` and `sweep.png` of a sweep, written as the folder `out` (already checked)."""
    written = _write_plot_and_table(out, "sweep.png", lambda path: plot_sweep(runs, path, axis), sweep_markdown(runs, axis))
    return {"runs": runs, "axis": axis, **written}


def results_columns() -> list[tuple[str, bool]]:
    """The results table's headers, each with whether its column holds figures (right-aligned, sorted as numbers)."""
    return [*((header, False) for header in ("run", "method", "group labels", "epoch kept by", "seeds")),
            *((_HEADERS[key], True) for key in METRIC_KEYS), ("ECE worst group", True)]


def results_cells(metrics: dict) -> list[str]:
    """One run's row of the results table, in `results_columns` order."""
    provenance = metrics["provenance"]
    return [label(metrics), provenance["method"], group_supervision_text(metrics), selection_text(metrics),
            seeds_text(provenance["seeds"]), *(with_interval(metrics, key) for key in METRIC_KEYS), calibration_text(metrics)]


def results_caption(split: str) -> str:
    """The results table's opening: what its figures are (also the sentence by which `gcctl report` knows its own)."""
    return (f"{_RUNS_OPENING}{split} split, mean ± std over seeds; in brackets, where the predictions were there, "
            f"the {INTERVAL_LEVEL:.0%} bootstrap interval over seeds and test samples (resampled within each group). "
            "Group labels: the splits whose true group labels the run used, to train, balance or keep its best "
            "epoch (pseudo-labels count as what their strategy read); epoch kept by: the validation metric that "
            "picked the kept epoch (worst pseudo-group: of the validation groups a pseudo-labelling strategy "
            "inferred); ECE worst group: the highest expected calibration error of any group (lower is better).")


def markdown_table(runs: list[dict]) -> str:
    columns = results_columns()
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "".join("---:|" if figures else "---|" for _, figures in columns)]
    lines += ["| " + " | ".join(results_cells(metrics)) + " |" for metrics in runs]
    return results_caption(runs[0]["provenance"]["split"]) + "\n\n" + "\n".join(lines) + "\n"


def _save(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_per_group(runs: list[dict], path: str | os.PathLike) -> None:
    """Grouped bars: for every group, each run's accuracy (error bar: std over seeds)."""
    from matplotlib.figure import Figure

    groups = list(runs[0]["per_group"])
    figure = Figure(figsize=(max(6.0, 1.6 * len(groups)), 4))
    axes = figure.subplots()
    width = 0.8 / len(runs)
    for i, metrics in enumerate(runs):
        stats = [metrics["per_group"].get(group, {"acc": {"mean": 0.0, "std": 0.0}})["acc"] for group in groups]
        positions = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        axes.bar(positions, [100 * s["mean"] for s in stats], width, yerr=[100 * s["std"] for s in stats], label=label(metrics), capsize=2)
    axes.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    axes.set_ylabel("accuracy %")
    axes.set_ylim(0, 100)
    axes.set_title(f"accuracy per group ({runs[0]['provenance']['split']} split)")
    axes.legend(fontsize="small", ncol=2)
    _save(figure, Path(path))


def read_curve(run_dir: str | os.PathLike | None) -> list[dict]:
    """A feature run's curve; empty for runs without one (zero-shot, evaluated checkpoints)."""
    return read_seeded_curve(Path(run_dir) / CURVE_DIR) if run_dir else []


def _mean_by_epoch(curve: list[dict], key: str) -> tuple[list[int], list[float]]:
    by_epoch: dict[int, list[float]] = {}
    for record in curve:
        by_epoch.setdefault(record["epoch"], []).append(record[key])
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def plot_curves(curves: dict[str, list[dict]], path: str | os.PathLike) -> None:
    """Training loss and validation worst-group accuracy per epoch (mean over seeds), one line per run."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    loss_axes, wg_axes = figure.subplots(1, 2)
    for name, curve in curves.items():
        if not curve:
            continue  # a method without training (zeroshot) has no curve
        epochs, loss = _mean_by_epoch(curve, "loss")
        loss_axes.plot(epochs, loss, label=name)
        epochs, wg = _mean_by_epoch(curve, "val_acc_wg")
        wg_axes.plot(epochs, [100 * v for v in wg], label=name)
    loss_axes.set(xlabel="epoch", ylabel="training loss", title="training loss")
    wg_axes.set(xlabel="epoch", ylabel="accuracy %", title="validation worst-group accuracy", ylim=(0, 100))
    if wg_axes.lines:  # runs without training leave the axes empty
        wg_axes.legend(fontsize="small")
    _save(figure, Path(path))


def plot_run_curve(curve: list[dict], path: str | os.PathLike) -> None:
    """One run's `curve.png` from its curve records (one per seed and epoch): one line per seed (`train_run(plot=...)`)."""
    seeds = sorted({record["seed"] for record in curve})
    plot_curves({f"seed {seed}": [r for r in curve if r["seed"] == seed] for seed in seeds}, path)


def plot_pretraining_loss(history: list[dict], path: str | os.PathLike, model_name: str) -> None:
    """Pretraining's `loss.png`: InfoNCE loss per step, and the learning rate on a second axis (`pretrain(plot=...)`)."""
    from matplotlib.figure import Figure

    steps = [record["step"] for record in history]
    figure = Figure(figsize=(6, 3.5), layout="constrained")
    loss_axis = figure.add_subplot()
    loss_axis.plot(steps, [record["loss"] for record in history], color="tab:blue", linewidth=1)
    loss_axis.set(xlabel="step", ylabel="InfoNCE loss", title=f"pretraining {model_name}")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(steps, [record["lr"] for record in history], color="tab:orange", linestyle="--", linewidth=1)
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    _save(figure, Path(path))


def percent_or_dash(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def agreement_table(summary: dict) -> Table:
    """Pseudo-labelling's agreement report per group: true and inferred counts, precision and recall."""
    result = summary["agreement"]
    table = Table(
        title=(f"{summary['strategy']} pseudo groups vs true groups: accuracy {percent_or_dash(result['accuracy'])}% "
               f"({percent_or_dash(result['accuracy_up_to_relabelling'])}% up to relabelling), "
               f"{summary['fallback']} of {result['n']} below confidence {summary['options']['min_confidence']:g}")
    )
    table.add_column("group")
    for column in ("true n", "inferred n", "precision %", "recall %"):
        table.add_column(column, justify="right")
    for name, stats in result["per_group"].items():
        table.add_row(name, str(stats["true_n"]), str(stats["inferred_n"]),
                      percent_or_dash(stats["precision"]), percent_or_dash(stats["recall"]))
    return table


def plot_confusion(summary: dict, path: str | os.PathLike) -> None:
    """The agreement report's confusion matrix (`pseudo_label(plot=...)`): colour = share of the true group's
    samples, text = counts."""
    from matplotlib.figure import Figure

    confusion = np.array(summary["agreement"]["confusion"]["matrix"])
    names = summary["agreement"]["confusion"]["groups"]
    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.7 * len(names)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(confusion):
        axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color="white" if share[row, column] > 0.5 else "black")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    axes.set_xlabel("inferred group")
    axes.set_ylabel("true group")
    axes.set_title(f"{summary['strategy']}: accuracy {percent_or_dash(summary['agreement']['accuracy'])}%")
    figure.colorbar(image, ax=axes, label="share of the true group")
    _save(figure, Path(path))


def is_suite_summary(document: object) -> bool:
    """Whether a JSON document is a transfer suite's summary (`gcctl transfer`) rather than a metrics file."""
    return isinstance(document, dict) and {"run", "targets", "seeds", "mean"} <= set(document)


def is_report_folder(path: str | os.PathLike) -> bool:
    """Whether the folder `path` is a report `gcctl report` wrote: its `results.md` opens with one of the tables'
    fixed first sentences."""
    try:
        with open(Path(path) / REPORT_TABLE, encoding="utf-8") as handle:
            head = handle.read(max(map(len, (_RUNS_OPENING, _SUITES_OPENING, _SWEEP_OPENING))))
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith((_RUNS_OPENING, _SUITES_OPENING, _SWEEP_OPENING))


def check_report_out(out: str | os.PathLike, overwrite: bool, *, readme: str | os.PathLike | None = None,
                     inputs: Sequence[str | os.PathLike] = (), page=None) -> None:
    """Refuse, before any work, a report --out that is a file, a folder holding anything but an earlier report (which
    only `overwrite` replaces, as a whole), or the folder an input (a metrics file, a file the `page` reads) or the
    --readme to update lies in."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GcctlError(f"--out {out} is a file; give the folder to write the report into")
    named = [*(("metrics file", path) for path in inputs), *(page.inputs() if page is not None else []),
             *([("--readme", readme)] if readme is not None else [])]
    for option, path in named:
        if Path(path).resolve().is_relative_to(out.resolve()):
            raise GcctlError(f"{option} {path} is inside --out {out}, which the report replaces as a whole; keep it outside")
    check_output(out, "report", is_own=is_report_folder, replace_own=overwrite)


def check_one_dataset(runs: list[dict]) -> None:
    """Runs of different datasets (or of different tables of one layout) do not share a table or a chart."""
    names = sorted({str(m["provenance"]["dataset"]) for m in runs if m["provenance"].get("dataset") is not None})
    if len(names) > 1:
        raise GcctlError(f"the metrics files are of different datasets ({', '.join(names)}); report each dataset's runs "
                         "separately")
    fingerprints = sorted({m["provenance"]["dataset_fingerprint"] for m in runs
                           if m["provenance"].get("dataset_fingerprint") is not None})
    if len(fingerprints) > 1:
        shown = ", ".join(fingerprint[:12] for fingerprint in fingerprints)
        raise GcctlError(f"the metrics files are of different {names[0] if names else 'dataset'} tables (fingerprints "
                         f"{shown}); report each table's runs separately")


def write_report(metrics_paths: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False,
                 readme: str | os.PathLike | None = None, compare: Sequence[str] = (),
                 resamples: int = BOOTSTRAP_RESAMPLES, page=None) -> dict:
    """Per-group accuracy chart, training curves and Markdown table of the evaluated runs (of one dataset and
    split), written as the folder `out`; for runs trained with `--minority-per-group`, the K sweep
    (`write_sweep_report`: runs of one name at each K, and without it); for transfer suite summaries, their
    comparison (`write_suite_report`).
    An earlier report at `out` is replaced only with `overwrite`, a folder holding anything else never
    (`check_report_out`; `readme`, the file the caller will update, must lie outside `out`). Runs get bootstrap
    intervals from their predictions (`resamples` bootstrap draws); `compare` (`A:B` run names) adds paired
    comparisons; `page` (a `gcctl.html.PageOptions`, not imported here: see the module's docstring) adds
    `index.html`, for runs only (a sweep or suites refuse it)."""
    if resamples < 1:
        raise GcctlError(f"--resamples {resamples} must be at least 1 (the bootstrap's draws; {BOOTSTRAP_RESAMPLES} by default)")
    check_report_out(out, overwrite, readme=readme, inputs=metrics_paths, page=page)
    documents = [read_json(path) for path in metrics_paths if Path(path).is_file()]
    if documents and all(is_suite_summary(document) for document in documents) and len(documents) == len(metrics_paths):
        _refuse_page(page, "transfer suites get results.md and suites.png")
        return write_suite_report(documents, out, overwrite=overwrite)
    runs = load_metrics(metrics_paths)
    splits = {metrics["provenance"]["split"] for metrics in runs}
    if len(splits) > 1:
        raise GcctlError(f"the metrics files were evaluated on different splits ({', '.join(sorted(splits))}); compare runs on one split")
    check_one_dataset(runs)
    out = Path(out)
    axis = sweep_axis(runs)
    if axis is not None:
        _refuse_page(page, "a sweep gets results.md and sweep.png")
        return write_sweep_report(runs, out, axis)
    attach_intervals(runs, metrics_paths, resamples)
    compared = compare_runs(runs, compare, resamples)
    markdown = markdown_table(runs) + (comparisons_markdown(compared) if compared else "")
    curves = {label(m): read_curve(m["provenance"]["run_dir"]) for m in runs}
    gathered = page.gather(runs, out.resolve().name) if page is not None else None  # its reading and refusals, first
    names = {"per_group": "per_group.png", "curves": "curves.png", "table": REPORT_TABLE}
    with atomic_directory(out) as staging:
        plot_per_group(runs, staging / names["per_group"])
        plot_curves(curves, staging / names["curves"])
        (staging / names["table"]).write_text(markdown, encoding="utf-8")
        if compared:
            names["comparisons"] = "comparisons.json"
            write_json(staging / names["comparisons"], compared)
        if gathered is not None:
            names["page"] = page.file_name
            curves_png = (staging / names["curves"]).read_bytes() if any(curves.values()) else None
            (staging / page.file_name).write_text(gathered.render(runs, compared, curves_png), encoding="utf-8")
    return {"runs": runs, "comparisons": compared, "markdown": markdown,
            "paths": {key: str(out / name) for key, name in names.items()}}


def _refuse_page(page, instead: str) -> None:
    if page is not None:
        raise GcctlError(f"--html is for the metrics files of runs; {instead} only, so leave --html out")


def update_readme(readme: str | os.PathLike, section: str, markdown: str) -> None:
    """Replace the block between `<!-- results:SECTION:start -->` and `<!-- results:SECTION:end -->`.

    So the results tables (docs/results.md, and one in README.md) are regenerated from metrics files, never typed.
    """
    readme = Path(readme)
    start, end = f"<!-- results:{section}:start -->", f"<!-- results:{section}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise GcctlError(f"{readme} has no '{start}' … '{end}' markers; add them where the table belongs")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(f"{head}{start}\n{markdown}{end}{tail}")
