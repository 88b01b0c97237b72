"""Images read straight out of uncompressed `.tar` files (WebDataset shards), without unpacking them.

A table row whose image lies inside an archive has the path `<archive>::<member>` (relative to the root, like
every path). The archive is indexed once per process (member name → data offset and size; only the headers are
read), and a member is then one seek and one read, so a DataLoader worker can open any row in any order:
what resuming an extraction at row k and splitting rows between processes need.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from gcctl.errors import GcctlError

MEMBER_SEPARATOR = "::"
_BLOCK = tarfile.BLOCKSIZE
_TAIL_CHECKED = 1 << 20  # tar writers pad the end to a record (10 KiB by default); a damaged shard shows sooner


def member_path(archive: str, member: str) -> str:
    return f"{archive}{MEMBER_SEPARATOR}{member}"


def archive_of(path: str) -> str:
    """The file that holds `path`'s image: its archive for a member path, else the path itself."""
    return path.split(MEMBER_SEPARATOR, 1)[0]


def archive_starts(paths: Sequence[str]) -> list[int] | None:
    """The rows at which a new archive begins, when the rows' images lie in archives (else None): the units that
    `gcctl.store.Shard` deals out, so each process reads whole shard files."""
    paths = np.asarray(paths, dtype=object)
    if not len(paths) or MEMBER_SEPARATOR not in paths[0]:
        return None
    archives = np.asarray([archive_of(path) for path in paths], dtype=object)
    return [0, *(np.flatnonzero(archives[1:] != archives[:-1]) + 1).tolist()]


def index_archive(path: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """{member name: (data offset, size)} of the regular files in the tar at `path`, in archive order.

    tarfile stops quietly at a damaged header or at the end of a cut-short file, which would drop the rest of
    the shard unnoticed; so the archive must also end as tar writers end it: with zero blocks after its last
    member, and every member's data inside the file.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as archive:
            members = {info.name: (info.offset_data, info.size) for info in archive if info.isfile()}
            end = archive.offset
    except (tarfile.TarError, OSError, EOFError) as error:
        raise _corrupt(path, f"{type(error).__name__}: {error}") from None
    size = path.stat().st_size
    overrun = [name for name, (offset, length) in members.items() if offset + length > size]
    if overrun:
        raise _corrupt(path, f"member {overrun[0]} runs past the end of the file")
    with open(path, "rb") as handle:
        handle.seek(end)
        tail = handle.read(_TAIL_CHECKED)
    if len(tail) < _BLOCK or tail.count(0) != len(tail):
        raise _corrupt(path, f"no valid header or end-of-archive marker at byte {end}")
    return members


def _corrupt(path: Path, reason: str) -> GcctlError:
    return GcctlError(f"tar shard {path} is damaged or cut short ({reason}); download or write it again, "
                      "or move it out of --root")


@functools.lru_cache(maxsize=64)
def _cached_index(path: str) -> dict[str, tuple[int, int]]:
    return index_archive(path)


def read_member(path: str, index: dict[str, tuple[int, int]] | None = None) -> bytes:
    """The bytes of `<archive>::<member>` (the archive indexed once per process unless `index` is given)."""
    archive, member = path.split(MEMBER_SEPARATOR, 1)
    index = _cached_index(archive) if index is None else index
    if member not in index:
        raise GcctlError(f"{member} is not in tar shard {archive} (it changed since the table was read); "
                         "read the dataset again")
    offset, size = index[member]
    with open(archive, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise _corrupt(Path(archive), f"member {member} is cut short")
    return data


def open_image_source(path: str) -> str | io.BytesIO:
    """What `PIL.Image.open` takes for `path`: the file itself, or a member's bytes."""
    return io.BytesIO(read_member(path)) if MEMBER_SEPARATOR in path else path
