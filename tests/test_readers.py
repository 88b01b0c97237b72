"""Readers of the StarFT paper's datasets, each on a tiny fixture written in its real on-disk layout."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from gcctl.datasets import ClassSubset, DatasetTable, load_dataset
from gcctl.datasets.imagenet import imagenet_classes
from gcctl.datasets.images import ImageDataset
from gcctl.errors import GcctlError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_image(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path, format="PNG")


def write_folders(root: Path, counts: dict[str, int], suffix: str = ".jpg") -> Path:
    """`counts[relative folder]` images in each folder."""
    for folder, count in counts.items():
        for index in range(count):
            write_image(root / folder / f"img_{index}{suffix}", 10 * index)
    return root


def wnid(name: str) -> str:
    classes = imagenet_classes()
    return classes.loc[classes["name"] == name, "wnid"].iloc[0]


def counts_by(table: DatasetTable, *columns: str) -> dict:
    return table.frame.groupby(list(columns)).size().to_dict()


# --- image folders ----------------------------------------------------------------------------------------


def test_imagefolder_with_split_folders_takes_classes_from_all_splits(tmp_path):
    root = write_folders(tmp_path, {"train/cat": 2, "train/dog": 1, "val/cat": 1, "test/dog": 1, "test/bird_house": 2})
    table = load_dataset("imagefolder", root)
    assert table.class_names == ["bird house", "cat", "dog"]
    assert table.attributes == {} and table.vocabulary.names == ["bird house", "cat", "dog"]
    assert counts_by(table, "split", "class_name") == {("train", "cat"): 2, ("train", "dog"): 1, ("val", "cat"): 1,
                                                       ("test", "bird house"): 2, ("test", "dog"): 1}
    assert table.frame["path"].iloc[0] == "train/cat/img_0.jpg" and table.missing_files() == []


def test_imagefolder_without_split_folders_puts_every_image_in_one_split(tmp_path):
    root = write_folders(tmp_path, {"cat": 1, "dog": 2, ".ipynb_checkpoints": 1})
    assert set(load_dataset("imagefolder", root).frame["split"]) == {"test"}
    table = load_dataset("imagefolder", root, split="val")
    assert table.class_names == ["cat", "dog"] and table.frame["split"].tolist() == ["val"] * 3
    assert table.frame["y"].tolist() == [0, 1, 1]


def test_imagefolder_bad_layouts_are_one_line_errors(tmp_path):
    split = write_folders(tmp_path / "split", {"train/cat": 1})
    with pytest.raises(GcctlError, match="has split folders .*train.*; leave out --folder-split"):
        load_dataset("imagefolder", split, split="test")
    write_folders(split, {"dog": 1})
    with pytest.raises(GcctlError, match="mixes split folders .* with class folders .*dog"):
        load_dataset("imagefolder", split)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(GcctlError, match="no images under .*expected ROOT/<class>/<image>"):
        load_dataset("imagefolder", tmp_path / "empty")
    with pytest.raises(GcctlError, match="1 names given for the imagefolder classes but it has 2 values"):
        load_dataset("imagefolder", write_folders(tmp_path / "two", {"cat": 1, "dog": 1}), class_names=["cat"])


def test_a_directory_link_loop_gives_exactly_the_images_of_the_tree(tmp_path):
    """`a/loop -> ..` once turned 4 images into 164 rows: no directory link below a class folder is followed, while
    a class folder that is itself a link is read, as are image files that are links."""
    root = write_folders(tmp_path / "tree", {"a": 2, "a/deeper": 1, "b": 1})
    (root / "a" / "loop").symlink_to("..", target_is_directory=True)
    write_folders(tmp_path / "elsewhere", {"c": 1})
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c", target_is_directory=True)
    (root / "b" / "linked.png").symlink_to(root / "a" / "img_0.jpg")
    table = load_dataset("imagefolder", root)
    assert table.frame["path"].tolist() == ["a/img_0.jpg", "a/img_1.jpg", "a/deeper/img_0.jpg", "b/img_0.jpg",
                                            "b/linked.png", "c/img_0.jpg"]
    assert table.frame["y"].tolist() == [0, 0, 0, 1, 1, 2]
    pacs = write_folders(tmp_path / "pacs", {"photo/dog": 1})
    (pacs / "photo" / "dog" / "up").symlink_to("../..", target_is_directory=True)
    assert len(load_dataset("pacs", pacs).frame) == 1


def test_a_tree_without_links_is_read_as_torchvision_imagefolder_reads_it(tmp_path):
    root = write_folders(tmp_path, {"cat": 2, "cat/x_y": 1, "cat/x-y": 1, "dog": 1, "dog/Z": 1}, suffix=".PNG")
    write_folders(root, {"dog": 1}, suffix=".txt")
    expected = [(Path(path).relative_to(root).as_posix(), y) for path, y in torchvision.datasets.ImageFolder(root).samples]
    table = load_dataset("imagefolder", root)
    assert list(zip(table.frame["path"], table.frame["y"])) == expected and len(expected) == 6


def test_caltech101_leaves_out_the_background_folder(tmp_path):
    write_folders(tmp_path / "caltech101" / "101_ObjectCategories",
                  {"BACKGROUND_Google": 2, "Faces_easy": 1, "car_side": 2})
    table = load_dataset("caltech101", tmp_path)
    assert table.class_names == ["Faces easy", "car side"]
    assert len(table.frame) == 3 and set(table.frame["split"]) == {"test"}
    assert table.frame["path"].iloc[0] == "Faces_easy/img_0.jpg" and table.missing_files() == []


def test_pacs_domains_are_the_group_attribute(tmp_path):
    write_folders(tmp_path / "kfold", {"art_painting/dog": 2, "art_painting/horse": 1, "sketch/dog": 1, "sketch/horse": 3})
    table = load_dataset("pacs", tmp_path)
    assert table.class_names == ["dog", "horse"] and table.attributes == {"domain": ["art_painting", "sketch"]}
    assert table.group_counts()["test"].to_dict() == {"dog/art_painting": 2, "dog/sketch": 1,
                                                      "horse/art_painting": 1, "horse/sketch": 3}


# --- ImageNet and its shifts ------------------------------------------------------------------------------


def test_shipped_class_list_is_imagenet_order_with_clip_names_and_the_r_a_subsets():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes["wnid"].is_monotonic_increasing and classes["wnid"].is_unique
    assert classes.loc[0, ["wnid", "name"]].tolist() == ["n01440764", "tench"]
    assert classes.loc[999, ["wnid", "name"]].tolist() == ["n15075141", "toilet paper"]
    assert classes["imagenet_r"].sum() == 200 and classes["imagenet_a"].sum() == 200


def test_imagenet_train_and_val_synset_folders(tmp_path):
    root = write_folders(tmp_path, {"train/n01440764": 24, "train/n01443537": 1, "val/n15075141": 1}, ".JPEG")
    table = load_dataset("imagenet", root)
    assert len(table.class_names) == 1000 and table.class_names[:2] == ["tench", "goldfish"]
    # val/ is the reported test split; validation is a fixed holdout of train (10 a class, at most half of it).
    assert counts_by(table, "split", "y") == {("train", 0): 14, ("val", 0): 10, ("train", 1): 1, ("test", 999): 1}
    reread = load_dataset("imagenet", root)
    assert reread.frame["split"].tolist() == table.frame["split"].tolist()
    assert table.class_subset is None and table.missing_files() == []


def test_imagenet_folder_outside_the_class_list_is_named(tmp_path):
    root = write_folders(tmp_path, {"train/n01440764": 1, "train/n99999999": 1})
    with pytest.raises(GcctlError, match=r"1 class folders that are not among its 1000 synsets \(first: n99999999\)"):
        load_dataset("imagenet", root)


def test_imagenet_v2_class_index_folders_in_the_release_folder(tmp_path):
    write_folders(tmp_path / "imagenetv2-matched-frequency-format-val", {"0": 2, "999": 1}, ".jpeg")
    table = load_dataset("imagenet-v2", tmp_path)
    assert len(table.class_names) == 1000 and sorted(table.frame["y"]) == [0, 0, 999]
    assert set(table.frame["split"]) == {"test"} and table.missing_files() == []
    write_folders(tmp_path / "imagenetv2-matched-frequency-format-val", {"1000": 1})
    with pytest.raises(GcctlError, match=r"folders that are not class indices \(1000\)"):
        load_dataset("imagenet-v2", tmp_path)
    write_folders(tmp_path / "imagenetv2-top-images-format-val", {"0": 1})
    with pytest.raises(GcctlError, match="several ImageNet-V2 variants .*; pass one of them as --root"):
        load_dataset("imagenet-v2", tmp_path)


def test_imagenet_sketch_synset_folders(tmp_path):
    write_folders(tmp_path / "sketch", {"n01440764": 1, "n01443537": 2})
    table = load_dataset("imagenet-sketch", tmp_path)
    assert len(table.class_names) == 1000 and sorted(table.frame["y"]) == [0, 1, 1]


@pytest.mark.parametrize("dataset", ["imagenet-r", "imagenet-a"])
def test_imagenet_r_and_a_keep_their_200_classes_and_where_they_sit_in_imagenet(tmp_path, dataset):
    classes = imagenet_classes()
    members = classes[classes[dataset.replace("-", "_")] == 1]
    first, last = members.iloc[0], members.iloc[-1]
    write_folders(tmp_path / dataset, {first["wnid"]: 2, last["wnid"]: 1})
    table = load_dataset(dataset, tmp_path)
    assert table.class_names == members["name"].tolist() and table.frame["y"].tolist() == [0, 0, 199]
    subset = table.class_subset
    assert subset.space == "imagenet" and subset.space_size == 1000
    assert subset.indices == tuple(members.index) and subset.indices[0] == first.name
    saved = tmp_path / "table.parquet"
    table.save(saved)
    assert DatasetTable.load(saved) == table and DatasetTable.load(saved).class_subset == subset


def test_imagenet_r_folder_with_a_synset_outside_the_subset_is_named(tmp_path):
    assert imagenet_classes().loc[0, "imagenet_r"] == 0  # tench is not an ImageNet-R class
    write_folders(tmp_path, {wnid("goldfish"): 1, "n01440764": 1})
    with pytest.raises(GcctlError, match=r"ImageNet-R folder .* not among its 200 synsets \(first: n01440764\)"):
        load_dataset("imagenet-r", tmp_path)


def test_subset_restricts_1000_way_logits_to_the_subset_columns_numpy_and_torch():
    subset = ClassSubset("imagenet", 1000, (1, 2, 999))
    logits = np.zeros((2, 1000))
    logits[0, [0, 2]] = [9.0, 5.0]  # class 0 is outside the subset: it cannot win
    logits[1, 999] = 3.0
    restricted = subset.restrict(logits)
    assert restricted.shape == (2, 3) and restricted.argmax(axis=1).tolist() == [1, 2]
    assert torch.equal(subset.restrict(torch.from_numpy(logits)), torch.from_numpy(restricted))
    with pytest.raises(GcctlError, match="logits over 200 classes cannot be restricted to a subset of imagenet's 1000"):
        subset.restrict(np.zeros((1, 200)))


def test_a_subset_changes_the_fingerprint_only_when_present(tmp_path):
    write_folders(tmp_path / "imagenet-r", {wnid("goldfish"): 1})
    table = load_dataset("imagenet-r", tmp_path)
    without = DatasetTable(table.frame, table.root, table.dataset, table.class_names, table.attributes)
    assert without.fingerprint() != table.fingerprint()


# --- CIFAR and STL10 through torchvision ------------------------------------------------------------------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


def cifar_batch(labels: list[int], key: str, seed: int) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    return {"data": data, key: labels}


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch) -> Path:
    """cifar-10-batches-py with 2 images per train batch and 3 test images; torchvision's md5s set to theirs."""
    folder = tmp_path / "cifar-10-batches-py"
    for batch in range(1, 6):
        write_pickle(folder / f"data_batch_{batch}", cifar_batch([batch, 9 - batch], "labels", batch))
    write_pickle(folder / "test_batch", cifar_batch([0, 3, 9], "labels", 0))
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES})
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")] for b in range(1, 6)])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "batches.meta")})
    return tmp_path


def test_cifar10_rows_point_at_png_copies_of_torchvisions_pixels(cifar10_root):
    table = load_dataset("cifar10", cifar10_root)
    assert table.class_names == CIFAR10_NAMES
    assert counts_by(table, "split") == {"train": 10, "test": 3}
    assert table.frame["y"].tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4, 0, 3, 9]
    assert table.frame["path"].iloc[-1] == "gcctl-images/cifar10/test/00002.png" and table.missing_files() == []
    test_images = torchvision.datasets.CIFAR10(cifar10_root, train=False)
    with Image.open(cifar10_root / table.frame["path"].iloc[-1]) as copy:
        assert np.array_equal(np.asarray(copy), test_images.data[2])
    image, row = ImageDataset(table, transform=np.asarray)[12]
    assert row == 12 and np.array_equal(image, test_images.data[2])


def test_packed_images_are_written_once_and_reused(cifar10_root):
    load_dataset("cifar10", cifar10_root)
    copy = cifar10_root / "gcctl-images" / "cifar10" / "train" / "00000.png"
    copy.write_bytes(b"marker")  # a rewrite would replace it
    assert load_dataset("cifar10", cifar10_root).missing_files() == [] and copy.read_bytes() == b"marker"
    assert not list(cifar10_root.glob("gcctl-images/cifar10/*.partial"))


def test_cifar_file_missing_or_changed_is_one_line_naming_the_layout(cifar10_root, tmp_path):
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"changed")
    with pytest.raises(GcctlError, match=r"no complete cifar10 under .*md5.*expected ROOT/cifar-10-batches-py/"):
        load_dataset("cifar10", cifar10_root)
    assert not (cifar10_root / "gcctl-images").exists()


def test_cifar100_fine_labels_with_readable_names(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    names = [f"class_{index}" for index in range(99)] + ["aquarium_fish"]
    write_pickle(folder / "train", cifar_batch([99, 0], "fine_labels", 1))
    write_pickle(folder / "test", cifar_batch([5], "fine_labels", 2))
    write_pickle(folder / "meta", {"fine_label_names": names})
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", md5(folder / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", md5(folder / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / "meta")})
    table = load_dataset("cifar100", tmp_path)
    assert len(table.class_names) == 100 and table.class_names[99] == "aquarium fish"
    assert table.frame[["split", "y"]].values.tolist() == [["train", 99], ["train", 0], ["test", 5]]


def test_stl10_labelled_splits_from_its_binaries(tmp_path, monkeypatch):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    files = {"train_X.bin": rng.integers(0, 256, 2 * 3 * 96 * 96), "train_y.bin": [1, 10],
             "test_X.bin": rng.integers(0, 256, 3 * 3 * 96 * 96), "test_y.bin": [2, 2, 5],
             "unlabeled_X.bin": rng.integers(0, 256, 3 * 96 * 96)}
    for name, values in files.items():
        np.asarray(values, dtype=np.uint8).tofile(folder / name)
    (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                                       "monkey", "ship", "truck"]) + "\n")
    cls = torchvision.datasets.STL10
    monkeypatch.setattr(cls, "train_list", [[name, md5(folder / name)] for name in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")])
    monkeypatch.setattr(cls, "test_list", [[name, md5(folder / name)] for name in ("test_X.bin", "test_y.bin")])
    table = load_dataset("stl10", tmp_path)
    assert table.class_names[-1] == "truck"
    assert table.frame[["split", "y"]].values.tolist() == [["train", 0], ["train", 9], ["test", 1], ["test", 1], ["test", 4]]
    with Image.open(tmp_path / table.frame["path"].iloc[1]) as copy:
        assert np.array_equal(np.asarray(copy), np.asarray(cls(tmp_path, split="train")[1][0]))


# --- Waterbirds roots and missing roots -------------------------------------------------------------------


def write_waterbirds(folder: Path) -> Path:
    rows = [(0, 0, 0), (1, 1, 0), (1, 0, 2)]
    lines = ["img_id,img_filename,y,split,place,place_filename"]
    for index, (y, place, split) in enumerate(rows):
        write_image(folder / f"{y:03d}.species/bird_{index}.jpg")
        lines.append(f"{index + 1},{y:03d}.species/bird_{index}.jpg,{y},{split},{place},/x/{index}.jpg")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("inner", ["waterbirds_v1.0", "waterbird_complete95_forest2water2"])
def test_waterbirds_root_may_hold_the_dataset_folder(tmp_path, inner):
    direct = load_dataset("waterbirds", write_waterbirds(tmp_path / inner))
    held = load_dataset("waterbirds", tmp_path)
    assert held.root == tmp_path / inner and held.fingerprint() == direct.fingerprint()
    assert held.missing_files() == []


@pytest.mark.parametrize("dataset, layout", [("imagenet", "ROOT/train/<wnid>"), ("cifar10", "cifar-10-batches-py"),
                                             ("pacs", "art_painting, cartoon, photo, sketch"),
                                             ("waterbirds", "waterbirds_v1.0")])
def test_a_missing_root_names_the_layout_expected(tmp_path, dataset, layout):
    with pytest.raises(GcctlError, match=f"dataset root .*absent is not a directory; {dataset} expects .*{layout}"):
        load_dataset(dataset, tmp_path / "absent")


def test_data_table_of_imagenet_r_with_the_cli(tmp_path, run_cli):
    write_folders(tmp_path / "imagenet-r", {wnid("goldfish"): 1})
    code, _, err = run_cli("data", "table", "--dataset", "imagenet-r", "--root", str(tmp_path),
                           "--out", str(tmp_path / "r.parquet"), "--json")
    assert code == 0, err
    assert DatasetTable.load(tmp_path / "r.parquet").class_subset.indices[0] == 1
    code, _, err = run_cli("data", "show", "--dataset", "imagefolder", "--root", str(tmp_path / "imagenet-r"),
                           "--folder-split", "fold7")
    assert code == 1 and err.strip().count("\n") == 0 and "unknown split values ['fold7']" in err
