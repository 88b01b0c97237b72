"""The synthetic world: rendering, the pretraining corpus and the benchmarks in real on-disk layouts."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import tree_digest
from PIL import Image

import gcctl.synth.benchmarks as benchmarks
from gcctl.datasets import load_dataset
from gcctl.errors import GcctlError
from gcctl.synth import (
    BACKGROUNDS,
    COLOURS,
    FILLS,
    SHAPES,
    load_corpus,
    render,
    render_scene,
    write_corpus,
    write_multiceleba,
    write_scattered,
    write_waterbirds,
)
from gcctl.synth.corpus import CORPUS_HOME_SHARE, SCENE_SHARES, SCENES, TEMPLATES, caption_words, plural
from gcctl.synth.world import home_indices
from gcctl.synth.benchmarks import (
    CELEBA_ATTRIBUTES,
    MULTICELEBA_SPLIT_SIZES,
    MULTICELEBA_TRAIN_GROUPS,
    SCATTERED_COLOURS,
    SCATTERED_SPLIT_SIZES,
    WATERBIRDS_SPLIT_SIZES,
)

SCALE = 0.05


def _render_all(seed, size=32):
    """One image of every (shape, colour, background) combination."""
    combo = np.arange(len(SHAPES) * len(COLOURS) * len(BACKGROUNDS))
    shape, rest = np.divmod(combo, len(COLOURS) * len(BACKGROUNDS))
    colour, background = np.divmod(rest, len(BACKGROUNDS))
    return render(shape, colour, background, np.random.default_rng(seed), size=size), shape, colour, background


def _read_celeba(root):
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    rows = [line.split() for line in lines[2:]]
    attributes = pd.DataFrame([row[1:] for row in rows], columns=names, index=[row[0] for row in rows]).astype(int)
    partition = pd.read_csv(root / "list_eval_partition.txt", sep=r"\s+", header=None, names=["image", "split"])
    return int(lines[0]), names, attributes, partition


# --- rendering ---------------------------------------------------------------------------------------


def test_render_is_deterministic_and_seed_dependent():
    first, *_ = _render_all(seed=3)
    again, *_ = _render_all(seed=3)
    other, *_ = _render_all(seed=4)
    assert first.dtype == np.uint8 and first.shape == (len(SHAPES) * len(COLOURS) * len(BACKGROUNDS), 32, 32, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [16, 48])
def test_render_honours_size(size):
    images, *_ = _render_all(seed=0, size=size)
    assert images.shape == (len(SHAPES) * len(COLOURS) * len(BACKGROUNDS), size, size, 3)


def test_object_is_drawn_in_its_colour_at_the_centre():
    n = len(COLOURS) * 4
    colour = np.arange(n) % len(COLOURS)
    images = render(np.zeros(n, int), colour, np.arange(n) % len(BACKGROUNDS), np.random.default_rng(0))
    centre = images[:, 15:17, 15:17].reshape(n, -1, 3).mean(axis=1)
    palette = np.array([centre[colour == c].mean(axis=0) for c in range(len(COLOURS))])
    # Each image's centre is nearest to its own colour's mean: colours are told apart.
    nearest = np.argmin(((centre[:, None] - palette[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(nearest, colour)


def test_backgrounds_are_distinguishable_by_their_corners():
    images, _, _, background = _render_all(seed=1)
    corners = np.concatenate([images[:, :4, :4], images[:, -4:, -4:]], axis=1).reshape(len(images), -1, 3)
    means = np.array([corners[background == b].reshape(-1, 3).mean(axis=0) for b in range(len(BACKGROUNDS))])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(len(BACKGROUNDS), dtype=bool)].min() > 30


def test_all_solid_fills_draw_what_no_fills_draw():
    images, shape, colour, background = _render_all(seed=0)
    solid = render(shape, colour, background, np.random.default_rng(0), fills=np.zeros(len(shape), int))
    assert np.array_equal(images, solid)  # the same pixels, and the same random draws


def test_patterned_fills_change_only_the_object():
    n = 40
    kinds, colours, snow = np.zeros(n, int), np.full(n, COLOURS.index("red")), np.full(n, BACKGROUNDS.index("snow"))
    solid = render(kinds, colours, snow, np.random.default_rng(0)).astype(int)
    for fill in ("striped", "dotted", "checkered"):
        patterned = render(kinds, colours, snow, np.random.default_rng(0), fills=np.full(n, FILLS.index(fill))).astype(int)
        changed = np.abs(patterned - solid).sum(axis=-1) > 0
        assert changed[:, 14:18, 14:18].any() and not changed[:, :3, :3].any(), fill  # inside the object only


def test_render_scene_draws_each_present_object_where_it_is_placed():
    n = 8
    rng = np.random.default_rng(0)
    objects = [{"shape": np.zeros(n, int), "colour": np.full(n, COLOURS.index("red")), "fill": np.zeros(n, int),
                "centre": np.tile([[8.0, 16.0]], (n, 1)), "radius": np.full(n, 4.0), "present": np.ones(n, bool)},
               {"shape": np.zeros(n, int), "colour": np.full(n, COLOURS.index("blue")), "fill": np.zeros(n, int),
                "centre": np.tile([[24.0, 16.0]], (n, 1)), "radius": np.full(n, 4.0), "present": np.arange(n) % 2 == 0}]
    images = render_scene(np.full(n, BACKGROUNDS.index("snow")), objects, rng).astype(int)
    left, right = images[:, 15:17, 7:9].mean(axis=(1, 2)), images[:, 15:17, 23:25].mean(axis=(1, 2))
    assert (left[:, 0] > left[:, 2] + 100).all()  # red on the left in every image
    assert np.array_equal(right[:, 2] > right[:, 0] + 100, np.arange(n) % 2 == 0)  # blue on the right where present


@pytest.mark.parametrize("size", [32, 48])
def test_cue_is_a_corner_patch_of_its_texture(size):
    n = 24
    cues = np.where(np.arange(n) % 2, BACKGROUNDS.index("water"), BACKGROUNDS.index("grass"))
    snow = np.full(n, BACKGROUNDS.index("snow"))
    images = render(np.zeros(n, int), np.zeros(n, int), snow, np.random.default_rng(0), size=size, cues=cues,
                    cue_size=6).astype(float)
    side = 6 * size // 32
    patch = images[:, :side, :side].reshape(n, -1, 3).mean(axis=1)
    # Water is blue-dominant, grass green-dominant; right of the patch the snow is untouched.
    assert np.array_equal(patch[:, 2] > patch[:, 1], cues == BACKGROUNDS.index("water"))
    assert images[:, :side, side + 1:side + 3].min() > 200


def test_render_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="length"):
        render([0, 1], [0], [0, 1], rng)
    with pytest.raises(ValueError, match="colour"):
        render([0], [len(COLOURS)], [0], rng)
    with pytest.raises(GcctlError, match="too small"):
        render([0], [0], [0], rng, size=8)
    with pytest.raises(ValueError, match="cues"):
        render([0, 1], [0, 1], [0, 1], rng, cues=[0])
    with pytest.raises(ValueError, match="cues"):
        render([0], [0], [0], rng, cues=[len(BACKGROUNDS)])
    with pytest.raises(ValueError, match="cue size"):
        render([0], [0], [0], rng, cues=[0], cue_size=0)


# --- corpus ------------------------------------------------------------------------------------------


def test_corpus_round_trips_and_every_caption_names_its_first_object(tmp_path):
    path = write_corpus(tmp_path / "corpus", n=600, seed=0, size=16)
    assert path == tmp_path / "corpus" / "corpus.npz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["corpus.npz"]  # no .npz.npz, no .partial
    corpus = load_corpus(path)
    assert len(corpus) == 600 and corpus.images.shape == (600, 16, 16, 3) and corpus.images.dtype == np.uint8
    assert (corpus.kinds, corpus.colours, corpus.backgrounds, corpus.fills) == (SHAPES, COLOURS, BACKGROUNDS, FILLS)
    assert corpus.scenes == SCENES and corpus.captions.dtype.kind == "U"
    known = caption_words()
    for text, kind in zip(corpus.captions, corpus.kind):
        words = text.replace(".", " .").split()
        assert set(words) <= known and text.endswith(".")
        assert corpus.kinds[kind] in words or plural(corpus.kinds[kind]) in words, text


def test_corpus_is_long_tailed_paraphrased_and_prefers_homes(tmp_path):
    corpus = load_corpus(write_corpus(tmp_path, n=6000, seed=0, size=16))
    counts = np.bincount(corpus.kind, minlength=len(SHAPES))
    assert counts.min() > 0 and counts.max() > 2.5 * counts.min()  # weights 1/sqrt(rank): 4x from first to last
    prefixes = [template.split("{}")[0] for template in TEMPLATES if not template.startswith("{}")]
    assert all(any(text.startswith(prefix) for text in corpus.captions) for prefix in prefixes)  # every paraphrase
    home_background, _, _ = home_indices(corpus.kind)
    assert abs((corpus.background == home_background).mean() - CORPUS_HOME_SHARE["background"]) < 0.03
    scene_shares = np.bincount(corpus.scene, minlength=len(SCENES)) / len(corpus)
    assert np.allclose(scene_shares, SCENE_SHARES, atol=0.03)
    named = np.mean([COLOURS[c] in text.split() for c, text in zip(corpus.colour, corpus.captions)])
    assert 0.4 < named < 0.75  # alt-text names the colour only some of the time
    assert len(set(corpus.captions)) > len(corpus) / 3


def test_corpus_is_deterministic_per_seed(tmp_path, monkeypatch):
    first = write_corpus(tmp_path / "a", n=300, seed=1)
    monkeypatch.setattr(time, "time", lambda: 2e9)  # another day: the file must not record when it was written
    second = write_corpus(tmp_path / "b", n=300, seed=1)
    assert first.read_bytes() == second.read_bytes()  # byte-identical, so DVC sees an unchanged dependency
    a, b, c = (load_corpus(path) for path in (first, second, write_corpus(tmp_path / "c", n=300, seed=2)))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.captions, b.captions)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.kind, c.kind)


def test_corpus_loads_without_pickle_and_reports_bad_files(tmp_path):
    path = write_corpus(tmp_path, n=10)
    with np.load(path, allow_pickle=False) as data:
        expected = {"images", "captions", "kind", "colour", "background", "fill", "scene", "kinds", "colours",
                    "backgrounds", "fills", "scenes"}
        assert expected <= set(data.files)
    assert len(load_corpus(tmp_path)) == 10  # the directory is accepted too
    with pytest.raises(GcctlError, match="not found"):
        load_corpus(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros(1))
    with pytest.raises(GcctlError, match="missing captions"):
        load_corpus(tmp_path / "other.npz")


def test_failed_corpus_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write)
    with pytest.raises(RuntimeError):
        write_corpus(tmp_path, n=10)
    assert list(tmp_path.iterdir()) == []


# --- Waterbirds-like ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def waterbirds(tmp_path_factory):
    return write_waterbirds(tmp_path_factory.mktemp("wb") / "waterbirds", seed=0, scale=SCALE)


def test_waterbirds_layout_and_names(waterbirds):
    metadata = pd.read_csv(waterbirds / "metadata.csv")
    assert list(metadata.columns) == ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    assert metadata["img_id"].tolist() == list(range(1, len(metadata) + 1))
    assert metadata["img_filename"].is_unique
    folders = metadata["img_filename"].str.split("/").str[0]
    assert (folders == metadata["y"].map({0: "001.Heart", 1: "002.Ellipse"})).all()
    for name in metadata["img_filename"].iloc[:20]:
        with Image.open(waterbirds / name) as image:
            assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
    assert len(list(waterbirds.rglob("*.png"))) == len(metadata)
    names = json.loads((waterbirds / "gcctl-names.json").read_text())
    assert names == {"classes": ["heart", "ellipse"], "attributes": {"place": ["grass", "water"]},
                     "attribute_prompts": {"place": "a photo of a {class} on {value}."}}
    assert not (waterbirds.parent / "waterbirds.partial").exists()


def test_waterbirds_group_proportions(waterbirds):
    metadata = pd.read_csv(waterbirds / "metadata.csv")
    sizes = metadata.groupby("split").size()
    for split, full_size in enumerate(WATERBIRDS_SPLIT_SIZES):
        assert abs(sizes[split] - full_size * SCALE) <= 4
    train = metadata[metadata["split"] == 0]
    for label in (0, 1):
        in_class = train[train["y"] == label]
        assert abs(len(in_class) - len(train) / 2) <= 1
        assert (in_class["place"] == label).mean() == pytest.approx(0.95, abs=0.01)
    for split in (1, 2):
        groups = metadata[metadata["split"] == split].groupby(["y", "place"]).size()
        assert len(groups) == 4 and groups.nunique() == 1


def test_waterbirds_backgrounds_match_place(waterbirds):
    metadata = pd.read_csv(waterbirds / "metadata.csv").iloc[:60]
    images = np.stack([np.asarray(Image.open(waterbirds / name)) for name in metadata["img_filename"]])
    corners = images[:, :3, :3].reshape(len(images), -1, 3).mean(axis=1)
    # Water is blue-dominant, grass green-dominant.
    assert np.array_equal(corners[:, 2] > corners[:, 1], metadata["place"].to_numpy() == 1)


def test_waterbirds_is_deterministic_per_seed(tmp_path, waterbirds):
    again = write_waterbirds(tmp_path / "again", seed=0, scale=SCALE)
    other = write_waterbirds(tmp_path / "other", seed=1, scale=SCALE)
    assert tree_digest(again) == tree_digest(waterbirds)
    assert tree_digest(other) != tree_digest(waterbirds)


def test_waterbirds_minority_fraction_and_validation(tmp_path):
    root = write_waterbirds(tmp_path / "wb", scale=0.02, minority_fraction=0.25, size=16)
    train = pd.read_csv(root / "metadata.csv").query("split == 0")
    assert (train["y"] != train["place"]).mean() == pytest.approx(0.25, abs=0.02)
    with Image.open(root / train["img_filename"].iloc[0]) as image:
        assert image.size == (16, 16)
    with pytest.raises(GcctlError, match="minority fraction"):
        write_waterbirds(tmp_path / "bad", minority_fraction=0.7)
    with pytest.raises(GcctlError, match="scale"):
        write_waterbirds(tmp_path / "bad", scale=0)


# --- MultiCelebA-like --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multiceleba(tmp_path_factory):
    return write_multiceleba(tmp_path_factory.mktemp("mc") / "multiceleba", seed=0, scale=SCALE)


def test_multiceleba_txt_files_parse(multiceleba):
    count, names, attributes, partition = _read_celeba(multiceleba)
    assert names == CELEBA_ATTRIBUTES and len(names) == 40
    assert count == len(attributes) == len(partition)
    assert attributes.index.tolist() == [f"{i:06d}.jpg" for i in range(1, count + 1)]
    assert set(np.unique(attributes.to_numpy())) == {-1, 1}
    assert partition["image"].tolist() == attributes.index.tolist()
    assert set(partition["split"]) == {0, 1, 2}
    assert partition["split"].is_monotonic_increasing  # CelebA lists train, then val, then test
    for name in attributes.index[:20]:
        with Image.open(multiceleba / "img_align_celeba" / name) as image:
            assert image.format == "JPEG" and image.size == (32, 32)
    assert len(list((multiceleba / "img_align_celeba").iterdir())) == count
    names_file = json.loads((multiceleba / "gcctl-names.json").read_text())
    assert names_file["classes"] == names_file["attributes"]["High_Cheekbones"]
    assert set(names_file["attributes"]) == {"Male", "Young", "High_Cheekbones"}
    assert all(len(values) == 2 for values in names_file["attributes"].values())


def test_multiceleba_group_sizes(multiceleba):
    _, _, attributes, partition = _read_celeba(multiceleba)
    attributes["split"] = partition["split"].to_numpy()
    key = ["High_Cheekbones", "Male", "Young"]
    train = attributes[attributes["split"] == 0].groupby(key).size()
    table_total = sum(MULTICELEBA_TRAIN_GROUPS.values())
    assert abs(train.sum() - MULTICELEBA_SPLIT_SIZES[0] * SCALE) <= 4
    for (cheekbones, male, young), full_count in MULTICELEBA_TRAIN_GROUPS.items():
        expected = full_count / table_total * MULTICELEBA_SPLIT_SIZES[0] * SCALE
        got = train[(2 * cheekbones - 1, 2 * male - 1, 2 * young - 1)]
        assert got >= 1 and abs(got - expected) <= 1  # rounding, and no group left empty
    for split in (1, 2):
        groups = attributes[attributes["split"] == split].groupby(key).size()
        assert len(groups) == 8 and groups.nunique() == 1
        assert abs(groups.sum() - MULTICELEBA_SPLIT_SIZES[split] * SCALE) <= 8


def test_multiceleba_attributes_are_drawn(multiceleba):
    _, _, attributes, _ = _read_celeba(multiceleba)
    sample = attributes.iloc[:80]
    folder = multiceleba / "img_align_celeba"
    images = np.stack([np.asarray(Image.open(folder / name)) for name in sample.index]).astype(float)
    corners = images[:, :3, :3].reshape(len(images), -1, 3).mean(axis=1).mean(axis=1)
    # Male is the background: snow (bright) for -1, forest (dark) for 1.
    assert np.array_equal(corners < 128, sample["Male"].to_numpy() == 1)
    # Young is the object's colour: only orange (for 1) has pixels far redder than blue.
    red_minus_blue = (images[..., 0] - images[..., 2]).reshape(len(images), -1).max(axis=1)
    assert np.array_equal(red_minus_blue > 150, sample["Young"].to_numpy() == 1)


def test_multiceleba_is_deterministic_per_seed(tmp_path, multiceleba):
    assert tree_digest(write_multiceleba(tmp_path / "again", seed=0, scale=SCALE)) == tree_digest(multiceleba)
    assert tree_digest(write_multiceleba(tmp_path / "other", seed=1, scale=SCALE)) != tree_digest(multiceleba)


# --- scattered ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scattered(tmp_path_factory):
    return write_scattered(tmp_path_factory.mktemp("sc") / "scattered", seed=0, scale=SCALE)


def _read_scattered(root):
    return load_dataset("manifest", root, file="manifest.csv", attribute_columns=("patch",))


def test_scattered_is_read_as_a_manifest_with_its_groups(scattered):
    table = _read_scattered(scattered)
    assert table.class_names == ["diamond", "semicircle"] and table.attributes == {"patch": ["water", "grass"]}
    counts = table.group_counts()
    per_class = int(SCATTERED_SPLIT_SIZES[0] * SCALE / 2 + 0.5)  # the writer rounds half up
    minority = int(per_class * 0.05 + 0.5)
    assert counts["train"].to_dict() == {"diamond/water": per_class - minority, "diamond/grass": minority,
                                         "semicircle/water": minority, "semicircle/grass": per_class - minority}
    for split, full_size in zip(("val", "test"), SCATTERED_SPLIT_SIZES[1:]):
        assert set(counts[split]) == {int(full_size * SCALE / 4 + 0.5)}
    assert table.missing_files() == []
    assert sorted(p.name for p in scattered.iterdir()) == ["gcctl-names.json", "images", "manifest.csv"]


def test_scattered_groups_differ_in_colour_and_patch(scattered):
    table = _read_scattered(scattered)
    sample = table.frame.iloc[:80]
    images = np.stack([np.asarray(Image.open(scattered / path)) for path in sample["path"]]).astype(float)
    centre = images[:, 15:17, 15:17].reshape(len(images), -1, 3).mean(axis=1)
    expected = [SCATTERED_COLOURS[label, patch] for label, patch in zip(sample["y"], sample["patch"])]
    assert np.array_equal(np.where(centre[:, 0] > centre[:, 2], "red", "blue"), expected)
    corner = images[:, :3, :3].reshape(len(images), -1, 3).mean(axis=1)
    assert np.array_equal(corner[:, 2] > corner[:, 1], sample["patch"].to_numpy() == 0)  # 0 = water


def test_scattered_is_deterministic_per_seed(tmp_path, scattered):
    assert tree_digest(write_scattered(tmp_path / "again", seed=0, scale=SCALE)) == tree_digest(scattered)
    assert tree_digest(write_scattered(tmp_path / "other", seed=1, scale=SCALE)) != tree_digest(scattered)


def test_scattered_rejects_bad_input(tmp_path):
    with pytest.raises(GcctlError, match="scale"):
        write_scattered(tmp_path / "bad", scale=-1)
    with pytest.raises(GcctlError, match="minority fraction"):
        write_scattered(tmp_path / "bad", minority_fraction=0.6)
    assert list(tmp_path.iterdir()) == []


def test_synth_command_writes_the_scattered_benchmark(run_cli, tmp_path):
    code, out, _ = run_cli("data", "synth", "--out", str(tmp_path), "--corpus-size", "8", "--scale", "0.01", "--json")
    assert code == 0 and json.loads(out)["scattered"] == str(tmp_path / "scattered")
    assert _read_scattered(tmp_path / "scattered").class_names == ["diamond", "semicircle"]


# --- atomic directories ------------------------------------------------------------------------------


def test_refuses_non_empty_root_unless_overwrite(tmp_path):
    root = tmp_path / "wb"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(GcctlError, match="not empty"):
        write_waterbirds(root, scale=0.01)
    assert (root / "keep.txt").read_text() == "mine"
    write_waterbirds(root, scale=0.01, overwrite=True)
    assert (root / "metadata.csv").is_file() and not (root / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wb"]


def test_empty_existing_root_is_filled(tmp_path):
    root = tmp_path / "mc"
    root.mkdir()
    write_multiceleba(root, scale=0.01)
    assert (root / "list_attr_celeba.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mc"]


@pytest.mark.parametrize("writer", [write_waterbirds, write_multiceleba, write_scattered])
def test_failure_midway_leaves_no_partial_and_keeps_old_root(tmp_path, monkeypatch, writer):
    root = tmp_path / "bench"
    root.mkdir()
    (root / "old.txt").write_text("previous run")
    saved = []

    def failing_save(images, paths, description, **options):
        saved.append(len(paths))
        Image.fromarray(images[0]).save(paths[0], **options)  # some files are on disk when it fails
        raise OSError("disk full")

    monkeypatch.setattr(benchmarks, "_save_images", failing_save)
    with pytest.raises(OSError, match="disk full"):
        writer(root, scale=0.01, overwrite=True)
    assert saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]
    assert sorted(p.name for p in root.iterdir()) == ["old.txt"]


def test_leftover_partial_from_a_killed_run_is_replaced(tmp_path):
    root = tmp_path / "wb"
    stale = tmp_path / "wb.partial"
    stale.mkdir()
    (stale / "junk.png").write_bytes(b"half")
    write_waterbirds(root, scale=0.01)
    assert not stale.exists() and not (root / "junk.png").exists()
