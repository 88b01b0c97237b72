"""Extraction: a dataset table encoded by a model's image tower into a feature store, resumable and sharded.

Extraction writes into `<out>.partial` and records after every batch how many rows are done, so a killed run
resumes where it stopped; the finished file appears by an atomic rename. One process at a time writes an
--out (`gcctl.files.output_lock`).

Batches are a function of the row index alone (`_batch_starts`): rows are cut every `batch_size` rows from the
first row (from the first row of each tar file when the images lie in archives), a part (`--shard`, a torchrun
process) starts on such a cut, and a resumed run goes back to the last cut it reached. So every row meets the
same rows in the same batch, hence the same kernels, however the work is split or interrupted: the store is
bit for bit the same on CPU for the same --batch-size.

Under torchrun every process writes its part the same way, into `<out>.rank<r>-of-<n>`, and rank 0 then joins
the parts into `<out>`: written as a single process writes its store, byte for byte (the process count is
recorded only in the parts, as their `shard`), renamed into place once, and the parts removed. Rank 0 holds the
lock of `<out>` from before any work to the rename, and a user error in any process is agreed on by all of them
(`gcctl.distributed.raise_if_any_failed`) and printed once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import h5py
import numpy as np

import gcctl.store.format as store_format
from gcctl import __version__
from gcctl.datasets.decoding import DECODERS, jpeg_decoder
from gcctl.datasets.tar_members import archive_starts
from gcctl.errors import GcctlError
from gcctl.files import (
    check_output,
    output_lock,
    partial_path,
    refuse_directory,
    refuse_inside,
)
from gcctl.runtime import autocast, cpu_budget, device_layout, in_background, resolve_device
from gcctl.store.format import (
    COMPLETE_KEY,
    EXTRACTION_KEYS,
    FEATURE_DTYPES,
    SPLIT_CODES,
    VOCABULARY_KEY,
    Shard,
    create_layout,
    extraction_identity,
    is_feature_store,
    read_attrs,
    set_attrs,
)

if TYPE_CHECKING:  # the store sits above models in the layering
    import torch

    from gcctl.clip.factory import ClipBundle
    from gcctl.datasets.table import DatasetTable
    from gcctl.distributed import World


# A store's size beyond its features: labels, split, id and attributes per row, and HDF5's own bookkeeping.
_ROW_OVERHEAD_BYTES = 128
_FILE_OVERHEAD_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class _Options:
    """How `extract` encodes, as every process of it passes it on (`device` is the process's own)."""

    batch_size: int
    workers: int | None
    dtype: str
    normalize: bool
    decode: str
    device: "torch.device"


def extract(
    table: "DatasetTable",
    bundle: "ClipBundle",
    out: str | os.PathLike,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    dtype: str = "float16",
    normalize: bool = True,
    decode: str = DECODERS[0],
    shard: Shard = Shard(),
    device=None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Encode every image of `table` (or of one shard of it) with the frozen image tower into an HDF5 store.

    Resumes an interrupted run with the same identity; replaces an earlier store only with `overwrite`, and
    nothing else; returns a summary with rows encoded and throughput. `workers` processes decode the next
    batches while the tower runs (None: `default_workers`); the features do not depend on it. `decode` says who
    makes pixels of the files (`gcctl.datasets.decoding`): PIL in the workers, or a library's batched JPEG
    decoder on `device` (TorchCodec, torchvision), where the batch is also resized; the store records which.
    Under torchrun
    (WORLD_SIZE > 1) the processes split the rows between them (see the module doc); only rank 0 reports
    progress and a summary.
    """
    if dtype not in FEATURE_DTYPES:
        raise GcctlError(f"--dtype '{dtype}' is not supported; choose float16 or float32")
    _check_decoder(decode, bundle)
    from gcctl.distributed import joined_world, process_device  # torch, imported only when extracting

    out = Path(out)
    device = resolve_device("auto" if device is None else str(device))
    with joined_world(device, backend="gloo") as world:  # only small objects pass between the processes
        options = _Options(batch_size, workers, dtype, normalize, decode, device)
        if world.distributed:
            return _extract_by_rank(table, bundle, out, world, shard, overwrite, on_progress, options)
        table.require_files()
        options = dataclasses.replace(options, device=process_device(device, world))
        with output_lock(out):  # held until the rename: the .partial is this process's alone
            check_extract_out(table, out, overwrite)  # again under the lock: another process may have just finished
            _remove_parts(out)  # a killed torchrun's: this process writes every row itself
            _check_free_space(out, len(_shard_rows(table, shard, batch_size)), bundle.provenance["embed_dim"], dtype)
            return _encode(table, bundle, out, shard, on_progress, options)


def _check_decoder(decode: str, bundle: "ClipBundle") -> None:
    """Before any work: the decoder exists and is installed, and the model's eval transform has a tensor twin."""
    from gcctl.clip.preprocess import tensor_twin_gap

    if jpeg_decoder(decode) is not None and (gap := tensor_twin_gap(bundle.model.visual.preprocess_cfg)):
        raise GcctlError(f"--decode {decode}: {gap}; extract with --decode pil")


def check_extract_out(table: "DatasetTable", out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a folder, lies among the dataset's files, or holds anything but an earlier store
    (which only `overwrite` replaces); cheap, so the CLI asks before it builds the model."""
    refuse_directory(out)
    refuse_inside(out, table.root, "the dataset root")
    check_output(out, "extract", is_own=is_feature_store, replace_own=overwrite)


def default_workers(device) -> int:
    """Processes that decode the next batches while the tower encodes this one (a thread always does, too).

    On CPU the tower takes every core and decoding is a small share of the work, so the thread hides it: a
    process costs a fork and a copy through shared memory, and measured slower (extract / forward 0.89 with
    one process against 0.93 with the thread, alternating in one run on 2 cores). An accelerator needs the host to keep up, so every
    core but the main process's (at most 8, where returns flatten)."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, cpu_budget() - 1))


def _table_arrays(table: "DatasetTable", rows: range) -> dict:
    frame = table.frame.iloc[rows.start : rows.stop]
    return {
        "y": frame["y"].to_numpy(),
        "group": frame["group"].to_numpy(),
        "split": frame["split"].map(SPLIT_CODES).to_numpy(),
        "ids": frame["id"].astype(str).tolist(),
        "attributes": {name: frame[name].to_numpy() for name in table.attributes},
    }


def _extraction_attrs(table: "DatasetTable", bundle: "ClipBundle", options: _Options, shard: Shard, folder: Path) -> dict:
    return {
        "model_ref": bundle.reference.recorded_for(folder).to_dict(),
        "embed_dim": int(bundle.provenance["embed_dim"]),
        "normalized": bool(options.normalize),
        "dataset": table.dataset,
        "dataset_fingerprint": table.fingerprint(),
        "dtype": options.dtype,
        "decode": options.decode,
        "shard": str(shard),
    }


def _same_extraction(stored: dict, attrs: dict) -> bool:
    """Whether a file was written by the extraction `attrs` describes, rows included (its shard)."""
    keys = (*EXTRACTION_KEYS, "shard")
    return extraction_identity(stored, keys) == extraction_identity(attrs, keys)


def _open_partial(tmp: Path, attrs: dict, rows: range) -> h5py.File | None:
    """Reopen an interrupted extraction if it was made with the same identity for the same `rows` (a part's rows
    follow --batch-size); otherwise discard it."""
    if not tmp.exists():
        return None
    try:
        handle = h5py.File(tmp, "r+")
    except OSError:  # killed in the middle of an HDF5 metadata write: start over
        tmp.unlink()
        return None
    if not (_same_extraction(stored := read_attrs(handle), attrs) and _same_rows(stored, rows)):
        handle.close()
        tmp.unlink()
        return None
    return handle


def _same_rows(stored: dict, rows: range) -> bool:
    return stored.get("row_offset") == rows.start and stored.get("n_rows") == len(rows)


def _create_partial(tmp: Path, table: "DatasetTable", rows: range, identity: dict) -> h5py.File:
    """A fresh `.partial` store with every dataset but the features filled in and no row done."""
    handle = h5py.File(tmp, "w")
    create_layout(handle, len(rows), identity["embed_dim"], identity["dtype"], **_table_arrays(table, rows))
    set_attrs(
        handle,
        {
            **identity,
            "gcctl_version": __version__,
            "n_rows": len(rows),
            "row_offset": rows.start,
            "rows_done": 0,
            VOCABULARY_KEY: table.vocabulary.to_dict(),
        },
    )
    return handle


def _first_line_of_worker_error(error: Exception) -> str:
    # DataLoader re-raises a worker's GcctlError with the worker traceback folded into the message.
    return str(error).rsplit("GcctlError: ", 1)[-1]


def _shard_rows(table: "DatasetTable", shard: Shard, batch_size: int) -> range:
    """The rows of `shard`: whole tar shard files when the images lie in archives, else whole batches (it starts
    on a multiple of `batch_size`; only the last part ends with a short batch)."""
    n_rows, starts = len(table.frame), archive_starts(table.frame["path"].tolist())
    if starts is not None:
        return shard.rows(n_rows, starts)
    batches = shard.rows(-(-n_rows // batch_size))
    return range(min(n_rows, batches.start * batch_size), min(n_rows, batches.stop * batch_size))


def _batch_starts(table: "DatasetTable", rows: range, batch_size: int) -> list[int]:
    """The first row of every batch of `rows`, a function of the row index alone: every `batch_size` rows from
    row 0, or from the first row of each tar file when the images lie in archives (a part may start at any of
    them). Any part of the rows that starts on one of these cuts is thus encoded in the very batches one process
    encodes the whole table in."""
    units = archive_starts(table.frame["path"].tolist()) or [0]
    ends = [*units[1:], len(table.frame)]
    return [row for start, end in zip(units, ends) if start < rows.stop and end > rows.start
            for row in range(start, end, batch_size) if rows.start <= row < rows.stop]


@contextlib.contextmanager
def _deterministic_kernels(device):
    """cuDNN's deterministic algorithms, no autotuning and no TF32 while extracting on CUDA (restored after): the
    same batch then meets the same kernels in every run. A no-op elsewhere."""
    if device.type != "cuda":
        yield
        return
    import torch

    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def rank_part_path(out: Path, part: Shard) -> Path:
    """Where the process of rank `part.index` (of `part.count`) writes its part of `out` under torchrun."""
    return out.with_name(f"{out.name}.rank{part.index}-of-{part.count}")


_PART_SUFFIX = re.compile(r"\.rank(\d+)-of-(\d+)(?:\.partial|\.lock)?")


def _remove_parts(out: Path) -> None:
    """Remove every part of `out` (finished or partial, of any number of processes) a torchrun left, with its lock
    file. Called under the lock of `out`, which a torchrun's rank 0 holds from before its work to its rename, so
    no live torchrun is writing them; a part whose own lock is held all the same is left alone."""
    stems = set()
    for path in out.parent.glob(f"{glob.escape(out.name)}.rank*-of-*"):
        found = _PART_SUFFIX.fullmatch(path.name[len(out.name):])
        if found:
            stems.add(rank_part_path(out, Shard(int(found[1]), int(found[2]))))
    for stem in sorted(stems):
        with contextlib.suppress(GcctlError), output_lock(stem):  # the lock file goes when it is released
            stem.unlink(missing_ok=True)
            partial_path(stem).unlink(missing_ok=True)


def _extract_by_rank(table, bundle, out: Path, world: "World", shard: Shard, overwrite: bool, on_progress, options: _Options) -> dict:
    """This process's part, then (once every part is done) rank 0 publishes `out`. Rank 0 locks `out` before any
    work, so a held --out stops every process at once; a user error in any process stops them all with it (one
    agreement after the checks, one after the parts, one after publishing), and every finished or partial part
    stays for the rerun."""
    import time

    from gcctl.distributed import process_device, raise_if_any_failed

    started = time.perf_counter()
    part = Shard(world.rank, world.size)
    part_out = rank_part_path(out, part)
    summary, error = {}, None
    with contextlib.ExitStack() as held:
        try:
            if shard != Shard():
                raise GcctlError("--shard splits the rows by hand, but torchrun already splits them between its "
                                 "processes; leave out --shard, or run without torchrun")
            if world.is_main:  # held until the published store is renamed into place
                held.enter_context(output_lock(out))
            check_extract_out(table, out, overwrite)
            table.require_files()
            options = dataclasses.replace(options, device=process_device(options.device, world))
            with output_lock(part_out):  # released before rank 0 publishes (and removes) the parts
                raise_if_any_failed(world, None)  # every process is ready: none has done any work yet
                summary = _extract_part(table, bundle, part_out, part, on_progress if world.is_main else None, options)
        except GcctlError as failure:
            if getattr(failure, "agreed", False):
                raise
            error = failure
        summaries = raise_if_any_failed(world, error, summary)
        error = None
        if world.is_main:
            try:
                _publish(table, bundle, out, world.size, overwrite, options)
            except GcctlError as failure:
                error = failure
        raise_if_any_failed(world, error)
    if not world.is_main:
        return {}
    seconds = time.perf_counter() - started
    encoded = sum(part["rows"] - part["resumed_from"] for part in summaries)
    return {
        "out": str(out),
        "rows": len(table.frame),
        "world_size": world.size,
        "resumed_from": [part["resumed_from"] for part in summaries],
        "seconds": round(seconds, 3),
        "images_per_second": round(encoded / seconds, 1) if encoded else None,
        "device": str(options.device),
        "decode": options.decode,
    }


def _extract_part(table, bundle, part_out: Path, part: Shard, on_progress, options: _Options) -> dict:
    """One process's part under torchrun (its lock held): kept when an earlier run finished it for the same rows,
    else encoded (resuming its .partial)."""
    identity = _extraction_attrs(table, bundle, options, part, part_out.parent)
    rows = _shard_rows(table, part, options.batch_size)
    if is_feature_store(part_out):
        with h5py.File(part_out, "r") as handle:
            stored = read_attrs(handle)
        if stored.get(COMPLETE_KEY) is True and _same_extraction(stored, identity) and _same_rows(stored, rows):
            return {"rows": stored["n_rows"], "resumed_from": stored["n_rows"]}
    # Anything else there is a part of another extraction (replaced when done) or not ours (refused).
    check_output(part_out, "extract", is_own=is_feature_store, replace_own=True)
    _check_free_space(part_out, len(rows), bundle.provenance["embed_dim"], options.dtype)
    return _encode(table, bundle, part_out, part, on_progress, options)


def _publish(table, bundle, out: Path, world_size: int, overwrite: bool, options: _Options) -> None:
    """Join the finished parts into `out` (whose lock the caller holds), written as one process writes it, and
    remove every part."""
    parts = [rank_part_path(out, Shard(rank, world_size)) for rank in range(world_size)]
    missing = [part for part in parts if not part.is_file()]
    if missing:
        raise GcctlError(f"{missing[0]} is missing although its process finished it; with processes on several "
                         "machines, --out must lie on a file system they all share")
    dtype = options.dtype
    check_extract_out(table, out, overwrite)  # again: something may have appeared there while the parts were encoded
    _check_free_space(out, len(table.frame), bundle.provenance["embed_dim"], dtype)
    identity = _extraction_attrs(table, bundle, options, Shard(), out.parent)
    tmp = partial_path(out)
    handle = _create_partial(tmp, table, range(len(table.frame)), identity)
    try:
        for part in parts:
            _append_part(handle, part)
        handle.attrs[COMPLETE_KEY] = True
    finally:
        handle.close()
    os.replace(tmp, out)
    _remove_parts(out)  # this run's, and those an earlier run with another number of processes left


def _append_part(handle: h5py.File, part: Path) -> None:
    """Copy a part's features into their rows, in blocks (a part may not fit in memory), and count them done."""
    with h5py.File(part, "r") as source:
        offset, rows = int(source.attrs["row_offset"]), int(source.attrs["n_rows"])
        for start in range(0, rows, store_format.BLOCK_ROWS):
            stop = min(rows, start + store_format.BLOCK_ROWS)
            handle["features"][offset + start : offset + stop] = source["features"][start:stop]
    handle.attrs["rows_done"] = offset + rows


def _check_free_space(out: Path, rows: int, embed_dim: int, dtype: str) -> None:
    """Refuse before any work when the store cannot fit: HDF5 cannot recover from a full disk mid-write (its
    cache is left broken and the process crashes when it exits), so the space is asked for up front. A
    resumed run needs only what its .partial does not hold yet."""
    needed = rows * (embed_dim * np.dtype(dtype).itemsize + _ROW_OVERHEAD_BYTES) + _FILE_OVERHEAD_BYTES
    tmp = partial_path(out)
    needed -= tmp.stat().st_size if tmp.is_file() else 0
    free = _free_bytes(out)
    if needed > free:
        raise GcctlError(f"the store needs about {needed / 2**20:.1f} MiB but {out.parent} has {free / 2**20:.1f} MiB "
                         "free; free some space or choose another --out")


def _free_bytes(path: Path) -> int:
    """Free space on the file system that holds (or will hold) `path`."""
    folder = next(folder for folder in (path.parent, *path.parent.parents) if folder.exists())
    return shutil.disk_usage(folder).free


def _encode(table, bundle, out: Path, shard: Shard, on_progress, options: _Options) -> dict:
    """`extract` once its --out is this process's: encode the rows not yet done, mark the file complete, publish."""
    import time

    import torch

    device, workers = options.device, options.workers
    rows = _shard_rows(table, shard, options.batch_size)
    tmp = partial_path(out)
    identity = _extraction_attrs(table, bundle, options, shard, out.parent)
    handle = _open_partial(tmp, identity, rows)
    if handle is None:
        handle = _create_partial(tmp, table, rows, identity)
    starts = _batch_starts(table, rows, options.batch_size)
    # Back to the last batch start reached (the rows past it were written by a run of another --batch-size):
    # at most one batch is encoded again, and every batch from here is the one an uninterrupted run encodes.
    first = max((start for start in starts if start <= rows.start + int(handle.attrs["rows_done"])), default=rows.stop)
    done = resumed_from = first - rows.start
    model = device_layout(bundle.model.to(device), device).eval()
    workers = default_workers(device) if workers is None else workers
    loader, model_input = _image_batches(table, bundle, options.decode, range(first, rows.stop), starts, workers, device)
    started = time.perf_counter()
    try:
        with torch.inference_mode(), autocast(device), _deterministic_kernels(device):
            for images, batch_rows in in_background(loader):
                block = _features_of(model, model_input(images, batch_rows), options, first_row=done)
                if _free_bytes(tmp) < block.nbytes + _FILE_OVERHEAD_BYTES:  # the disk filled since the check above
                    raise GcctlError(f"{tmp.parent} is nearly full after {done} of {len(rows)} rows; free some space and "
                                     "run the same command again: it resumes from there")
                handle["features"][done : done + len(block)] = block
                done += len(block)
                handle.attrs["rows_done"] = done
                handle.flush()
                if on_progress is not None:
                    on_progress(done, len(rows))
        handle.attrs[COMPLETE_KEY] = True
    except GcctlError as error:
        if "Original Traceback" in str(error):
            raise GcctlError(_first_line_of_worker_error(error)) from None
        raise
    finally:
        handle.close()
    seconds = time.perf_counter() - started
    os.replace(tmp, out)
    encoded_now = done - resumed_from
    return {
        "out": str(out),
        "rows": len(rows),
        "resumed_from": resumed_from,
        "seconds": round(seconds, 3),
        "images_per_second": round(encoded_now / seconds, 1) if seconds > 0 and encoded_now else None,
        "device": str(device),
        "shard": str(shard),
        "workers": workers,
        "decode": options.decode,
    }


def _image_batches(table, bundle, decode: str, rows: range, starts: list[int], workers: int, device):
    """The loader of `rows` in the batches that begin at `starts`, and the function that makes one of its
    batches the model's input on `device`. With PIL the workers decode, resize and crop (the eval transform's
    pixel stage) and the batch is normalised on the device; otherwise the workers read the files' bytes
    and a library's batched decoder decodes them on the device, where the batch is resized, cropped and
    normalised."""
    from gcctl.clip.preprocess import decoded_batch, eval_transform_stages
    from gcctl.datasets.decoding import decode_batch
    from gcctl.datasets.images import EncodedImageDataset, ImageDataset, image_loader

    bounds = [start for start in starts if start >= rows.start] + [rows.stop]
    batches = [range(start - rows.start, stop - rows.start) for start, stop in zip(bounds, bounds[1:])]
    decode_jpeg = jpeg_decoder(decode)
    if decode_jpeg is None:  # PIL
        pixels, normalized = eval_transform_stages(bundle.preprocess)
        dataset = ImageDataset(table, pixels, indices=list(rows))

        def model_input(images, _):
            return normalized(images.to(device, non_blocking=True))
    else:
        dataset = EncodedImageDataset(table, indices=list(rows))
        preprocess_cfg = bundle.model.visual.preprocess_cfg

        def model_input(encoded, batch_rows):
            paths = [dataset.paths[row] for row in batch_rows.tolist()]
            return decoded_batch(decode_batch(decode_jpeg, encoded, paths, device), preprocess_cfg)
    return image_loader(dataset, workers=workers, device=device, batch_sampler=batches), model_input


def _features_of(model, inputs, options: _Options, first_row: int) -> np.ndarray:
    """One batch's features as the store holds them (L2-normalised if asked, in its dtype); NaN/inf refused."""
    import torch

    encoded = model.encode_image(inputs).float()
    if options.normalize:
        encoded = torch.nn.functional.normalize(encoded, dim=-1)
    if not torch.isfinite(encoded).all():
        raise GcctlError(f"the image tower produced NaN/inf features near row {first_row}; check the weights")
    return encoded.cpu().numpy().astype(FEATURE_DTYPES[options.dtype])
