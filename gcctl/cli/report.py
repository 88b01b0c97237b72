"""`gcctl report`: evaluated runs, or transfer suites, compared in tables and charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.options import AsJson
from gcctl.metrics import BOOTSTRAP_RESAMPLES


def report(
    metrics: Annotated[list[Path], typer.Argument(
        help="Metrics JSON files written by `gcctl evaluate`, one per run; or transfer suites' summary.json (`gcctl transfer`).")],
    out: Annotated[Path, typer.Option(
        "--out", help="Directory for per_group.png, curves.png and results.md (transfer suites: suites.png, results.md), "
        "written as a whole; not one holding anything but an earlier report.")],
    readme: Annotated[Optional[Path], typer.Option(
        "--readme", help="Also put the table into this file between <!-- results:NAME:start/end --> markers, NAME = the --out folder's name.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the report folder an earlier `gcctl report` wrote at --out (a folder whose "
        "results.md is gcctl's); nothing else is ever replaced.")] = False,
    every_image: Annotated[Optional[Path], typer.Option(
        "--every-image", metavar="DIR", help="For a K sweep: the folder of `gcctl evaluate` metrics of the same runs "
        "trained on every image (DIR/RUN.json), the sweep's 'all' column.")] = None,
    compare: Annotated[Optional[list[str]], typer.Option(
        "--compare", metavar="A:B", help="Also compare run A with run B (their names, e.g. groupcoop:linear) on the "
        "same test samples: the difference with its interval and a paired-bootstrap p-value; repeat for more pairs.")] = None,
    resamples: Annotated[int, typer.Option(
        "--resamples", help="Bootstrap draws behind each interval and paired comparison.")] = BOOTSTRAP_RESAMPLES,
    as_json: AsJson = False,
) -> None:
    """Compare evaluated runs: per-group accuracy chart, training curves (PNG) and a Markdown table; runs trained
    with --minority-per-group: worst-group accuracy against K (results.md, sweep.png); or transfer suites (their
    summary.json): the suite summaries side by side (Markdown) and as bars (suites.png).

    Example: gcctl report pipeline/metrics/zeroshot.json pipeline/metrics/coop.json pipeline/metrics/groupcoop.json --out pipeline/report

    Example: gcctl report pipeline/transfer/*/summary.json --out pipeline/report/transfer --readme docs/results.md

    Example: gcctl report pipeline/sweep/waterbirds/metrics-k*/*.json --every-image pipeline/metrics/waterbirds --out pipeline/report/sweep-waterbirds
    """
    from gcctl.report import update_readme, write_report

    if every_image is not None:  # evaluate names each metrics file after its run
        metrics = [*metrics, *(every_image / f"{name}.json" for name in dict.fromkeys(path.stem for path in metrics))]
    written = write_report(metrics, out, overwrite=overwrite, readme=readme, compare=compare or [], resamples=resamples)
    if readme is not None:
        update_readme(readme, out.name, written["markdown"])
    if as_json:
        typer.echo(json.dumps(written["paths"], indent=2))
    else:
        _print_report(written)


def _print_report(written: dict) -> None:
    """The report's tables (rich) and the files it wrote."""
    from rich.console import Console

    from gcctl.report import comparison_table, comparisons_table, suite_table, sweep_table

    console = Console()
    if "suites" in written:
        tables = [suite_table(summary) for summary in written["suites"]]
    elif "axis" in written:
        tables = [sweep_table(written["runs"], written["axis"])]
    else:
        tables = [comparison_table(written["runs"])]
        if written.get("comparisons"):
            tables.append(comparisons_table(written["comparisons"]))
    for table in tables:
        console.print(table)
    for path in written["paths"].values():
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(report)
