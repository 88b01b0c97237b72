"""The feature store: the only package that reads or writes feature files.

`format` is the file and its reader, `rows` what of it stays in memory, `extraction` how a store is made
(resumable, under torchrun), `merging` how shards are joined.
"""

from gcctl.runtime import lazy_exports

_LAZY = {
    "BLOCK_ROWS": "format",
    "FEATURE_DTYPES": "format",
    "SPLIT_CODES": "format",
    "FeatureStore": "format",
    "Shard": "format",
    "is_feature_store": "format",
    "write_store": "format",
    "StoredRows": "rows",
    "check_memory_budget": "rows",
    "fits_in_memory": "rows",
    "load_rows": "rows",
    "memory_budget": "rows",
    "check_extract_out": "extraction",
    "default_workers": "extraction",
    "extract": "extraction",
    "rank_part_path": "extraction",
    "merge": "merging",
}
__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
