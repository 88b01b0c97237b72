"""The source world: a ten-kind source task and its domain shifts, written as image folders."""

import numpy as np
import pytest
from conftest import tree_digest

from gcctl.datasets import load_dataset
from gcctl.errors import GcctlError
from gcctl.synth import BACKGROUNDS, COLOURS, FILLS, SHAPES, render
import gcctl.synth.benchmarks as benchmarks
from gcctl.synth.render import SMALL_RADIUS
from gcctl.synth.source import (
    HOME_SHARE,
    SHIFTS,
    SOURCE_CLASSES,
    draw_source,
    source_world_roots,
    write_source_world,
)
from gcctl.synth.world import SOURCE_KINDS, TARGET_KINDS, home_indices

SCALE = 0.02  # per kind: 10 train, 2 val, 5 test; 2 in each shift


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_source_world(out, seed=0, scale=SCALE)
    return out


def _object_mask(**options):
    """Where the circles are drawn: the pixels that a black and a white palette paint differently."""
    shape, colour, background = (np.zeros(6, int), np.arange(6), np.arange(6))
    dark, light = (render(shape, colour, background, np.random.default_rng(0), palette=np.full((len(COLOURS), 3), value),
                          **options).astype(int) for value in (0, 255))
    return np.abs(light - dark).sum(axis=-1) > 300


def test_render_shift_keywords_change_only_the_object():
    full, outline, small = _object_mask(), _object_mask(outline=True), _object_mask(object_scale=0.5)
    assert not (outline & ~full).any() and not outline[:, 16, 16].any() and outline.sum() < 0.6 * full.sum()
    assert not (small & ~full).any() and 0.1 < small.sum() / full.sum() < 0.4
    shape, colour, background = (np.zeros(6, int), np.arange(6), np.arange(6))
    plain = render(shape, colour, background, np.random.default_rng(0))
    repainted = render(shape, colour, background, np.random.default_rng(0), palette=np.zeros((len(COLOURS), 3)))
    assert np.array_equal(plain[~full], repainted[~full]) and (plain[full] != repainted[full]).any()
    with pytest.raises(ValueError, match="palette"):
        render(shape, colour, background, np.random.default_rng(0), palette=np.zeros((3, 3)))


def test_small_radius_draws_the_same_objects_smaller():
    big, small = _object_mask(), _object_mask(radius=SMALL_RADIUS)
    assert 0.2 < small.sum() / big.sum() < 0.5  # (4.75 / 7.5) squared is 0.40 on average
    assert not (small & ~big).any()  # the same centres, each radius smaller


def test_waterbirds_like_birds_are_small_in_their_landscape(tmp_path, monkeypatch):
    radii = []
    real_render = benchmarks.render
    monkeypatch.setattr(benchmarks, "render", lambda *a, **k: radii.append(k.get("radius")) or real_render(*a, **k))
    benchmarks.write_waterbirds(tmp_path / "wb", scale=0.01)
    assert radii == [SMALL_RADIUS]


def test_source_is_read_by_the_imagefolder_reader(world):
    table = load_dataset("imagefolder", world / "source")
    assert table.class_names == list(SOURCE_CLASSES) == sorted(SOURCE_KINDS)
    assert not set(SOURCE_CLASSES) & set(TARGET_KINDS)  # fine-tuning never trains a group benchmark's class
    counts = table.frame.groupby(["split", "y"]).size().unstack()
    assert counts.to_dict("index") == {split: dict.fromkeys(range(10), n) for split, n in
                                       (("train", 10), ("val", 2), ("test", 5))}
    first = table.frame.iloc[0]
    assert first["path"].split("/")[2].startswith(SOURCE_CLASSES[first["y"]])  # split/<class>/<class>_n.png


def test_domain_shifts_are_test_only_image_folders(world):
    roots = source_world_roots(world)
    assert sorted(roots) == sorted(["source", *(f"source-{shift}" for shift in SHIFTS)])
    for name in roots:
        if name == "source":
            continue
        table = load_dataset("imagefolder", roots[name])
        assert table.class_names == list(SOURCE_CLASSES)
        assert set(table.frame["split"]) == {"test"} and table.frame["y"].value_counts().to_dict() == dict.fromkeys(range(10), 2)


def test_source_prefers_home_backgrounds_colours_and_fills():
    shapes, colours, backgrounds, fills = draw_source(4000, np.random.default_rng(0))
    kinds = [SHAPES.index(name) for name in SOURCE_CLASSES]
    assert np.bincount(shapes, minlength=len(SHAPES))[kinds].tolist() == [4000] * len(kinds)
    homes = dict(zip(("background", "colour", "fill"), home_indices(shapes)))
    for name, values, vocabulary in (("background", backgrounds, BACKGROUNDS), ("colour", colours, COLOURS),
                                     ("fill", fills, FILLS)):
        for kind in kinds:
            chosen = shapes == kind
            seen = np.bincount(values[chosen], minlength=len(vocabulary)) / 4000
            home = homes[name][chosen][0]
            assert abs(seen[home] - HOME_SHARE[name]) < 0.03
            assert np.allclose(np.delete(seen, home), (1 - HOME_SHARE[name]) / (len(vocabulary) - 1), atol=0.015)
    _, _, _, shifted = draw_source(500, np.random.default_rng(0), fill_share=0.0)  # the texture shift
    assert not (shifted == home_indices(draw_source(500, np.random.default_rng(0), 0.0)[0])[2]).any()


def test_same_seed_same_bytes_and_streams_differ(tmp_path, world):
    write_source_world(tmp_path / "again", seed=0, scale=SCALE)
    write_source_world(tmp_path / "other", seed=1, scale=SCALE)
    for name in ("source", "source-v2"):
        assert tree_digest(tmp_path / "again" / name) == tree_digest(world / name)
        assert tree_digest(tmp_path / "other" / name) != tree_digest(world / name)
    # source-v2 is a fresh sample, not the source's test split again
    assert (world / "source" / "test" / "circle" / "circle_00001.png").read_bytes() != \
        (world / "source-v2" / "circle" / "circle_00001.png").read_bytes()


def test_bad_input_refuses_before_writing(tmp_path):
    for scale in (0, -1, float("nan")):
        with pytest.raises(GcctlError, match="scale"):
            write_source_world(tmp_path / "w", scale=scale)
    (tmp_path / "w" / "source-small").mkdir(parents=True)
    (tmp_path / "w" / "source-small" / "keep.txt").write_text("mine")
    with pytest.raises(GcctlError, match="not empty.*--overwrite"):
        write_source_world(tmp_path / "w", scale=SCALE)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["source-small"]
    write_source_world(tmp_path / "w", scale=SCALE, overwrite=True)
    assert not (tmp_path / "w" / "source-small" / "keep.txt").exists()


def test_data_synth_writes_the_source_world(run_cli, tmp_path):
    code, out, err = run_cli("data", "synth", "--out", str(tmp_path), "--corpus-size", "8", "--scale", "0.01", "--json")
    assert code == 0, err
    assert all((tmp_path / name / "gcctl-names.json").is_file() for name in source_world_roots(tmp_path))
    assert '"source-outline"' in out
