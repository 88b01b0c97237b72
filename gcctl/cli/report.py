"""`gcctl report`: evaluated runs, or transfer suites, compared in tables and charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.options import AsJson
from gcctl.errors import GcctlError
from gcctl.html import GALLERY_SIZE, PageOptions
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
    html: Annotated[bool, typer.Option(
        "--html", help="Also write index.html into --out: one self-contained page (open it from disk) with the sortable "
        "table, per-group bars, training curves, the gallery run's images per group (errors first) and a map of its "
        "store's features; runs' metrics only, not sweeps or transfer suites.")] = False,
    gallery_run: Annotated[Optional[str], typer.Option(
        "--gallery-run", metavar="NAME", help="With --html: the run whose predictions the gallery and the map show "
        "(default: the first groupcoop run, else the first run).")] = None,
    gallery_size: Annotated[Optional[int], typer.Option(
        "--gallery-size", metavar="N", help=f"With --html: the most images the gallery shows per group (default {GALLERY_SIZE}).")] = None,
    table: Annotated[Optional[Path], typer.Option(
        "--table", help="With --html: the dataset table the runs' features were extracted from (`gcctl data table`, "
        "e.g. pipeline/tables/waterbirds.parquet), whose images the gallery shows.")] = None,
    discovery: Annotated[Optional[Path], typer.Option(
        "--discovery", metavar="FILE", help="With --html: a `gcctl discover` discovery.json, its words shown beside "
        "the gallery.")] = None,
    groups_report: Annotated[Optional[list[Path]], typer.Option(
        "--groups-report", metavar="FILE", help="With --html: a `gcctl pseudo-label` agreement report (e.g. "
        "pipeline/groups/waterbirds.report.json), shown as its confusion matrix; repeat for more.")] = None,
    as_json: AsJson = False,
) -> None:
    """Compare evaluated runs: per-group accuracy chart, training curves (PNG) and a Markdown table; runs trained
    with --minority-per-group: worst-group accuracy against K (results.md, sweep.png); or transfer suites (their
    summary.json): the suite summaries side by side (Markdown) and as bars (suites.png).

    Example: gcctl report pipeline/metrics/zeroshot.json pipeline/metrics/coop.json pipeline/metrics/groupcoop.json --out pipeline/report

    Example: gcctl report pipeline/transfer/*/summary.json --out pipeline/report/transfer --readme docs/results.md

    Example: gcctl report pipeline/sweep/waterbirds/metrics-k*/*.json --every-image pipeline/metrics/waterbirds --out pipeline/report/sweep-waterbirds

    Example: gcctl report pipeline/metrics/waterbirds/*.json --out pipeline/report/waterbirds --html --table pipeline/tables/waterbirds.parquet --groups-report pipeline/groups/waterbirds.report.json
    """
    from gcctl.report import update_readme, write_report

    page = _page_options(html, gallery_run, gallery_size, table, groups_report or [], discovery)
    if every_image is not None:  # evaluate names each metrics file after its run
        metrics = [*metrics, *(every_image / f"{name}.json" for name in dict.fromkeys(path.stem for path in metrics))]
    written = write_report(metrics, out, overwrite=overwrite, readme=readme, compare=compare or [], resamples=resamples,
                           page=page)
    if readme is not None:
        update_readme(readme, out.name, written["markdown"])
    if as_json:
        typer.echo(json.dumps(written["paths"], indent=2))
    else:
        _print_report(written)


def _page_options(html: bool, gallery_run: str | None, gallery_size: int | None, table: Path | None,
                  groups_reports: list[Path], discovery: Path | None) -> PageOptions | None:
    """The page's options with --html; any of them without it is refused."""
    given = {"--gallery-run": gallery_run, "--gallery-size": gallery_size, "--table": table, "--groups-report": groups_reports,
             "--discovery": discovery}
    if not html:
        named = [option for option, value in given.items() if value is not None and value != []]
        if named:
            raise GcctlError(f"{named[0]} is an option of the HTML page; add --html, or leave it out")
        return None
    return PageOptions(gallery_run, GALLERY_SIZE if gallery_size is None else gallery_size, table, tuple(groups_reports),
                       discovery)


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
