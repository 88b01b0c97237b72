"""Dataset adapters on tiny fixtures written in the real layouts, the canonical table, images, `data show`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from gcctl.cli import data as data_cli
from gcctl.datasets import DatasetTable, GroupVocabulary, load_dataset
from gcctl.datasets.images import ImageDataset
from gcctl.errors import GcctlError

# (y, place, split) per image: every Waterbirds group appears, train is skewed like the real data.
WATERBIRDS_ROWS = [(0, 0, 0), (0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 1, 0), (1, 0, 1), (0, 1, 1), (0, 0, 2), (1, 1, 2)]
CELEBA_NAMES = ["Blond_Hair", "High_Cheekbones", "Male", "Young"]
# One row per image: the CelebA attributes above in -1/1, then the split 0/1/2.
CELEBA_ROWS = [
    ("000001.jpg", (-1, 1, -1, 1), 0),
    ("000002.jpg", (1, -1, -1, 1), 0),
    ("000003.jpg", (-1, 1, 1, -1), 0),
    ("000004.jpg", (1, 1, 1, 1), 1),
    ("000005.jpg", (-1, -1, 1, 1), 2),
    ("000006.jpg", (1, -1, -1, -1), 2),
]


def write_image(path: Path, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (8, 8, 3) if mode == "RGB" else (8, 8)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def waterbirds_filename(index: int, y: int) -> str:
    species = "001.Black_footed_Albatross" if y else "020.Yellow_breasted_Chat"
    return f"{species}/bird_{index:04d}.jpg"


def write_waterbirds_original(root: Path) -> Path:
    """The original release / WILDS folder: metadata.csv next to the species folders."""
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for index, (y, place, split) in enumerate(WATERBIRDS_ROWS):
        filename = waterbirds_filename(index, y)
        write_image(root / filename, 20 * index)
        lines.append(f"{index + 1},{filename},{y},{split},{place},/o/ocean/00000{index}.jpg")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def write_waterbirds_subpopbench(root: Path) -> Path:
    """SubpopBench: metadata_waterbirds.csv one level above the image folder."""
    lines = ["id,filename,split,y,a"]
    for index, (y, place, split) in enumerate(WATERBIRDS_ROWS):
        filename = waterbirds_filename(index, y)
        write_image(root / "waterbird_complete95_forest2water2" / filename, 20 * index)
        lines.append(f"{index + 1},{filename},{split},{y},{place}")
    (root / "metadata_waterbirds.csv").write_text("\n".join(lines) + "\n")
    return root


def write_celeba_txt(root: Path) -> Path:
    """The official release: count line, names line, then space-aligned -1/1 values (runs of spaces)."""
    lines = [str(len(CELEBA_ROWS)), " ".join(CELEBA_NAMES) + " "]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in values) for name, values, _ in CELEBA_ROWS]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{name} {split}\n" for name, _, split in CELEBA_ROWS))
    for index, (name, _, _) in enumerate(CELEBA_ROWS):
        write_image(root / "img_align_celeba" / name, 30 * index)
    return root


def write_celeba_kaggle(root: Path) -> Path:
    """Kaggle: the CSV pair and the image folder nested in a folder of the same name."""
    attributes = pd.DataFrame([[name, *values] for name, values, _ in CELEBA_ROWS], columns=["image_id", *CELEBA_NAMES])
    attributes.to_csv(root / "list_attr_celeba.csv", index=False)
    partition = pd.DataFrame([[name, split] for name, _, split in CELEBA_ROWS], columns=["image_id", "partition"])
    partition.to_csv(root / "list_eval_partition.csv", index=False)
    for index, (name, _, _) in enumerate(CELEBA_ROWS):
        write_image(root / "img_align_celeba" / "img_align_celeba" / name, 30 * index)
    return root


def manifest_frame(root: Path) -> pd.DataFrame:
    """String labels and attributes, every accepted spelling of the splits."""
    rows = [("cat", "indoor", "train"), ("dog", "outdoor", "train"), ("cat", "outdoor", "valid"),
            ("dog", "indoor", "validation"), ("cat", "indoor", "TEST"), ("dog", "outdoor", "2")]
    for index in range(len(rows)):
        write_image(root / "images" / f"{index}.png", 40 * index)
    return pd.DataFrame({
        "image": [f"images/{index}.png" for index in range(len(rows))],
        "animal": [animal for animal, _, _ in rows],
        "scene": [scene for _, scene, _ in rows],
        "fold": [split for _, _, split in rows],
    })


@pytest.fixture
def waterbirds_root(tmp_path: Path) -> Path:
    return write_waterbirds_original(tmp_path / "waterbird_complete95_forest2water2")


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    root = tmp_path / "celeba"
    root.mkdir()
    return write_celeba_txt(root)


# --- Waterbirds -------------------------------------------------------------------------------------------


def test_waterbirds_original_layout_gives_four_named_groups(waterbirds_root):
    table = load_dataset("waterbirds", waterbirds_root)
    frame = table.frame
    assert list(frame.columns) == ["id", "path", "split", "y", "class_name", "place", "group", "group_name"]
    assert table.class_names == ["landbird", "waterbird"]
    assert table.attributes == {"place": ["land", "water"]}
    assert table.vocabulary.names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    assert frame["y"].tolist() == [y for y, _, _ in WATERBIRDS_ROWS]
    assert frame["place"].tolist() == [place for _, place, _ in WATERBIRDS_ROWS]
    assert frame["split"].tolist() == [("train", "val", "test")[s] for _, _, s in WATERBIRDS_ROWS]
    assert frame["group"].tolist() == [2 * y + place for y, place, _ in WATERBIRDS_ROWS]
    assert frame.loc[3, "group_name"] == "waterbird/water" and frame.loc[3, "class_name"] == "waterbird"
    assert frame["id"].tolist()[:2] == ["1", "2"]
    assert table.missing_files() == []


def test_group_counts_cover_every_group_and_split(waterbirds_root):
    counts = load_dataset("waterbirds", waterbirds_root).group_counts()
    assert list(counts.columns) == ["train", "val", "test"]
    assert counts.loc["landbird/land"].tolist() == [2, 0, 1]
    assert counts.loc["waterbird/land"].tolist() == [0, 1, 0]
    assert counts.loc["waterbird/water"].tolist() == [2, 0, 1]
    assert int(counts.to_numpy().sum()) == len(WATERBIRDS_ROWS)


def test_wilds_folder_loads_without_release_marker_and_matches_original(tmp_path, waterbirds_root):
    wilds = write_waterbirds_original(tmp_path / "waterbirds_v1.0")
    assert not any(wilds.glob("RELEASE*"))
    original, from_wilds = load_dataset("waterbirds", waterbirds_root), load_dataset("waterbirds", wilds)
    assert from_wilds.fingerprint() == original.fingerprint()
    assert from_wilds.missing_files() == []


def test_subpopbench_layout_finds_the_image_folder(tmp_path, waterbirds_root):
    table = load_dataset("waterbirds", write_waterbirds_subpopbench(tmp_path / "waterbirds"))
    original = load_dataset("waterbirds", waterbirds_root)
    assert table.frame["path"][0] == f"waterbird_complete95_forest2water2/{waterbirds_filename(0, 0)}"
    assert table.missing_files() == []
    columns = ["id", "split", "y", "place", "group"]
    pd.testing.assert_frame_equal(table.frame[columns], original.frame[columns])


def test_metadata_csv_is_preferred_when_both_files_exist(tmp_path):
    root = write_waterbirds_subpopbench(write_waterbirds_original(tmp_path / "both"))
    assert load_dataset("waterbirds", root).frame["path"][0] == waterbirds_filename(0, 0)


def test_missing_waterbirds_metadata_names_the_expected_files(tmp_path):
    with pytest.raises(GcctlError, match=r"metadata\.csv.*metadata_waterbirds\.csv") as error:
        load_dataset("waterbirds", tmp_path)
    assert str(tmp_path) in str(error.value)


def test_waterbirds_metadata_without_a_column_is_named(tmp_path):
    (tmp_path / "metadata.csv").write_text("img_id,img_filename,y,split\n1,a.jpg,0,0\n")
    with pytest.raises(GcctlError, match=r"no column 'place'.*img_id, img_filename, y, split"):
        load_dataset("waterbirds", tmp_path)


# --- CelebA -----------------------------------------------------------------------------------------------


def test_celeba_official_text_files(celeba_root):
    table = load_dataset("celeba", celeba_root)
    frame = table.frame
    assert table.class_names == ["not_Blond_Hair", "Blond_Hair"]
    assert table.attributes == {"Male": ["not_Male", "Male"]}
    assert frame["id"].tolist() == [name for name, _, _ in CELEBA_ROWS]
    assert frame["path"][0] == "img_align_celeba/000001.jpg"
    assert frame["y"].tolist() == [int(values[0] > 0) for _, values, _ in CELEBA_ROWS]
    assert frame["Male"].tolist() == [int(values[2] > 0) for _, values, _ in CELEBA_ROWS]
    assert frame["split"].tolist() == ["train", "train", "train", "val", "test", "test"]
    assert frame.loc[3, "group_name"] == "Blond_Hair/Male"
    assert table.missing_files() == []


def test_celeba_kaggle_csv_pair_with_nested_images_matches_the_text_files(tmp_path, celeba_root):
    kaggle_root = tmp_path / "kaggle"
    kaggle_root.mkdir()
    kaggle = load_dataset("celeba", write_celeba_kaggle(kaggle_root))
    official = load_dataset("celeba", celeba_root)
    assert kaggle.frame["path"][0] == "img_align_celeba/img_align_celeba/000001.jpg"
    assert kaggle.missing_files() == []
    pd.testing.assert_frame_equal(kaggle.frame.drop(columns="path"), official.frame.drop(columns="path"))


def test_celeba_two_biases_give_multiceleba_eight_groups(celeba_root):
    table = load_dataset("celeba", celeba_root, target="High_Cheekbones", bias=("Young", "Male"))
    assert len(table.vocabulary.names) == 8
    assert table.vocabulary.names[0] == "not_High_Cheekbones/not_Young/not_Male"
    assert table.vocabulary.names[5] == "High_Cheekbones/not_Young/Male"
    # 000003.jpg: High_Cheekbones 1, Young -1, Male 1 -> 1*4 + 0*2 + 1.
    assert table.frame.loc[2, "group"] == 5
    assert table.frame.loc[2, "group_name"] == "High_Cheekbones/not_Young/Male"
    assert table.group_counts().shape == (8, 3)


def test_multiceleba_keeps_the_first_author_subsample_of_train_and_the_official_val_and_test(tmp_path):
    from gcctl.datasets.celeba import MULTICELEBA_TRAIN_COUNTS

    rng = np.random.default_rng(0)
    cells = [cell for cell, count in MULTICELEBA_TRAIN_COUNTS.items() for _ in range((count or 30) + 7)]
    cells = [cells[k] for k in rng.permutation(len(cells))]  # the cells interleaved in file order
    splits = [0] * len(cells) + [1] * 40 + [2] * 40
    cells += [tuple(int(v) for v in rng.integers(0, 2, 3)) for _ in range(80)]
    frame = pd.DataFrame({"image_id": [f"{k:06d}.jpg" for k in range(len(cells))],
                          "Young": [2 * young - 1 for young, _, _ in cells], "Male": [2 * male - 1 for _, male, _ in cells],
                          "High_Cheekbones": [2 * cheeks - 1 for _, _, cheeks in cells]})
    frame.to_csv(tmp_path / "list_attr_celeba.csv", index=False)
    pd.DataFrame({"image_id": frame["image_id"], "partition": splits}).to_csv(tmp_path / "list_eval_partition.csv", index=False)

    table = load_dataset("multiceleba", tmp_path)
    kept = table.frame
    train = kept[kept["split"] == "train"]
    counts = train.groupby(["Young", "Male", "y"]).size().to_dict()
    assert counts == {cell: count or 30 + 7 for cell, count in MULTICELEBA_TRAIN_COUNTS.items()}
    assert sum(count for count in MULTICELEBA_TRAIN_COUNTS.values() if count) + 44528 == 66898  # the code's total
    for cell, count in MULTICELEBA_TRAIN_COUNTS.items():  # the first of each cell in file order, as the code takes them
        rows = frame.index[:len(frame) - 80][[cells[k] == cell for k in range(len(frame) - 80)]]
        expected = frame["image_id"][rows[:count]] if count else frame["image_id"][rows]
        in_cell = (train["Young"] == cell[0]) & (train["Male"] == cell[1]) & (train["y"] == cell[2])
        assert train["id"][in_cell].tolist() == expected.tolist()
    assert (kept["split"] != "train").sum() == 80 and table.dataset == "multiceleba"
    assert table.class_names == ["not_High_Cheekbones", "High_Cheekbones"] and list(table.attributes) == ["Young", "Male"]


def test_multiceleba_without_its_attributes_is_one_line(tmp_path):
    pd.DataFrame({"image_id": ["000001.jpg"], "Young": [1], "Male": [-1]}).to_csv(tmp_path / "list_attr_celeba.csv", index=False)
    pd.DataFrame({"image_id": ["000001.jpg"], "partition": [0]}).to_csv(tmp_path / "list_eval_partition.csv", index=False)
    with pytest.raises(GcctlError, match="unknown CelebA attribute 'High_Cheekbones' in list_attr_celeba.csv"):
        load_dataset("multiceleba", tmp_path)


def test_unknown_celeba_attribute_suggests_close_names(celeba_root):
    with pytest.raises(GcctlError, match="unknown CelebA attribute 'Blond_Hiar'.*Blond_Hair"):
        load_dataset("celeba", celeba_root, target="Blond_Hiar")
    with pytest.raises(GcctlError, match="'Mael'.*Male"):
        load_dataset("celeba", celeba_root, bias=("Mael",))


def test_celeba_target_cannot_also_be_a_bias(celeba_root):
    with pytest.raises(GcctlError, match="both the target and a bias"):
        load_dataset("celeba", celeba_root, target="Male", bias=("Male",))


# --- Manifest ---------------------------------------------------------------------------------------------


def test_manifest_csv_with_string_labels_and_split_spellings(tmp_path):
    manifest_frame(tmp_path).to_csv(tmp_path / "pets.csv", index=False)
    table = load_dataset("manifest", tmp_path, file="pets.csv", path_column="image", label_column="animal",
                         split_column="fold", attribute_columns=("scene",))
    assert table.class_names == ["cat", "dog"]
    assert table.attributes == {"scene": ["indoor", "outdoor"]}
    assert table.frame["split"].tolist() == ["train", "train", "val", "val", "test", "test"]
    assert table.frame["id"].tolist() == ["0", "1", "2", "3", "4", "5"]
    assert table.frame["group_name"].tolist()[:2] == ["cat/indoor", "dog/outdoor"]
    assert table.missing_files() == []


def test_manifest_parquet_with_integer_labels_id_column_and_absolute_file(tmp_path):
    frame = manifest_frame(tmp_path)
    frame["label"] = (frame["animal"] == "dog").astype(int)
    frame["outdoor"] = (frame["scene"] == "outdoor").astype(int)
    frame["key"] = [f"img-{i}" for i in range(len(frame))]
    frame.to_parquet(tmp_path / "pets.parquet")
    table = load_dataset("manifest", tmp_path, file=tmp_path / "pets.parquet", path_column="image",
                         label_column="label", split_column="fold", attribute_columns=("outdoor",), id_column="key",
                         class_names=["cat", "dog"])
    assert table.class_names == ["cat", "dog"]
    assert table.attributes == {"outdoor": ["0", "1"]}
    assert table.frame["id"][0] == "img-0"
    assert table.frame["y"].tolist() == frame["label"].tolist()


def test_manifest_missing_column_names_it_and_the_existing_ones(tmp_path):
    manifest_frame(tmp_path).to_csv(tmp_path / "pets.csv", index=False)
    with pytest.raises(GcctlError, match=r"no column 'label'.*image, animal, scene, fold"):
        load_dataset("manifest", tmp_path, file="pets.csv", path_column="image", label_column="label",
                     split_column="fold", attribute_columns=("scene",))


def test_manifest_needs_an_attribute_and_known_split_values(tmp_path):
    frame = manifest_frame(tmp_path)
    frame.to_csv(tmp_path / "pets.csv", index=False)
    options = dict(file="pets.csv", path_column="image", label_column="animal", split_column="fold")
    with pytest.raises(GcctlError, match="at least one spurious attribute"):
        load_dataset("manifest", tmp_path, **options)
    frame.assign(fold="holdout").to_csv(tmp_path / "pets.csv", index=False)
    with pytest.raises(GcctlError, match="unknown split values \\['holdout'\\]"):
        load_dataset("manifest", tmp_path, attribute_columns=("scene",), **options)


# --- Names ------------------------------------------------------------------------------------------------


def test_names_sidecar_overrides_defaults_and_class_names_override_both(waterbirds_root):
    sidecar = {"classes": ["circle", "square"], "attributes": {"place": ["grass", "sea"]}}
    (waterbirds_root / "gcctl-names.json").write_text(json.dumps(sidecar))
    table = load_dataset("waterbirds", waterbirds_root)
    assert table.vocabulary.names == ["circle/grass", "circle/sea", "square/grass", "square/sea"]
    explicit = load_dataset("waterbirds", waterbirds_root, class_names=["land bird", "water bird"])
    assert explicit.class_names == ["land bird", "water bird"]
    assert explicit.attributes == {"place": ["grass", "sea"]}


def test_the_sidecar_says_how_attribute_values_read_and_that_travels_with_the_table(waterbirds_root, tmp_path):
    sidecar = {"attributes": {"place": ["grass", "water"]},
               "attribute_prompts": {"place": "a {class} seen over {value}.", "Male": "a photo of a {value} {class}."}}
    (waterbirds_root / "gcctl-names.json").write_text(json.dumps(sidecar))
    table = load_dataset("waterbirds", waterbirds_root)
    # Only the attributes this dataset has keep a prompt (a sidecar may describe more than one reading of it).
    assert table.vocabulary.attribute_prompts == {"place": "a {class} seen over {value}."}
    table.save(tmp_path / "table.parquet")
    assert DatasetTable.load(tmp_path / "table.parquet").vocabulary == table.vocabulary
    sidecar["attribute_prompts"]["place"] = "a {class} on land or water"
    (waterbirds_root / "gcctl-names.json").write_text(json.dumps(sidecar))
    with pytest.raises(GcctlError, match=r"attribute_prompts\['place'\].*has no \{value\}"):
        load_dataset("waterbirds", waterbirds_root)


def test_names_that_do_not_fit_the_data_are_rejected(waterbirds_root):
    with pytest.raises(GcctlError, match="3 names given"):
        load_dataset("waterbirds", waterbirds_root, class_names=["a", "b", "c"])
    (waterbirds_root / "gcctl-names.json").write_text('{"classes": "not a list"}')
    with pytest.raises(GcctlError, match="gcctl-names.json must look like"):
        load_dataset("waterbirds", waterbirds_root)


# --- Table ------------------------------------------------------------------------------------------------


def test_fingerprint_ignores_the_root_and_follows_labels(tmp_path, waterbirds_root):
    copy = tmp_path / "elsewhere"
    shutil.copytree(waterbirds_root, copy)
    table = load_dataset("waterbirds", waterbirds_root)
    assert load_dataset("waterbirds", copy).fingerprint() == table.fingerprint()
    metadata = pd.read_csv(copy / "metadata.csv")
    metadata.loc[0, "y"] = 1
    metadata.to_csv(copy / "metadata.csv", index=False)
    assert load_dataset("waterbirds", copy).fingerprint() != table.fingerprint()


def test_fingerprint_follows_names(waterbirds_root):
    table = load_dataset("waterbirds", waterbirds_root)
    renamed = load_dataset("waterbirds", waterbirds_root, class_names=["land", "water"])
    assert renamed.fingerprint() != table.fingerprint()


def test_save_and_load_round_trip(tmp_path, celeba_root):
    table = load_dataset("celeba", celeba_root, target="High_Cheekbones", bias=("Young", "Male"))
    table.save(tmp_path / "out" / "table.parquet")
    loaded = DatasetTable.load(tmp_path / "out" / "table.parquet")
    assert loaded == table
    assert loaded.vocabulary == table.vocabulary and table.vocabulary.train_counts.sum() == 3  # three train images
    import pyarrow.parquet as pq

    described = json.loads(pq.read_schema(tmp_path / "out" / "table.parquet").metadata[b"gcctl"])
    assert GroupVocabulary.from_dict(described["vocabulary"], "table") == table.vocabulary
    assert loaded.fingerprint() == table.fingerprint()
    assert list(loaded.frame.columns) == list(table.frame.columns)
    assert not list((tmp_path / "out").glob("*.partial"))


def test_loading_a_foreign_parquet_is_a_user_error(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(GcctlError, match="not a gcctl dataset table"):
        DatasetTable.load(tmp_path / "other.parquet")
    with pytest.raises(GcctlError, match="does not exist"):
        DatasetTable.load(tmp_path / "absent.parquet")


def test_missing_files_lists_absent_images_up_to_the_limit(waterbirds_root):
    for index in (1, 4, 6):
        (waterbirds_root / waterbirds_filename(index, WATERBIRDS_ROWS[index][0])).unlink()
    table = load_dataset("waterbirds", waterbirds_root)
    assert table.missing_files() == [waterbirds_filename(i, WATERBIRDS_ROWS[i][0]) for i in (1, 4, 6)]
    assert table.missing_files(limit=2) == [waterbirds_filename(i, WATERBIRDS_ROWS[i][0]) for i in (1, 4)]


# --- Registry ---------------------------------------------------------------------------------------------


def test_registry_errors(tmp_path, waterbirds_root):
    with pytest.raises(GcctlError, match="unknown dataset 'imagenet-c'; known: waterbirds, celeba, multiceleba, manifest, imagefolder"):
        load_dataset("imagenet-c", waterbirds_root)
    with pytest.raises(GcctlError, match="is not a directory"):
        load_dataset("waterbirds", tmp_path / "absent")
    with pytest.raises(GcctlError, match="'waterbirds' does not take target"):
        load_dataset("waterbirds", waterbirds_root, target="Male")


def test_datasets_package_does_not_import_torch():
    code = "import sys, gcctl.datasets; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Images -----------------------------------------------------------------------------------------------


def test_image_dataset_returns_transformed_rgb_images_with_row_indices(waterbirds_root):
    write_image(waterbirds_root / waterbirds_filename(2, 0), 77, mode="L")  # grayscale file on disk
    table = load_dataset("waterbirds", waterbirds_root)
    images = ImageDataset(table, transform=lambda image: (image.mode, image.size, image.getpixel((0, 0))),
                          indices=[2, 0])
    assert len(images) == 2
    assert images[0] == (("RGB", (8, 8), (77, 77, 77)), 2)
    assert images[1][1] == 0
    assert len(ImageDataset(table, transform=lambda image: image)) == len(WATERBIRDS_ROWS)


def test_unreadable_image_is_a_user_error(waterbirds_root):
    broken = waterbirds_root / waterbirds_filename(0, 0)
    broken.write_bytes(b"not an image")
    images = ImageDataset(load_dataset("waterbirds", waterbirds_root), transform=lambda image: image)
    with pytest.raises(GcctlError, match=f"cannot read image {broken}"):
        images[0]


def wide_grey(mode: str, level: int) -> Image.Image:
    """An 8x8 image of one 16-bit grey level in a 16-bit mode (the byte order is the mode's)."""
    dtype = {"I;16B": ">u2", "I": "<i4"}.get(mode, "<u2")
    return Image.frombytes(mode, (8, 8), np.full((8, 8), level, dtype=dtype).tobytes())


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 20, 30])
    if transparent:
        image.info["transparency"] = 1
    return image


# (image, the RGB it must become): 16-bit levels are scaled, never clipped; transparent pixels become white.
MODES = {
    "1": (Image.new("1", (8, 8), 1), (255, 255, 255)),
    "L": (Image.new("L", (8, 8), 100), (100, 100, 100)),
    "P": (palette_image(transparent=False), (10, 20, 30)),
    "P-transparency": (palette_image(transparent=True), (255, 255, 255)),
    "PA": (Image.new("RGBA", (8, 8), (10, 20, 30, 0)).convert("PA"), (255, 255, 255)),
    "LA-opaque": (Image.new("LA", (8, 8), (50, 255)), (50, 50, 50)),
    "LA-half": (Image.new("LA", (8, 8), (0, 128)), (127, 127, 127)),
    "RGB": (Image.new("RGB", (8, 8), (10, 20, 30)), (10, 20, 30)),
    "RGBA-opaque": (Image.new("RGBA", (8, 8), (10, 20, 30, 255)), (10, 20, 30)),
    "RGBA-transparent": (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)),
    "RGBX": (Image.new("RGBX", (8, 8), (10, 20, 30, 0)), (10, 20, 30)),
    "CMYK": (Image.new("CMYK", (8, 8), (255, 0, 0, 0)), (0, 255, 255)),
    "YCbCr": (Image.new("YCbCr", (8, 8), (128, 128, 128)), (128, 128, 128)),
    "HSV": (Image.new("HSV", (8, 8), (0, 0, 200)), (200, 200, 200)),
    "I;16": (wide_grey("I;16", 128 * 257), (128, 128, 128)),
    "I;16-white": (wide_grey("I;16", 65535), (255, 255, 255)),
    "I;16-dark": (wide_grey("I;16", 1000), (4, 4, 4)),
    "I;16L": (wide_grey("I;16L", 128 * 257), (128, 128, 128)),
    "I;16B": (wide_grey("I;16B", 128 * 257), (128, 128, 128)),
    "I": (wide_grey("I", 128 * 257), (128, 128, 128)),
    "F-unit": (Image.new("F", (8, 8), 0.5), (128, 128, 128)),
    "F-levels": (Image.new("F", (8, 8), 200.0), (200, 200, 200)),
}


@pytest.mark.parametrize("image, rgb", MODES.values(), ids=MODES.keys())
def test_every_mode_becomes_faithful_8_bit_rgb(image, rgb):
    from gcctl.datasets.images import to_rgb

    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == image.size
    assert converted.getpixel((0, 0)) == rgb


def test_a_16_bit_png_keeps_its_gradient(waterbirds_root):
    levels = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    path = waterbirds_root / waterbirds_filename(0, 0)
    Image.fromarray(levels).save(path.with_suffix(".png"), format="PNG")
    path.with_suffix(".png").rename(path)  # the metadata names a .jpg; Pillow reads the content
    images = ImageDataset(load_dataset("waterbirds", waterbirds_root), transform=lambda image: np.asarray(image))
    rgb, _ = images[0]
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert np.all(np.diff(rgb[..., 0].ravel().astype(int)) >= 0) and len(np.unique(rgb)) == 64


# --- CLI --------------------------------------------------------------------------------------------------
# CliRunner runs the Typer app directly, without gcctl.cli.main's wrapper that prints a GcctlError as
# `error: <message>` and exits 1: here a user error surfaces as result.exception, with exit code 1.


def cli() -> typer.Typer:
    from gcctl import cli as gcctl_cli

    data_cli.register(gcctl_cli.app)  # `gcctl data show|table` on the gcctl app's data group
    return gcctl_cli.app


def test_data_show_prints_group_counts_and_fingerprint(waterbirds_root):
    result = CliRunner().invoke(cli(), ["data", "show", "--dataset", "waterbirds", "--root", str(waterbirds_root)])
    assert result.exit_code == 0, result.output
    for name in ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water"):
        assert name in result.output
    assert load_dataset("waterbirds", waterbirds_root).fingerprint() in result.output


def test_data_show_json_with_celeba_options(celeba_root):
    arguments = ["data", "show", "--dataset", "celeba", "--root", str(celeba_root), "--target", "High_Cheekbones",
                 "--bias", "Young", "--bias", "Male", "--json"]
    result = CliRunner().invoke(cli(), arguments)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["rows"] == len(CELEBA_ROWS)
    assert [group["name"] for group in summary["groups"]][5] == "High_Cheekbones/not_Young/Male"
    assert sum(group["train"] + group["val"] + group["test"] for group in summary["groups"]) == len(CELEBA_ROWS)


def test_data_show_on_a_wrong_root_fails_with_one_line(tmp_path):
    result = CliRunner().invoke(cli(), ["data", "show", "--dataset", "waterbirds", "--root", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert isinstance(result.exception, GcctlError)
    assert "is not a directory" in str(result.exception) and "\n" not in str(result.exception)


def test_dataset_options_leave_out_unset_options():
    assert data_cli.dataset_options() == {}
    options = data_cli.dataset_options(bias=["Young", "Male"], manifest_file=Path("m.csv"), attribute_column=["a"],
                                       class_name=["x", "y"])
    assert options == {"bias": ("Young", "Male"), "file": Path("m.csv"), "attribute_columns": ("a",),
                       "class_names": ["x", "y"]}


def test_data_table_writes_the_table_later_commands_take_with_table(tmp_path, waterbirds_root, run_cli):
    project = tmp_path / "project"
    shutil.copytree(waterbirds_root, project / "data" / "waterbirds")
    code, _, err = run_cli("data", "table", "--layout", "waterbirds", "--root", str(project / "data" / "waterbirds"),
                           "--out", str(project / "tables" / "waterbirds.parquet"))
    assert code == 0, err
    moved = tmp_path / "moved"
    shutil.move(project, moved)  # the table records its root relative to itself: a moved folder still works
    table = DatasetTable.load(moved / "tables" / "waterbirds.parquet")
    assert table.root == moved / "data" / "waterbirds" and not table.missing_files()
    assert table.fingerprint() == load_dataset("waterbirds", waterbirds_root).fingerprint()
    code, out, _ = run_cli("data", "show", "--table", str(moved / "tables" / "waterbirds.parquet"), "--json")
    assert code == 0 and json.loads(out)["fingerprint"] == table.fingerprint()


def test_table_and_dataset_options_do_not_mix(tmp_path, waterbirds_root, run_cli):
    table_file = tmp_path / "t.parquet"
    load_dataset("waterbirds", waterbirds_root).save(table_file)
    code, _, err = run_cli("data", "show", "--table", str(table_file), "--root", str(waterbirds_root))
    assert code == 1 and "--table already describes the dataset" in err
    code, _, err = run_cli("data", "show")
    assert code == 1 and "give --dataset and --root together, or --table" in err


def test_group_vocabulary_numbers_names_and_counts_groups():
    vocabulary = GroupVocabulary(["landbird", "waterbird"], {"place": ["land", "water"], "size": ["small", "big"]})
    assert (vocabulary.num_classes, vocabulary.groups_per_class, vocabulary.n_groups) == (2, 4, 8)
    assert vocabulary.names[:3] == ["landbird/land/small", "landbird/land/big", "landbird/water/small"]
    assert vocabulary.names[7] == "waterbird/water/big"
    y, place, size = np.array([0, 1, 1, 0]), np.array([1, 0, 1, 0]), np.array([0, 1, 1, 1])
    group = vocabulary.encode(y, {"place": place, "size": size})
    np.testing.assert_array_equal(group, [2, 5, 7, 1])  # class-major, first attribute most significant
    decoded_y, decoded = vocabulary.decode(group)
    np.testing.assert_array_equal(decoded_y, y)
    np.testing.assert_array_equal(decoded["place"], place)
    np.testing.assert_array_equal(decoded["size"], size)
    np.testing.assert_array_equal(vocabulary.within(group), [2, 1, 3, 1])
    np.testing.assert_array_equal(vocabulary.group_of(y, vocabulary.within(group)), group)
    np.testing.assert_array_equal(vocabulary.ids_of(["waterbird/water/big", "bird"]), [7, -1])
    np.testing.assert_array_equal(vocabulary.inconsistent([0, 0, 1], [3, 4, 8]), [False, True, True])
    assert vocabulary.train_counts is None
    counted = vocabulary.counted(group[:3])
    np.testing.assert_array_equal(counted.train_counts, [0, 0, 1, 0, 0, 1, 0, 1])
    assert counted != vocabulary and counted.same_groups(vocabulary)
    for original in (vocabulary, counted):
        assert GroupVocabulary.from_dict(json.loads(json.dumps(original.to_dict())), "test") == original
    flat = GroupVocabulary(["cat", "dog"])
    assert flat.names == ["cat", "dog"] and list(flat.encode(np.array([1, 0]), {})) == [1, 0]
    with pytest.raises(GcctlError, match="no valid group vocabulary"):
        GroupVocabulary.from_dict({"class_names": ["a"], "train_counts": [1, 2]}, "x.json")
