"""`gcctl report --html`: the report folder's `index.html`, one static page per benchmark.

`gather_page` reads what the page shows beyond the metrics (the gallery run's predictions, its images as
thumbnails from the dataset table, its store's features projected to 2-D, pseudo-labelling agreement reports)
and refuses bad input before anything is written; `render_page` turns it into one HTML string. The page needs no
server and no network: its style, script and images are inline, so it opens from disk. Nothing in it depends on
the clock or on where the files lie (names only, never paths), so the same inputs give the same bytes: the
report folder is a cached DVC output.

Beside `gcctl/report.py`, which owns every cell and caption the page shares with results.md and writes the
report folder: `write_report(page=PageOptions(...))` calls `PageOptions.gather` and `PageData.render`.
"""

from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Sequence

import numpy as np
from PIL import Image

from gcctl.datasets.images import to_rgb
from gcctl.datasets.table import DatasetTable
from gcctl.datasets.tar_members import open_image_source
from gcctl.errors import GcctlError
from gcctl.files import read_json
from gcctl.metrics import read_predictions, score_columns, seed_key, softmax
from gcctl.report import (
    COMPARISONS_CAPTION,
    comparison_cells,
    comparison_columns,
    label,
    percent,
    percent_or_dash,
    results_caption,
    results_cells,
    results_columns,
)
from gcctl.store import FeatureStore

if TYPE_CHECKING:
    import pandas as pd

    from gcctl.datasets.groups import GroupVocabulary

PAGE_FILE = "index.html"
GALLERY_SIZE = 24
GALLERY_METHOD = "groupcoop"  # the default gallery run is the first of this method's
THUMBNAIL_SIZE = 96  # pixels, the longer side: a 4-group benchmark's gallery is a few hundred kB
MAP_POINTS = 3000  # the most images the map draws (an SVG circle each)
MAP_SEED = 0  # fixed: the page is a pure function of its inputs
# Okabe & Ito's colour-blind-safe palette, ordered so the first four (a 2 × 2 benchmark's groups) differ most;
# cycled beyond eight categories.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
RIGHT_WRONG = {"right": "#009E73", "wrong": "#D55E00", "not scored": "#999999"}
_BAR = "#0072B2"
_NUM = ' class="num"'  # a cell holding a figure


@dataclass(frozen=True)
class PageOptions:
    """What `gcctl report --html` takes beyond the metrics files."""

    gallery_run: str | None = None  # None: the first groupcoop run, else the first run
    gallery_size: int = GALLERY_SIZE
    table: str | os.PathLike | None = None  # the dataset table whose images the gallery shows
    groups_reports: Sequence[str | os.PathLike] = ()  # `gcctl pseudo-label` agreement reports
    discovery: str | os.PathLike | None = None  # a `gcctl discover` discovery.json, shown beside the gallery
    file_name: ClassVar[str] = PAGE_FILE

    def inputs(self) -> list[tuple[str, str | os.PathLike]]:
        """The files the page reads, by the option that names them."""
        return [*([("--table", self.table)] if self.table is not None else []),
                *(("--groups-report", path) for path in self.groups_reports),
                *([("--discovery", self.discovery)] if self.discovery is not None else [])]

    def gather(self, runs: list[dict], title: str) -> PageData:
        """`gather_page` with these options: how `gcctl.report.write_report` calls the page, never importing it."""
        return gather_page(runs, self, title)


@dataclass(frozen=True)
class Tile:
    image: bytes | None  # a JPEG; None where the image could not be read
    true: str
    predicted: str
    probability: float  # of the predicted class
    group: str
    wrong: bool

    def description(self) -> str:
        return f"true {self.true}, predicted {self.predicted} (p={self.probability:.2f}), group {self.group}"


@dataclass(frozen=True)
class GroupGallery:
    group: str
    n: int  # the group's images in the split
    wrong: int
    tiles: list[Tile]


@dataclass(frozen=True)
class MapPoints:
    xy: np.ndarray  # [n, 2]: the images' features on their first two principal axes
    y: np.ndarray
    group: np.ndarray
    correct: np.ndarray | None  # 1 right, 0 wrong, -1 not in the predictions; None without predictions
    total: int  # the split's images, of which n are drawn
    store: str  # the store's file name
    class_names: list[str]
    group_names: list[str]


@dataclass(frozen=True)
class PageData:
    """Everything the page shows beyond the runs' metrics; a section that cannot be shown is the sentence why."""

    title: str
    split: str
    gallery_run: str
    seed: str | None  # the predictions' seed the gallery and the map show
    gallery_size: int
    gallery: list[GroupGallery] | str
    points: MapPoints | str
    agreements: list[tuple[str, dict]]  # (file name, agreement report)
    discovery: dict | None = None  # `gcctl discover`'s discovery.json

    def render(self, runs: list[dict], compared: list[dict], curves_png: bytes | None) -> str:
        return render_page(runs, compared, self, curves_png)


# ---------------------------------------------------------------------------- gathering


def gather_page(runs: list[dict], options: PageOptions, title: str) -> PageData:
    """Read and check what the page shows; a missing part (no predictions, no --table, unreadable images, no
    store) becomes the page's sentence about it, bad input a `GcctlError`."""
    if options.gallery_size < 1:
        raise GcctlError(f"--gallery-size {options.gallery_size} must be at least 1 (images per group; "
                         f"{GALLERY_SIZE} by default)")
    chosen = pick_gallery_run(runs, options.gallery_run)
    agreements = [read_groups_report(path) for path in options.groups_reports]
    table = load_page_table(options.table, runs)
    seed, rows, vocabulary = None, None, None
    if "predictions" in chosen:  # `attach_intervals` found them beside the metrics file
        frame, vocabulary = read_predictions(chosen["predictions"])
        seed, rows = scored_rows(frame, vocabulary)
    discovery = None if options.discovery is None else read_discovery(options.discovery)
    return PageData(title, chosen["provenance"]["split"], label(chosen), seed, options.gallery_size,
                    _gallery_or_reason(chosen, rows, vocabulary, table, options), map_points(chosen, rows), agreements,
                    discovery)


def pick_gallery_run(runs: list[dict], name: str | None) -> dict:
    """The run named `name`; by default the first groupcoop run, else the first run."""
    if name is None:
        return next((metrics for metrics in runs if metrics["provenance"]["method"] == GALLERY_METHOD), runs[0])
    by_name = {label(metrics): metrics for metrics in runs}
    if name not in by_name:
        raise GcctlError(f"--gallery-run {name} is not a reported run (the runs: {', '.join(by_name)})")
    return by_name[name]


def read_groups_report(path: str | os.PathLike) -> tuple[str, dict]:
    """(file name, report) of a `gcctl pseudo-label` agreement report, checked for what the page reads of it."""
    report = read_json(path)
    agreement = report.get("agreement") if isinstance(report, dict) else None
    confusion = agreement.get("confusion") if isinstance(agreement, dict) else None
    if (not isinstance(confusion, dict) or not {"groups", "matrix"} <= set(confusion) or "strategy" not in report
            or not {"n", "accuracy", "accuracy_up_to_relabelling"} <= set(agreement)):
        raise GcctlError(f"--groups-report {path} is not an agreement report of `gcctl pseudo-label` "
                         "(e.g. pipeline/groups/NAME.report.json)")
    return Path(path).name, report


def read_discovery(path: str | os.PathLike) -> dict:
    """A `gcctl discover` result, checked for what the page reads of it."""
    result = read_json(path)
    if not isinstance(result, dict) or not {"classes", "discovered", "provenance"} <= set(result):
        raise GcctlError(f"--discovery {path} is not the discovery.json of `gcctl discover`")
    return result


def load_page_table(path: str | os.PathLike | None, runs: list[dict]) -> DatasetTable | None:
    """The --table, refused unless it is the table the runs' features were extracted from."""
    if path is None:
        return None
    table = DatasetTable.load(path)
    recorded = [m["provenance"]["dataset_fingerprint"] for m in runs if m["provenance"].get("dataset_fingerprint")]
    if recorded and table.fingerprint() != recorded[0]:  # one at most (`check_one_dataset`)
        raise GcctlError(f"--table {path} is another table (fingerprint {table.fingerprint()[:12]}) than the one the "
                         f"runs' features were extracted from ({recorded[0][:12]}); pass that one")
    return table


def scored_rows(frame: "pd.DataFrame", vocabulary: "GroupVocabulary") -> tuple[str, "pd.DataFrame"]:
    """The first seed's predictions (its key, its rows) with `p`, the softmax probability of the predicted class."""
    seed, rows = next(iter(frame.groupby("seed", sort=True, dropna=False)))
    probabilities = softmax(rows[score_columns(vocabulary)].to_numpy())
    return seed_key(seed), rows.assign(p=probabilities[np.arange(len(rows)), rows["pred"].to_numpy()])


def _gallery_or_reason(chosen: dict, rows: "pd.DataFrame | None", vocabulary: "GroupVocabulary | None",
                       table: DatasetTable | None, options: PageOptions) -> list[GroupGallery] | str:
    if rows is None:
        return (f"Run {label(chosen)} has no predictions beside its metrics file, so there is no gallery; "
                "evaluate it again with `gcctl evaluate` to write them.")
    if table is None:
        return ("No dataset table was given, so there is no gallery; pass --table with the table the runs' "
                "features were extracted from (e.g. pipeline/tables/NAME.parquet).")
    galleries = gallery(rows, vocabulary, table, options.gallery_size)
    if not any(tile.image for group in galleries for tile in group.tiles):
        return (f"None of the gallery's images could be read under the root of the table "
                f"{Path(options.table).name}: the images have moved, or the table was written on another machine; "
                "rerun `gcctl data table` where the images are.")
    return galleries


def gallery_order(rows: "pd.DataFrame") -> "pd.DataFrame":
    """Errors first, the most confident first (the surest mistakes); then right answers, the least confident first
    (the nearest misses); ties by id. Adds `wrong`."""
    wrong = rows["pred"].to_numpy() != rows["y"].to_numpy()
    order = np.where(wrong, -rows["p"].to_numpy(), 1 + rows["p"].to_numpy())
    return rows.assign(wrong=wrong, order=order).sort_values(["order", "id"], kind="stable")


def gallery(rows: "pd.DataFrame", vocabulary: "GroupVocabulary", table: DatasetTable, size: int) -> list[GroupGallery]:
    """Per group present in `rows` (vocabulary order), its first `size` images in `gallery_order` as tiles."""
    paths = dict(zip(table.frame["id"].astype(str), table.frame["path"]))
    ordered = gallery_order(rows)
    galleries = []
    for index, name in enumerate(vocabulary.names):
        members = ordered[ordered["group"] == index]
        if len(members):
            tiles = [Tile(_thumbnail_or_none(table.root, paths.get(str(row.id))), vocabulary.class_names[row.y],
                          vocabulary.class_names[row.pred], float(row.p), name, bool(row.wrong))
                     for row in members.head(size).itertuples()]
            galleries.append(GroupGallery(name, len(members), int(members["wrong"].sum()), tiles))
    return galleries


def _thumbnail_or_none(root: Path, relative: str | None) -> bytes | None:
    """None for an id the table lacks or an image that cannot be read: the page shows its caption without it."""
    if relative is None:
        return None
    try:
        return thumbnail(os.path.join(root, relative))
    except (OSError, ValueError, GcctlError, Image.DecompressionBombError):
        return None


def thumbnail(path: str, size: int = THUMBNAIL_SIZE) -> bytes:
    """The image at `path` (a file, or a tar shard's `shard::member`) as a JPEG within size × size pixels,
    never enlarged; the same image gives the same bytes."""
    with Image.open(open_image_source(path)) as image:
        image.draft("RGB", (size, size))  # a large JPEG is decoded at a reduced scale
        small = to_rgb(image)
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def subsample(n: int, limit: int = MAP_POINTS, seed: int = MAP_SEED) -> np.ndarray:
    """Up to `limit` of the indices 0..n-1, increasing, drawn without replacement with a fixed seed."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def project_2d(features: np.ndarray) -> np.ndarray:
    """[n, 2]: the rows on the first two principal axes of their centred features. An exact SVD, so no seed;
    each axis's sign is fixed (its largest loading positive), since an SVD's are arbitrary."""
    centred = np.asarray(features, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:2]
    axes = axes * np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    projected = centred @ axes.T
    return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))  # fewer than two axes: the rest are 0


def map_points(chosen: dict, rows: "pd.DataFrame | None") -> MapPoints | str:
    """Up to `MAP_POINTS` images of the evaluated split from the gallery run's store, projected to 2-D, with
    whether the run's predictions (`rows`) got them right."""
    path = Path(chosen["provenance"]["features"])
    if not path.is_file():
        return (f"The feature store {path.name} of run {label(chosen)} is not there (moved, or not extracted "
                "here), so there is no map.")
    with FeatureStore(path) as store:
        index = store.split_index(chosen["provenance"]["split"])
        drawn = index[subsample(len(index))]
        features, ids = store.load_features(drawn), store.ids[drawn]
        y, group, vocabulary = store.y[drawn], store.group[drawn], store.vocabulary
    correct = None
    if rows is not None:
        right = dict(zip(rows["id"], rows["pred"].to_numpy() == rows["y"].to_numpy()))
        correct = np.array([int(right[i]) if i in right else -1 for i in ids], dtype=np.int64)
    return MapPoints(project_2d(features), y, group, correct, len(index), path.name, vocabulary.class_names,
                     vocabulary.names)


# ---------------------------------------------------------------------------- rendering


def render_page(runs: list[dict], compared: list[dict], data: PageData, curves_png: bytes | None) -> str:
    """The whole page: results table, per-group bars and curves, gallery, map, agreement; `curves_png` the
    report's curves.png (None where no run has a curve)."""
    sections = [("results", "Results", _results_section(runs, compared, data.split)),
                ("groups", "Accuracy per group", _groups_section(runs, curves_png)),
                ("gallery", f"Images per group: run {data.gallery_run}", _gallery_section(data)),
                ("map", "Embedding map", _map_section(data))]
    if data.discovery is not None:
        sections.insert(3, ("discovery", "Words that tell the flagged images apart", _discovery_section(data.discovery)))
    if data.agreements:
        sections.append(("agreement", "Pseudo-labels against the true groups", _agreement_section(data.agreements)))
    nav = "".join(f'<li><a href="#{key}">{escape(heading)}</a></li>' for key, heading, _ in sections)
    body = "".join(f'<section id="{key}" aria-labelledby="{key}-heading"><h2 id="{key}-heading">{escape(heading)}</h2>'
                   f"{content}</section>\n" for key, heading, content in sections)
    heading = f"{data.title}: {len(runs)} runs on the {data.split} split"
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
            f'<h1>{escape(heading)}</h1>\n<nav aria-label="Sections"><ul>{nav}</ul></nav>\n{body}</main>\n'
            f"<script>{_SCRIPT}</script>\n</body>\n</html>\n")


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _table(headers: list[tuple[str, bool]], rows: list[list[str]], caption: str, sortable: bool) -> str:
    """A table whose first column heads its rows; `headers` (text, holds figures); sortable: header buttons."""
    def head(text: str, figures: bool) -> str:
        kind = f'{_NUM} data-type="number"' if figures else ""
        if not sortable:
            return f'<th scope="col"{kind}>{escape(text)}</th>'
        return f'<th scope="col"{kind} aria-sort="none"><button type="button">{escape(text)}</button></th>'

    def cell(text: str, figures: bool) -> str:
        if not figures:
            return f"<td>{escape(text)}</td>"
        figure, bracket, interval = text.partition(" [")  # the interval on a line of its own keeps the table narrow
        below = f'<span class="interval">[{escape(interval)}</span>' if bracket else ""
        return f"<td{_NUM}>{escape(figure)}{below}</td>"

    def row(cells: list[str]) -> str:
        rest = "".join(cell(text, figures) for text, (_, figures) in zip(cells[1:], headers[1:]))
        return f'<tr><th scope="row">{escape(cells[0])}</th>{rest}</tr>'

    classes = ' class="sortable"' if sortable else ""
    return (f'<div class="scroll"><table{classes}><caption>{escape(caption)}</caption><thead><tr>'
            + "".join(head(*header) for header in headers) + "</tr></thead><tbody>"
            + "".join(row(cells) for cells in rows) + "</tbody></table></div>")


def _results_section(runs: list[dict], compared: list[dict], split: str) -> str:
    text = f"<p>{escape(results_caption(split))} Click a column's header (or press Enter on it) to sort by it.</p>"
    text += _table(results_columns(), [results_cells(metrics) for metrics in runs], "The runs", sortable=True)
    if compared:
        headers = [(header, index >= 2) for index, header in enumerate(comparison_columns())]
        text += f"<p>{escape(COMPARISONS_CAPTION)}</p>" + _table(headers, [comparison_cells(row) for row in compared],
                                                                  "Paired comparisons", sortable=False)
    return text


def group_bars(runs: list[dict], group: str, index: int) -> str:
    """One group's accuracy per run as an SVG bar chart (bar: mean, whisker: std over seeds)."""
    left, length, row_height, top = 170, 200, 20, 22
    height = top + row_height * len(runs) + 6
    stats = [metrics["per_group"].get(group, {}).get("acc") for metrics in runs]
    described = "; ".join(f"{label(m)} {'not evaluated' if stat is None else percent(stat)}" for m, stat in zip(runs, stats))
    parts = [f'<svg viewBox="0 0 {left + length + 100} {height}" role="img" '
             f'aria-labelledby="bars-{index} bars-{index}-desc">',
             f'<title id="bars-{index}">accuracy % of each run on {escape(group)}</title>',
             f'<desc id="bars-{index}-desc">{escape(described)}</desc>']
    for tick in (0, 50, 100):
        x = left + length * tick / 100
        parts.append(f'<line x1="{x:g}" y1="{top - 4}" x2="{x:g}" y2="{height - 4}" class="grid"/>'
                     f'<text x="{x:g}" y="{top - 8}" text-anchor="middle" class="tick">{tick}</text>')
    for row, (metrics, stat) in enumerate(zip(runs, stats)):
        y = top + row * row_height
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(label(metrics))}</text>')
        if stat is None:
            parts.append(f'<text x="{left + length + 8}" y="{y + 14}">–</text>')
            continue
        mean, low, high = (left + length * min(max(value, 0.0), 1.0)
                           for value in (stat["mean"], stat["mean"] - stat["std"], stat["mean"] + stat["std"]))
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{mean - left:.1f}" height="{row_height - 6}" fill="{_BAR}"/>'
                     f'<line x1="{low:.1f}" y1="{y + 10}" x2="{high:.1f}" y2="{y + 10}" class="whisker"/>'
                     f'<text x="{left + length + 8}" y="{y + 14}">{escape(percent(stat))}</text>')
    return "".join(parts) + "</svg>"


def _groups_section(runs: list[dict], curves_png: bytes | None) -> str:
    groups = list(dict.fromkeys(group for metrics in runs for group in metrics["per_group"]))
    sizes = {group: stats["n"] for metrics in runs for group, stats in metrics["per_group"].items()}
    panels = "".join(f"<figure><figcaption>{escape(group)} ({sizes[group]} images)</figcaption>"
                     f"{group_bars(runs, group, index)}</figure>" for index, group in enumerate(groups))
    text = ("<p>Accuracy in % on each group, mean ± std over seeds (the whisker spans the std).</p>"
            f'<div class="panels">{panels}</div><h3>Training curves</h3>')
    if curves_png is None:
        return text + _note("No run has a training curve (training-free methods and evaluated checkpoints have none).")
    named = ", ".join(label(m) for m in runs)
    return text + (f'<img class="curves" src="data:image/png;base64,{base64.b64encode(curves_png).decode()}" '
                   f'alt="Training loss and validation worst-group accuracy per epoch, mean over seeds, of the runs with '
                   f'a curve among {escape(named)}">')


def _tile(tile: Tile) -> str:
    kind, mark = ("wrong", "✗ wrong") if tile.wrong else ("right", "✓ right")
    if tile.image is None:
        box = f"width:{THUMBNAIL_SIZE}px;height:{THUMBNAIL_SIZE}px;line-height:{THUMBNAIL_SIZE}px"
        picture = (f'<div class="missing" style="{box}" role="img" aria-label="{escape(tile.description())}: image '
                   'not found">image not found</div>')
    else:
        picture = (f'<img src="data:image/jpeg;base64,{base64.b64encode(tile.image).decode()}" width="{THUMBNAIL_SIZE}" '
                   f'height="{THUMBNAIL_SIZE}" alt="{escape(tile.description())}">')
    return (f'<li class="tile {kind}"><figure>{picture}<figcaption><span class="mark">{mark}</span><br>true '
            f"{escape(tile.true)}<br>predicted {escape(tile.predicted)}<br>p = {tile.probability:.2f}</figcaption></figure></li>")


def _gallery_section(data: PageData) -> str:
    if isinstance(data.gallery, str):
        return _note(data.gallery)
    seed = "" if data.seed == seed_key(None) else f" (seed {escape(data.seed)})"  # a model without a seed: its only one
    text = (f"<p>Run {escape(data.gallery_run)}'s predictions on the {escape(data.split)} split{seed}: "
            "per group, its errors first, the most confident first, then its right answers, the least confident first; "
            f"at most {data.gallery_size} images per group. p is the softmax probability of the predicted class.</p>")
    for group in data.gallery:
        text += (f"<h3>{escape(group.group)}</h3><p>{group.wrong} of {group.n} images wrong; {len(group.tiles)} shown.</p>"
                 '<ul class="tiles">' + "".join(_tile(tile) for tile in group.tiles) + "</ul>")
    return text


def _discovery_section(result: dict) -> str:
    """`gcctl discover`'s ranking per class: candidate attribute words, no attribute label read."""
    how = result["provenance"]
    flagged = f"{how['flagged']}" + (f", {how['split']} split" if how.get("split") else "")
    text = (f"<p>Candidate words ({escape(str(how['vocabulary']))} vocabulary, {how['candidates']} words) ranked per "
            "class by their similarity to the class's flagged images minus that to its other images, read by the "
            f"model's own text tower (<code>gcctl discover</code>; flagged: {escape(flagged)}). Discovered: "
            f"<strong>{escape(', '.join(result['discovered']))}</strong>.</p>")
    headers = [("class", False), ("flagged", True), ("word", False), ("score", True)]
    rows = [[name, f"{entry['flagged']} of {entry['flagged'] + entry['rest']}" if rank == 0 else "", item["word"],
             f"{item['score']:+.3f}"]
            for name, entry in result["classes"].items() for rank, item in enumerate(entry["ranked"][:5])]
    return text + _table(headers, rows, "the five best words per class", sortable=False)


class ColourMode(NamedTuple):
    """One way the map can be coloured: each point's category among `names`, drawn in `colours` (cycled)."""

    key: str  # the selector's value
    text: str  # the selector's option
    prefix: str  # the points' CSS class of a category: prefix + its index
    names: list[str]
    category: np.ndarray
    colours: tuple[str, ...]

    def colour(self, index: int) -> str:
        return self.colours[index % len(self.colours)]


def _colour_modes(points: MapPoints, run: str) -> list[ColourMode]:
    modes = [ColourMode("group", "group", "g", points.group_names, points.group, PALETTE),
             ColourMode("class", "class", "k", points.class_names, points.y, PALETTE)]
    if points.correct is not None:
        names = [name for name in RIGHT_WRONG if name != "not scored" or (points.correct < 0).any()]
        category = np.where(points.correct < 0, 2, 1 - points.correct)  # right 0, wrong 1, not scored 2
        modes.append(ColourMode("correct", f"right or wrong (run {run})", "r", names, category,
                                tuple(RIGHT_WRONG.values())))
    return modes


def _map_style(modes: list[ColourMode]) -> str:
    """Each mode's fill per category and which legend shows: the selector only sets the map's data-colour."""
    rules = []
    for mode in modes:
        selector = f'.map[data-colour="{mode.key}"]'
        rules += [f"{selector} .{mode.prefix}{i}{{fill:{mode.colour(i)}}}" for i in range(len(mode.names))]
        rules.append(f'{selector} .legend[data-for="{mode.key}"]{{display:block}}')
    return "<style>" + "".join(rules) + "</style>"


def _map_svg(points: MapPoints, modes: list[ColourMode], width: int = 640, height: int = 480, margin: int = 12) -> str:
    low, high = points.xy.min(axis=0), points.xy.max(axis=0)
    scale = np.array([width - 2 * margin, height - 2 * margin]) / np.where(high > low, high - low, 1.0)
    xy = margin + (points.xy - low) * scale
    xy[:, 1] = height - xy[:, 1]  # the second axis points up
    classes = [" ".join(f"{mode.prefix}{mode.category[i]}" for mode in modes) for i in range(len(xy))]
    circles = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" class="{c}"/>' for (x, y), c in zip(xy, classes))
    return (f'<svg viewBox="0 0 {width} {height}" role="img" aria-labelledby="map-title">'
            f'<title id="map-title">{len(xy)} images of the split on the first (across) and second (up) principal axes '
            f'of their features</title><text x="{width - 6}" y="{height - 6}" text-anchor="end" class="tick">first axis →'
            f'</text><text x="6" y="16" class="tick">↑ second axis</text>{circles}</svg>')


def _legends(modes: list[ColourMode]) -> str:
    return "".join(f'<ul class="legend" data-for="{mode.key}" aria-label="colours: {escape(mode.text)}">'
                   + "".join(f'<li><span class="swatch" style="background:{mode.colour(i)}"></span>{escape(name)}</li>'
                             for i, name in enumerate(mode.names)) + "</ul>"
                   for mode in modes)


def _map_section(data: PageData) -> str:
    if isinstance(data.points, str):
        return _note(data.points)
    points = data.points
    modes = _colour_modes(points, data.gallery_run)
    options = "".join(f'<option value="{mode.key}">{escape(mode.text)}</option>' for mode in modes)
    shown = (f"{len(points.xy)} of the {points.total} images, drawn at random with a fixed seed"
             if len(points.xy) < points.total else f"all {points.total} images")
    text = (f"<p>The {escape(data.split)} split's image features (store {escape(points.store)}) on their first two "
            f"principal axes (PCA): {shown}.</p>")
    if points.correct is None:
        text += _note(f"Run {data.gallery_run} has no predictions, so the map cannot show which images it got wrong.")
    return (text + _map_style(modes) + '<div id="map-view" class="map" data-colour="group"><p>'
            f'<label for="map-colour">Colour by</label> <select id="map-colour">{options}</select></p>'
            f'<div class="map-wrap">{_map_svg(points, modes)}<div>{_legends(modes)}</div></div></div>')


def _share_style(share: float) -> str:
    """A confusion cell's background: white to sky blue with the share of the true group (light enough that dark
    text stays readable on every shade)."""
    red, green, blue = (round(255 + (target - 255) * share) for target in (0x56, 0xB4, 0xE9))
    return f"background:#{red:02x}{green:02x}{blue:02x}"


def _confusion(report: dict) -> str:
    confusion = report["agreement"]["confusion"]
    names, matrix = confusion["groups"], np.asarray(confusion["matrix"], dtype=np.int64)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    head = "".join(f'<th scope="col">{escape(name)}</th>' for name in names)
    cells = ["".join(f'<td{_NUM} style="{_share_style(share)}">{count}</td>' for count, share in zip(counts, row))
             for counts, row in zip(matrix, shares)]
    rows = "".join(f'<tr><th scope="row">{escape(name)}</th>{row}</tr>' for name, row in zip(names, cells))
    return (f'<div class="scroll"><table class="confusion"><caption>true group (rows) × inferred group (columns)</caption>'
            f"<thead><tr><td></td>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def _agreement_section(agreements: list[tuple[str, dict]]) -> str:
    text = ""
    for name, report in agreements:
        result = report["agreement"]
        text += (f"<h3>{escape(name)}: {escape(report['strategy'])}</h3><p>{result['n']} samples, accuracy "
                 f"{percent_or_dash(result['accuracy'])}% ({percent_or_dash(result['accuracy_up_to_relabelling'])}% "
                 "up to relabelling each class's inferred groups); the shade of a cell is its share of the true "
                 "group's samples.</p>" + _confusion(report))
    return text


_CSS = """
:root{color-scheme:light}
body{margin:0;color:#1b1b1b;background:#fff;
  font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:90rem;margin:0 auto;padding:1rem 1.5rem 3rem}
p{max-width:68rem}
h1{font-size:1.75rem;margin:.5rem 0}
h2{font-size:1.4rem;margin:2.5rem 0 .75rem;padding-bottom:.25rem;border-bottom:2px solid #d0d0d0}
h3{font-size:1.1rem;margin:1.5rem 0 .25rem}
a{color:#0057a3}
nav ul{display:flex;flex-wrap:wrap;gap:.25rem 1.5rem;margin:0;padding:0;list-style:none}
:focus-visible{outline:3px solid #0072B2;outline-offset:2px}
.note{background:#fff6e0;border-left:4px solid #E69F00;padding:.5rem .75rem}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.875rem;margin:.5rem 0}
caption{text-align:left;font-weight:600;padding:.25rem 0}
th,td{padding:.3rem .45rem;border-bottom:1px solid #dcdcdc;text-align:left;vertical-align:top}
thead th{background:#f0f0f0;vertical-align:bottom}
tbody tr:nth-child(even){background:#f8f8f8}
tbody th{font-weight:600;white-space:nowrap}
.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.interval{display:block;font-size:.8rem;color:#555}
thead th.num{white-space:normal}
th button{font:inherit;font-weight:600;color:inherit;background:none;border:0;padding:0;cursor:pointer;text-align:inherit}
th button::after{content:" \\21C5";color:#6b6b6b}
th[aria-sort=ascending] button::after{content:" \\25B2";color:inherit}
th[aria-sort=descending] button::after{content:" \\25BC";color:inherit}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(28rem,1fr));gap:1rem 2rem}
figure{margin:0}
figcaption{font-weight:600}
svg{display:block;max-width:100%;height:auto}
svg text{font-size:12px;fill:#1b1b1b}
svg .tick{fill:#555}
svg .grid{stroke:#d0d0d0}
svg .whisker{stroke:#1b1b1b;stroke-width:1.5}
img.curves{max-width:min(100%,60rem);height:auto}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(8rem,1fr));gap:.6rem;margin:0;padding:0;list-style:none}
.tile figure{height:100%;box-sizing:border-box;border:3px solid #c8c8c8;border-radius:4px;padding:.3rem}
.tile.wrong figure{border-color:#D55E00}
.tile img,.tile .missing{display:block;object-fit:contain;margin:0 auto;background:#eee}
.tile .missing{font-size:.75rem;text-align:center;color:#555}
.tile figcaption{font-weight:400;font-size:.8rem;line-height:1.35;margin-top:.3rem}
.mark{font-weight:600}
.wrong .mark{color:#a84300}
.right .mark{color:#00694a}
.map-wrap{display:flex;flex-wrap:wrap;gap:1rem 2rem;align-items:flex-start}
.map svg{width:40rem;border:1px solid #d0d0d0}
.map circle{fill:#999;fill-opacity:.8}
.legend{display:none;margin:0;padding:0;list-style:none;font-size:.875rem}
.legend li{display:flex;align-items:center;gap:.45rem}
.swatch{display:inline-block;width:.85rem;height:.85rem;border-radius:50%;border:1px solid #555}
select{font:inherit;padding:.15rem .3rem}
.confusion td.num{min-width:3.5rem}
"""

_SCRIPT = """
(function () {
  "use strict";
  function key(row, column, numeric) {
    var text = row.cells[column].textContent.trim();
    if (!numeric) { return text; }
    var value = parseFloat(text);
    return isNaN(value) ? null : value;
  }
  function compare(a, b, direction) {
    if (a === b) { return 0; }
    if (a === null) { return 1; }  // a cell without a figure sorts last either way
    if (b === null) { return -1; }
    return (typeof a === "number" ? a - b : a.localeCompare(b)) * direction;
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    heads.forEach(function (head, column) {
      head.querySelector("button").addEventListener("click", function () {
        var direction = head.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        var numeric = head.getAttribute("data-type") === "number";
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) { return compare(key(a, column, numeric), key(b, column, numeric), direction); });
        rows.forEach(function (row) { body.appendChild(row); });
        heads.forEach(function (other) { other.setAttribute("aria-sort", "none"); });
        head.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
      });
    });
  });
  var select = document.getElementById("map-colour");
  if (select) {
    select.addEventListener("change", function () {
      document.getElementById("map-view").setAttribute("data-colour", select.value);
    });
  }
})();
"""
