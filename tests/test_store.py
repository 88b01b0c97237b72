"""The HDF5 feature store: writing, reading in the stored dtype, sharding and merging."""

import numpy as np
import pytest

from gcctl.clip.reference import ModelRef
from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError
from gcctl.store import FeatureStore, Shard, merge, write_store

VOCABULARY = GroupVocabulary(["landbird", "waterbird"], {"place": ["land", "water"]})


def _arrays(n=10, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "features": rng.normal(size=(n, dim)).astype(np.float16),
        "y": rng.integers(0, 2, n),
        "split": np.arange(n) % 3,
        "ids": [f"img{i}" for i in range(n)],
        "attributes": {"place": rng.integers(0, 2, n)},
    }


def _write(path, arrays, sha256="abc", **provenance):
    return write_store(
        path,
        arrays["features"],
        arrays["y"],
        arrays["split"],
        arrays["ids"],
        arrays["attributes"],
        vocabulary=VOCABULARY,
        provenance={"model_ref": ModelRef("gcctl-micro", "file", "model.pt", sha256).to_dict(), **provenance},
    )


def test_round_trip_keeps_arrays_names_and_stored_dtype(tmp_path):
    arrays = _arrays()
    path = _write(tmp_path / "f.h5", arrays)
    with FeatureStore(path) as store:
        assert store.load_features().dtype == np.float16
        np.testing.assert_array_equal(store.load_features(), arrays["features"])
        np.testing.assert_array_equal(store.y, arrays["y"])
        assert list(store.ids) == arrays["ids"]
        assert store.vocabulary.same_groups(VOCABULARY) and store.class_names == ["landbird", "waterbird"]
        np.testing.assert_array_equal(store.group, 2 * arrays["y"] + arrays["attributes"]["place"])
        train = arrays["split"] == 0
        np.testing.assert_array_equal(store.vocabulary.train_counts, np.bincount(store.group[train], minlength=4))
        assert store.model_ref().architecture == "gcctl-micro"
        assert store.model_ref().anchor == tmp_path.resolve()
        assert store.provenance["embed_dim"] == 4
        np.testing.assert_array_equal(store.split_index("val"), [1, 4, 7])
    assert not (tmp_path / "f.h5.partial").exists()


def test_per_row_codes_are_read_in_the_narrowest_type_that_holds_them(tmp_path):
    """Classes, groups and attribute codes are what a store larger than memory keeps in memory per row."""
    arrays = _arrays(n=300)
    with FeatureStore(_write(tmp_path / "two.h5", arrays)) as store:
        assert store.y.dtype == store.group.dtype == store.attributes["place"].dtype == np.int8
        np.testing.assert_array_equal(store.y, arrays["y"])
    many = GroupVocabulary([f"class {i}" for i in range(300)], {"place": ["land", "water"]})
    arrays["y"] = np.arange(300)
    path = write_store(tmp_path / "many.h5", arrays["features"], arrays["y"], arrays["split"], arrays["ids"],
                       arrays["attributes"], vocabulary=many,
                       provenance={"model_ref": ModelRef("gcctl-micro", "file", "model.pt", "abc").to_dict()})
    with FeatureStore(path) as store:
        assert store.y.dtype == store.group.dtype == np.int16 and store.attributes["place"].dtype == np.int8
        np.testing.assert_array_equal(store.y, arrays["y"])  # 299 fits int16, would not fit int8
        np.testing.assert_array_equal(store.group, 2 * arrays["y"] + arrays["attributes"]["place"])


def test_load_features_gathers_rows_in_the_requested_order(tmp_path, monkeypatch):
    monkeypatch.setattr("gcctl.store.format.BLOCK_ROWS", 3)  # force several blocks
    arrays = _arrays(n=20)
    path = _write(tmp_path / "f.h5", arrays)
    indices = [17, 2, 9, 2, 0, 19]
    with FeatureStore(path) as store:
        np.testing.assert_array_equal(store.load_features(indices), arrays["features"][indices])
        assert store.load_features([]).shape == (0, 4)


def test_group_counts_cover_the_whole_vocabulary(tmp_path):
    arrays = _arrays()
    arrays["y"] = arrays["attributes"]["place"] = np.zeros(10, dtype=int)
    with FeatureStore(_write(tmp_path / "f.h5", arrays)) as store:
        counts = store.group_counts()
    assert counts["landbird/land"] == {"train": 4, "val": 3, "test": 3}
    assert counts["waterbird/water"] == {"train": 0, "val": 0, "test": 0}


def test_shard_rows_partition_the_dataset():
    rows = [list(Shard(i, 3).rows(10)) for i in range(3)]
    assert sum(rows, []) == list(range(10))
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(GcctlError):
            Shard.parse(bad)


def test_shards_of_files_deal_out_whole_files():
    starts = [0, 4, 5, 9]  # four files of 4, 1, 4 and 3 rows
    assert [Shard(i, 3).rows(12, starts) for i in range(3)] == [range(0, 4), range(4, 5), range(5, 12)]
    assert [Shard(i, 3).rows(2, [0]) for i in range(3)] == [range(0, 0), range(0, 0), range(0, 2)]  # more parts than files
    assert [Shard(i, 3).rows(10, range(10)) for i in range(3)] == [Shard(i, 3).rows(10) for i in range(3)]


def test_merge_joins_shards_in_order_and_checks_them(tmp_path):
    whole = _arrays(n=9)
    parts = []
    for index in (2, 0, 1):  # any order
        rows = Shard(index, 3).rows(9)
        part = {key: (value[rows.start : rows.stop] if key != "attributes" else {"place": value["place"][rows.start : rows.stop]}) for key, value in whole.items()}
        parts.append(_write(tmp_path / f"part{index}.h5", part, shard=f"{index}/3"))
    merged = merge(parts, tmp_path / "all.h5")
    with FeatureStore(merged) as store:
        np.testing.assert_array_equal(store.load_features(), whole["features"])
        assert list(store.ids) == whole["ids"]
        np.testing.assert_array_equal(store.attributes["place"], whole["attributes"]["place"])
    with pytest.raises(GcctlError, match="every shard exactly once"):
        merge(parts[:2], tmp_path / "bad.h5")
    other = _write(tmp_path / "other.h5", _arrays(n=3), shard="1/3", sha256="def")
    with pytest.raises(GcctlError, match=r"\(model \w+ → \w+\); merge only shards of one extraction"):
        merge([parts[1], other, parts[0]], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_opening_a_missing_or_foreign_file_is_a_user_error(tmp_path):
    with pytest.raises(GcctlError, match="not found"):
        FeatureStore(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(GcctlError, match="not a readable HDF5"):
        FeatureStore(tmp_path / "text.h5")


def test_groups_that_disagree_with_the_vocabulary_are_refused(tmp_path):
    import h5py

    path = _write(tmp_path / "f.h5", _arrays())
    with h5py.File(path, "r+") as handle:
        handle["group"][0] = (handle["group"][0] + 1) % 4
    with pytest.raises(GcctlError, match="do not follow its classes and attributes"):
        FeatureStore(path)


def test_a_store_that_records_names_instead_of_a_vocabulary_is_still_read(tmp_path):
    import h5py

    arrays = _arrays()
    path = _write(tmp_path / "f.h5", arrays)
    with h5py.File(path, "r+") as handle:
        del handle.attrs["group_vocabulary"]
        handle.attrs["class_names"] = '["landbird", "waterbird"]'
        handle.attrs["attribute_values"] = '{"place": ["land", "water"]}'
    with FeatureStore(path) as store, FeatureStore(_write(tmp_path / "new.h5", arrays)) as new:
        assert store.vocabulary == new.vocabulary
