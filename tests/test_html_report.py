"""`gcctl report --html`: the page's steps (thumbnails, projection), the page on the tiny Waterbirds-like world, and
the page opened in a real headless Chromium."""

import io
import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import MICRO, tree_digest
from PIL import Image

from gcctl.errors import GcctlError
from gcctl.html import PAGE_FILE, PageOptions, project_2d, subsample, thumbnail
from gcctl.report import write_report

pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn
RUNS = ("zeroshot", "linear", "groupcoop")


@pytest.fixture(scope="module")
def world(tiny_waterbirds, tmp_path_factory):
    """The tiny Waterbirds-like benchmark's table, its store (gcctl-micro, random weights) and three evaluated runs."""
    from gcctl.clip.factory import build_clip
    from gcctl.datasets import load_dataset
    from gcctl.methods.runs import evaluate_run, train_run
    from gcctl.store import extract

    base = tmp_path_factory.mktemp("page")
    table = load_dataset("waterbirds", tiny_waterbirds)
    table.save(base / "table.parquet")
    extract(table, build_clip(MICRO, "none"), base / "store.h5", batch_size=64)
    options = {"zeroshot": {}, "linear": {"epochs": 2}, "groupcoop": {"epochs": 1}}
    for name in RUNS:
        train_run(base / "store.h5", name, base / "runs" / name, options=options[name])
        evaluate_run(base / "runs" / name, "test", out=base / "metrics" / f"{name}.json")
    return SimpleNamespace(base=base, table=table, metrics=[base / "metrics" / f"{name}.json" for name in RUNS])


@pytest.fixture(scope="module")
def page(world):
    """The report with its page, given the table and an agreement report, and the page's text."""
    from gcctl.metrics import agreement

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(world.base)  # relative inputs, as the pipeline gives them
        frame, vocabulary = world.table.frame, world.table.vocabulary
        truth = frame["group"].to_numpy()
        report = {"strategy": "flipped", "agreement": agreement(truth, truth ^ (np.arange(len(truth)) % 5 == 0), vocabulary)}
        Path("groups.report.json").write_text(json.dumps(report))
        options = PageOptions(table="table.parquet", groups_reports=["groups.report.json"])
        written = write_report([Path("metrics") / f"{name}.json" for name in RUNS], "report", page=options)
    out = world.base / "report"
    return SimpleNamespace(out=out, text=(out / PAGE_FILE).read_text(encoding="utf-8"), written=written, options=options,
                           confusion=report["agreement"]["confusion"]["matrix"])


def write_image(path, size, mode="RGB"):
    gradient = np.linspace(0, 255, size[0] * size[1] * len(mode)).reshape(size[1], size[0], len(mode)).astype(np.uint8)
    Image.fromarray(gradient, mode).save(path)
    return str(path)


def test_a_thumbnail_is_a_small_deterministic_jpeg(tmp_path):
    large = write_image(tmp_path / "large.png", (300, 200), "RGBA")
    data = thumbnail(large, 64)
    assert data[:2] == b"\xff\xd8" and data == thumbnail(large, 64)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (64, 43)
    with Image.open(io.BytesIO(thumbnail(write_image(tmp_path / "small.png", (20, 10)), 64))) as image:
        assert image.size == (20, 10)  # never enlarged


def test_the_projection_is_deterministic_and_puts_two_planted_clusters_apart_on_its_first_axis():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    direction = rng.standard_normal(16)
    features = 0.3 * rng.standard_normal((400, 16)) + np.outer(2 * y - 1, direction)
    projected = project_2d(features.astype(np.float16))
    assert projected.shape == (400, 2)
    np.testing.assert_array_equal(projected, project_2d(features.astype(np.float16)))
    first = projected[:, 0]
    assert first[y == 0].max() < first[y == 1].min() or first[y == 1].max() < first[y == 0].min()
    assert project_2d(features[:1]).shape == (1, 2)


def test_the_subsample_is_fixed_increasing_and_capped():
    drawn = subsample(10_000, 3000)
    assert len(drawn) == 3000 and np.all(np.diff(drawn) > 0) and np.array_equal(drawn, subsample(10_000, 3000))
    assert np.array_equal(subsample(5, 3000), np.arange(5))


def test_the_page_holds_the_table_the_bars_the_gallery_errors_first_the_map_and_the_agreement(world, page):
    assert page.written["paths"]["page"].endswith(PAGE_FILE)
    text = page.text
    for name in RUNS:
        assert f'<th scope="row">{name}</th>' in text
    assert text.count('<th scope="col" class="num" data-type="number" aria-sort="none"><button type="button">') == 7
    assert text.count('<svg viewBox="0 0 470') == 4  # one bar chart per group
    assert "data:image/png;base64," in text  # the curves of linear and groupcoop
    gallery = unescape(text.split('id="gallery"')[1].split('id="map"')[0])
    assert "Run groupcoop's predictions" in gallery  # the first groupcoop run by default
    for group in re.split(r"<h3>", gallery)[1:]:
        kinds = re.findall(r'<li class="tile (wrong|right)">', group)
        assert kinds and kinds == sorted(kinds, key=lambda kind: kind == "right")  # errors first
        assert len(kinds) <= page.options.gallery_size
    assert re.search(r'alt="true (heart|ellipse), predicted (heart|ellipse) \(p=0\.\d\d\), group \w+/\w+"', gallery)
    assert text.count("<circle ") == int((world.table.frame["split"] == "test").sum())  # under MAP_POINTS: every image
    assert '<option value="correct">' in text and "<h3>groups.report.json: flipped</h3>" in text
    confusion = text.split('<table class="confusion">')[1].split("</table>")[0]
    assert re.findall(r">(\d+)</td>", confusion) == [str(count) for row in page.confusion for count in row]
    assert str(world.base) not in text and str(world.table.root) not in text and "/tmp" not in text


def test_the_page_is_byte_identical_when_regenerated(world, page):
    before = tree_digest(page.out)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(world.base)
        write_report([Path("metrics") / f"{name}.json" for name in RUNS], "report", overwrite=True, page=page.options)
    assert tree_digest(page.out) == before


def _page_of(metrics, out, **options):
    write_report(metrics, out, page=PageOptions(**options))
    return unescape((Path(out) / PAGE_FILE).read_text(encoding="utf-8"))


def test_what_the_page_cannot_show_it_says(world, tmp_path):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(world.metrics[2], lone / "groupcoop.json")  # without its predictions
    text = _page_of([lone / "groupcoop.json"], tmp_path / "no-predictions", table=world.base / "table.parquet")
    assert "has no predictions beside its metrics file, so there is no gallery" in text
    assert "cannot show which images it got wrong" in text and "<circle " in text
    assert "No dataset table was given" in _page_of(world.metrics, tmp_path / "no-table")
    moved = tmp_path / "elsewhere" / "deeper"
    moved.mkdir(parents=True)
    shutil.copy(world.base / "table.parquet", moved / "table.parquet")  # its root, relative to it, leads nowhere
    assert "None of the gallery's images could be read" in _page_of(world.metrics, tmp_path / "moved", table=moved / "table.parquet")
    metrics = json.loads(world.metrics[0].read_text())
    metrics["provenance"]["features"] = str(tmp_path / "gone.h5")
    (lone / "zeroshot.json").write_text(json.dumps(metrics))
    assert "The feature store gone.h5 of run zeroshot is not there" in _page_of([lone / "zeroshot.json"], tmp_path / "no-store")


def test_a_discovery_is_shown_beside_the_gallery(world, tmp_path):
    from gcctl.discovery import discover

    discover(world.base / "store.h5", tmp_path / "discovered", device="cpu")
    text = _page_of(world.metrics, tmp_path / "with-discovery", discovery=tmp_path / "discovered" / "discovery.json")
    assert text.index('id="gallery"') < text.index('id="discovery"') < text.index('id="map"')
    assert "Discovered: " in text and "smaller k-means cluster" in text and "the five best words per class" in text


def test_a_suite_or_sweep_report_refuses_the_page(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"run": "ft", "targets": {}, "seeds": [], "mean": {}}))
    with pytest.raises(GcctlError, match="--html is for the metrics files of runs"):
        write_report([tmp_path / "summary.json"], tmp_path / "out", page=PageOptions())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--html", "--gallery-run", "nope"], "--gallery-run nope is not a reported run (the runs: zeroshot, linear, groupcoop)"),
    (["--html", "--gallery-size", "0"], "--gallery-size 0 must be at least 1"),
    (["--table", "TABLE"], "--table is an option of the HTML page; add --html"),
    (["--html", "--table", "OTHER"], "is another table (fingerprint"),
    (["--html", "--groups-report", "METRICS0"], "is not an agreement report of `gcctl pseudo-label`"),
    (["--html", "--discovery", "METRICS0"], "is not the discovery.json of `gcctl discover`"),
])
def test_bad_page_input_is_one_line_and_writes_nothing(world, tmp_path, run_cli, args, message):
    from gcctl.datasets import DatasetTable

    table = world.table
    DatasetTable(frame=table.frame.iloc[1:], root=table.root, dataset=table.dataset, class_names=table.class_names,
                 attributes=table.attributes).save(tmp_path / "other.parquet")
    paths = {"TABLE": str(world.base / "table.parquet"), "OTHER": str(tmp_path / "other.parquet"), "METRICS0": str(world.metrics[0])}
    code, _, err = run_cli("report", *map(str, world.metrics), "--out", str(tmp_path / "out"), *(paths.get(a, a) for a in args))
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


# Runs first in the page: records any script error on the root element, where --dump-dom shows it.
_RECORD_ERRORS = ('<script>window.addEventListener("error", function (e) { var root = document.documentElement; '
                  'root.setAttribute("data-errors", (root.getAttribute("data-errors") || "") + e.message + ";"); });</script>')
# Runs last: sorts by worst-group (descending: two clicks) and colours the map by right/wrong, as a person would.
_ACT = ('<script>var root = document.documentElement, button = document.querySelectorAll("table.sortable th button")[6];'
        'button.click(); button.click();'
        'root.setAttribute("data-first", document.querySelector("table.sortable tbody th").textContent);'
        'var select = document.getElementById("map-colour"); select.value = "correct";'
        'select.dispatchEvent(new Event("change"));</script>')


def _chromium(*args, timeout=60):
    command = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_page_opens_in_a_real_browser_without_errors(world, page, tmp_path):
    instrumented = tmp_path / PAGE_FILE
    instrumented.write_text(page.text.replace("<meta charset=\"utf-8\">\n", "<meta charset=\"utf-8\">\n" + _RECORD_ERRORS, 1)
                            .replace("</body>", _ACT + "</body>", 1), encoding="utf-8")
    done = _chromium("--dump-dom", instrumented.as_uri())
    dom, log = done.stdout, done.stderr
    assert done.returncode == 0 and "<html" in dom, log[-2000:]
    assert _RECORD_ERRORS in dom and not re.search(r"<html[^>]*data-errors", dom), dom[:300]
    assert "Uncaught" not in log and ":CONSOLE(" not in log, log[-2000:]
    assert dom.count('<li class="tile') > 0 and dom.count("<circle ") > 0 and '<table class="sortable">' in dom
    worst_group = {name: round(100 * json.loads(path.read_text())["acc_wg"]["mean"], 1) for name, path in zip(RUNS, world.metrics)}
    best = {name for name, value in worst_group.items() if value == max(worst_group.values())}
    assert re.search(r'data-first="([^"]+)"', dom).group(1) in best
    assert re.search(r'aria-sort="descending"><button type="button">worst-group', dom)
    assert 'id="map-view" class="map" data-colour="correct"' in dom
    screenshot = tmp_path / "page.png"
    shot = _chromium("--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1280,900", (page.out / PAGE_FILE).as_uri())
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
