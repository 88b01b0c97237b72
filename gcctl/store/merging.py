"""Joining the shards of one extraction (`extract --shard I/N`) into one store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gcctl.errors import GcctlError
from gcctl.files import check_output, identity_differences, output_lock
from gcctl.store.format import (
    EXTRACTION_KEYS,
    FeatureStore,
    Shard,
    extraction_identity,
    is_feature_store,
    write_store,
)


def merge(parts: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Join the shards of one extraction (any order) into a single store; they must be complete and agree.
    One writer at a time, and an earlier store at `out` is replaced only with `overwrite`."""
    out = Path(out)
    with output_lock(out):
        check_output(out, "merge", is_own=is_feature_store, replace_own=overwrite)
        return _merge(parts, out)


def _merge(parts: Sequence[str | os.PathLike], out: Path) -> Path:
    stores = [FeatureStore(part) for part in parts]
    try:
        identities = [extraction_identity(store.provenance) for store in stores]
        for store, identity in zip(stores, identities):
            if identity != identities[0]:
                differing = identity_differences(identities[0], identity)
                raise GcctlError(f"{store.path} was extracted differently from {stores[0].path} ({differing}); merge only shards of one extraction")
        shards = [Shard.parse(store.provenance.get("shard", "0/1")) for store in stores]
        counts = {shard.count for shard in shards}
        indices = sorted(shard.index for shard in shards)
        if len(counts) != 1 or indices != list(range(counts.pop())):
            found = ", ".join(str(shard) for shard in shards)
            raise GcctlError(f"merge needs every shard exactly once; got {found}")
        ordered = [store for _, store in sorted(zip((shard.index for shard in shards), stores), key=lambda pair: pair[0])]
        _check_contiguous(ordered)
        first = ordered[0]
        provenance = {key: first.provenance[key] for key in EXTRACTION_KEYS if key in first.provenance}
        provenance["model_ref"] = first.model_ref().recorded_for(out.resolve().parent).to_dict()
        provenance["shard"] = "0/1"
        provenance["merged_from"] = len(ordered)
        return write_store(
            out,
            np.concatenate([store.load_features() for store in ordered]),
            np.concatenate([store.y for store in ordered]),
            np.concatenate([store.split for store in ordered]),
            [i for store in ordered for i in store.ids],
            {name: np.concatenate([store.attributes[name] for store in ordered]) for name in first.attributes},
            vocabulary=first.vocabulary,
            provenance=provenance,
        )
    finally:
        for store in stores:
            store.close()


def _check_contiguous(ordered: Sequence[FeatureStore]) -> None:
    """Each shard starts where the one before it ends: a shard's rows follow the --batch-size it was extracted
    with (it starts on a whole batch), so shards of one dataset cut with different batch sizes may overlap or
    leave rows out. Stores that record no `row_offset` (written whole) are taken as they come."""
    end = 0
    for store in ordered:
        offset = store.provenance.get("row_offset")
        if offset is not None and offset != end:
            shard = store.provenance.get("shard")
            raise GcctlError(f"shard {shard} ({store.path}) starts at row {offset} but the shards before it end at "
                             f"row {end}: they were extracted with different --batch-size; extract every shard "
                             "with the same one")
        end += len(store)
