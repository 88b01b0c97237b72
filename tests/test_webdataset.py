"""The webdataset layout: img2dataset-style tar shards read in place into the table, the extractor and its shares."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from gcctl.datasets import load_dataset
from gcctl.datasets.images import ImageDataset
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, Shard, extract


def _image_bytes(seed: int, format: str = "JPEG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def write_shard(path, samples):
    """A tar as img2dataset writes one: per sample `<key>.<ext>` members; `samples` is [(key, {ext: bytes})]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _sample(index: int, label: int, place: str, split: str, image_format: str = "JPEG"):
    described = {"key": f"{index:09d}", "label": label, "place": place, "split": split, "caption": "a bird"}
    extension = "jpg" if image_format == "JPEG" else "png"
    return f"{index:09d}", {extension: _image_bytes(index, image_format), "json": json.dumps(described).encode(),
                            "cls": str(label).encode(), "txt": b"a bird"}


@pytest.fixture()
def shards(tmp_path):
    """Three shards of four samples (one shard of PNGs), labels and a place in every json."""
    root = tmp_path / "shards"
    for number in range(3):
        samples = [_sample(4 * number + i, (number + i) % 2, ["land", "water"][i % 2], ["train", "test"][i // 3],
                           "PNG" if number == 1 else "JPEG") for i in range(4)]
        write_shard(root / f"{number:05d}.tar", samples)
    return root


def test_shards_are_read_into_the_table_in_shard_and_archive_order(shards):
    table = load_dataset("webdataset", shards, attribute_columns=("place",), split_column="split")
    assert len(table.frame) == 12
    assert table.frame["path"].iloc[4] == "00001.tar::000000004.png"
    assert table.frame["id"].iloc[0] == "00000/000000000"
    assert table.class_names == ["0", "1"] and table.attributes == {"place": ["land", "water"]}
    assert table.frame["split"].tolist()[:4] == ["train", "train", "train", "test"]
    assert table.frame["y"].tolist()[4:8] == [1, 0, 1, 0]
    table.require_files()
    images = ImageDataset(table, lambda image: np.asarray(image))
    pixels, row = images[5]
    assert row == 5 and pixels.shape == (8, 8, 3)
    assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(_image_bytes(5, "PNG"))).convert("RGB")))


def test_json_fields_choose_label_split_and_id(shards):
    table = load_dataset("webdataset", shards, label_column="place", id_column="key")
    assert table.class_names == ["land", "water"] and table.attributes == {}
    assert table.frame["id"].iloc[11] == "000000011"
    assert set(table.frame["split"]) == {"train"}  # no split field and no split folders


def test_a_split_folder_gives_the_split(tmp_path):
    write_shard(tmp_path / "train" / "00000.tar", [_sample(0, 0, "land", "x")])
    write_shard(tmp_path / "val" / "00000.tar", [_sample(1, 1, "water", "x")])
    table = load_dataset("webdataset", tmp_path)
    assert table.frame["split"].tolist() == ["train", "val"]
    assert table.frame["id"].tolist() == ["train/00000/000000000", "val/00000/000000001"]


def test_shares_are_whole_shard_files(shards, micro_bundle, tmp_path):
    table = load_dataset("webdataset", shards, attribute_columns=("place",))
    extract(table, micro_bundle, tmp_path / "whole.h5", batch_size=5)
    parts = [tmp_path / f"part{i}.h5" for i in range(2)]
    for index, part in enumerate(parts):
        summary = extract(table, micro_bundle, part, batch_size=5, shard=Shard(index, 2))
        assert summary["rows"] == [4, 8][index]  # shard files 0 | 1, 2: no file is read by two processes
    with FeatureStore(tmp_path / "whole.h5") as whole, FeatureStore(parts[1]) as second:
        np.testing.assert_array_equal(second.load_features(), whole.load_features()[4:])


def test_members_decoded_on_the_device_give_nearly_the_features_of_pil(shards, micro_bundle, tmp_path):
    """--decode torchcodec reads each member's bytes out of its shard; the PNG shard falls back to PIL's decoder."""
    table = load_dataset("webdataset", shards, attribute_columns=("place",))
    extract(table, micro_bundle, tmp_path / "pil.h5", batch_size=5, dtype="float32")
    extract(table, micro_bundle, tmp_path / "device.h5", batch_size=5, dtype="float32", decode="torchcodec")
    with FeatureStore(tmp_path / "pil.h5") as pil, FeatureStore(tmp_path / "device.h5") as device:
        assert ((pil.load_features() * device.load_features()).sum(axis=1) > 0.99).all()
        assert device.provenance["decode"] == "torchcodec"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "bad header"])
def test_a_damaged_shard_is_one_line_naming_it(shards, damage):
    shard = shards / "00001.tar"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        shard.write_bytes(b"not a tar at all" * 100)
    else:  # the third member's header overwritten: tarfile alone would stop there quietly
        with tarfile.open(shard) as archive:
            offset = archive.getmembers()[2].offset
        shard.write_bytes(data[:offset] + b"\x07" * 512 + data[offset + 512 :])
    with pytest.raises(GcctlError, match=r"tar shard .*00001\.tar is damaged or cut short .*write it again"):
        load_dataset("webdataset", shards)


def test_a_sample_without_an_image_is_one_line_naming_it(tmp_path):
    key, members = _sample(7, 0, "land", "train")
    del members["jpg"]
    write_shard(tmp_path / "00000.tar", [_sample(6, 1, "water", "train"), (key, members)])
    with pytest.raises(GcctlError, match=r"sample '000000007' in .*00000\.tar has no image"):
        load_dataset("webdataset", tmp_path)


def test_an_undecodable_image_in_a_shard_is_named_by_its_member(tmp_path):
    key, members = _sample(3, 0, "land", "train")
    members["jpg"] = b"not a jpeg"
    write_shard(tmp_path / "00000.tar", [(key, members)])
    images = ImageDataset(load_dataset("webdataset", tmp_path), lambda image: image)
    with pytest.raises(GcctlError, match=r"cannot read image .*00000\.tar::000000003\.jpg: cannot identify image file$"):
        images[0]


def test_missing_labels_and_fields_are_one_line(tmp_path):
    key, members = _sample(0, 0, "land", "train")
    del members["cls"]
    write_shard(tmp_path / "00000.tar", [(key, members)])
    with pytest.raises(GcctlError, match="has no .cls label; pass --label-column"):
        load_dataset("webdataset", tmp_path)
    with pytest.raises(GcctlError, match="has no json field 'colour'"):
        load_dataset("webdataset", tmp_path, label_column="label", attribute_columns=("colour",))


def test_no_shards_is_one_line(tmp_path):
    with pytest.raises(GcctlError, match="no .tar shards under"):
        load_dataset("webdataset", tmp_path)


def test_cli_extracts_from_shards(shards, tmp_path, run_cli):
    code, out, err = run_cli("extract", "--dataset", "webdataset", "--root", str(shards), "--attribute-column", "place",
                             "--split-column", "split", "--model", "gcctl-micro", "--out", str(tmp_path / "f.h5"), "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == 12
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.ids[4] == "00001/000000004" and store.vocabulary.attributes == {"place": ["land", "water"]}
