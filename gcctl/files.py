"""Files: hashing, atomic writes of files and folders, output locks and the overwrite rule, torch and JSON
files, wall-clock figures kept beside outputs, and the identity check that lets a run resume. Every writer in
gcctl goes through these."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from gcctl.errors import GcctlError

log = logging.getLogger(__name__)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

def partial_path(path: str | os.PathLike) -> Path:
    """Where an artifact is written before it is complete; the rename makes it appear atomically."""
    path = Path(path)
    return path.with_name(path.name + ".partial")

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds.

    On failure the temporary file is removed, so no half-written artifact is left behind.
    """
    path = Path(path)
    refuse_directory(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)

@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling directory `<path>.partial`; only if the block succeeds does it replace `path`.

    On failure the partial directory is removed and `path` is untouched. An existing `path` is set aside (renamed
    to `<path>.old`) before the partial one is renamed in, and removed after: a directory cannot be renamed
    onto a non-empty one, and a crash in between leaves the old tree, never half of the new one.
    """
    path = Path(path)
    staging = partial_path(path)
    shutil.rmtree(staging, ignore_errors=True)  # left behind by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if path.exists():
        retired = path.with_name(path.name + ".old")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired)
    else:
        os.replace(staging, path)

def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: beside it, never inside it (a DVC-tracked folder stays as its stage wrote it)."""
    out = Path(out)
    return out.with_name(out.name + ".lock")

@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of `out` while it is written: a second gcctl process writing the same `out`
    refuses at once instead of deleting or mixing in the first one's work. The kernel frees the lock of a
    killed process, so a left-over lock file never blocks the rerun that resumes it."""
    import fcntl

    out, path = Path(out), lock_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise GcctlError(f"{out} is being written by another gcctl process (lock {path}); "
                             "wait for it or choose another --out") from None
        if os.fstat(descriptor).st_nlink:
            break
        os.close(descriptor)  # its holder finished and removed it between our open and our lock: take a new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held, so no one can lock the removed file after us
        os.close(descriptor)

def check_output(out: str | os.PathLike, command: str, *, is_own: Callable[[Path], bool], replace_own: bool) -> None:
    """`out` is written only where nothing is, or over the previous output of the same `command` when
    `replace_own` (its --overwrite); anything else there is never replaced."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_own(out):
        raise GcctlError(f"--out {out} exists and is not the output of `gcctl {command}`; choose another --out")
    if not replace_own:
        raise GcctlError(f"--out {out} holds the output of an earlier `gcctl {command}`; "
                         "pass --overwrite to replace it, or choose another --out")

def refuse_inside(out: str | os.PathLike, folder: str | os.PathLike, what: str) -> None:
    """An output must not land among a dataset's own files (e.g. over its metadata.csv)."""
    if Path(out).resolve().is_relative_to(Path(folder).resolve()):
        raise GcctlError(f"--out {out} is inside {what} {folder}; write outputs outside it")

def refuse_directory(path: str | os.PathLike, option: str = "--out") -> None:
    """An output file must not be an existing folder: refuse it before any work is done."""
    if Path(path).is_dir():
        raise GcctlError(f"{option} {path} is a directory; give the path of a file to write")

def corrupt_file_error(path: str | os.PathLike, error: BaseException) -> GcctlError:
    """The one message for a file that exists but cannot be parsed: a writer was cut short, or it was damaged."""
    detail = str(error).strip().split("\n")[0].split(". ")[0][:120]  # torch appends paragraphs of advice
    reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return GcctlError(f"file {path} is incomplete or corrupt ({reason}); rerun the stage that writes it")

def _require_file(path: Path) -> None:
    if not path.is_file():
        raise GcctlError(f"file {path} is missing; rerun the stage that writes it")

def load_torch_file(path: str | os.PathLike) -> Any:
    """`torch.load` of tensors and plain containers only (never code), on CPU; a missing, truncated or
    damaged file is a one-line user error, not an EOFError that the CLI would take for Ctrl-C."""
    import torch

    path = Path(path)
    _require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except Exception as error:  # torch raises EOFError, UnpicklingError, RuntimeError, OSError, KeyError...
        raise corrupt_file_error(path, error) from None

def save_torch_file(path: str | os.PathLike, content: Any) -> None:
    """`torch.save` that appears only complete (the reader is `load_torch_file`)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(content, tmp)

def load_resume_state(path: str | os.PathLike, identity: dict, *, restart: bool = False,
                      restart_if_changed: bool = False) -> dict | None:
    """The state an interrupted run saved at `path` (`save_torch_file` of a dict with an "identity"), if that
    run had this `identity`; None to start over: nothing saved, `restart`, or another identity with
    `restart_if_changed`. Another identity is otherwise refused, so a run never continues another's work."""
    path = Path(path)
    if restart or not path.is_file():
        return None
    state = load_torch_file(path)
    if not isinstance(state, dict) or "identity" not in state:
        raise corrupt_file_error(path, ValueError("no run identity"))
    if state["identity"] == identity:
        return state
    differences = identity_differences(state["identity"], identity)
    if restart_if_changed:
        log.info("%s holds a run of another config (%s); starting over", path.parent, differences)
        return None
    raise GcctlError(f"{path.parent} holds a run of another config ({differences}); use another --out, or --restart to discard it")

def identity_differences(saved: dict, wanted: dict) -> str:
    """The first few fields that differ between two run identities, as `field saved → wanted`; the fields of
    a nested "config" count as top-level fields."""
    flat_saved, flat_wanted = _flatten_config(saved), _flatten_config(wanted)
    keys = [key for key in dict.fromkeys([*flat_saved, *flat_wanted]) if flat_saved.get(key) != flat_wanted.get(key)]
    shown = [f"{key} {_short(flat_saved.get(key))} → {_short(flat_wanted.get(key))}" for key in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")

def _flatten_config(identity: dict) -> dict:
    return {**identity.get("config", {}), **{key: value for key, value in identity.items() if key != "config"}}

def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else hashlib.sha256(text.encode()).hexdigest()[:10]


def read_lines(path: str | os.PathLike, what: str, *, missing: str, content: str) -> list[tuple[int, str]]:
    """`(line number, stripped line)` of a UTF-8 text file's lines that are neither blank nor # comments: the one
    reader of gcctl's line files (word lists, insight files). `what` names the file in messages, `missing` says
    what to give instead of a missing one, `content` what its lines are."""
    path = Path(path)
    if not path.is_file():
        raise GcctlError(f"{what} {path} not found; {missing}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise GcctlError(f"{what} {path} is not UTF-8 text; write {content} as UTF-8") from None
    return [(number, line.strip()) for number, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`; a missing, truncated or non-UTF-8 file is a one-line user error."""
    path = Path(path)
    _require_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise corrupt_file_error(path, error) from None

def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


TIMINGS_SUFFIX = ".timings.json"


def timings_path(output: str | os.PathLike) -> Path:
    """Where a command keeps the wall-clock figures of making `output`: beside it, never inside it.

    An output is a pure function of its inputs, so a rerun (on any machine of a kind) writes the same bytes and
    `dvc.lock` stays as committed; how long it took is a fact about the machine, kept in this sibling file,
    which no stage declares (DVC never hashes it) and the pipeline's .gitignore covers.
    """
    output = Path(output)
    return output.with_name(output.name + TIMINGS_SUFFIX)


def write_timings(output: str | os.PathLike, figures: dict) -> None:
    write_json(timings_path(output), figures)


def read_timings(output: str | os.PathLike) -> dict:
    """The figures `write_timings` kept for `output`; empty when there are none (or they cannot be read)."""
    path = timings_path(output)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


# The overwrite rule beyond --out itself (`check_output`): the files a command writes beside its --out, outputs
# that are the command's own inputs, and the content tests by which a command knows its own earlier output.


def check_beside(path: str | os.PathLike, out: str | os.PathLike, command: str, *, is_own: Callable[[Path], bool],
                 replace_own: bool, what: str) -> None:
    """`check_output` for a file `command` writes beside its --out `out` (its `what`, e.g. "predictions"):
    written where nothing is, or over that command's earlier one with `replace_own`; never over anything else."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() or not is_own(path):
        raise GcctlError(f"{path} exists and is not the {what} of a `gcctl {command}` (which writes it beside --out "
                         f"{out}); move it away or choose another --out")
    if not replace_own:
        raise GcctlError(f"{path} holds the {what} of an earlier `gcctl {command}`; pass --overwrite to replace it, "
                         "or choose another --out")


def refuse_input(out: str | os.PathLike, inputs: dict[str, Any], option: str = "--out") -> None:
    """An output is never one of the command's inputs, --overwrite or not (`inputs`: each input's option and
    value; a value that names no file, such as a weights tag, is no file to protect)."""
    out = Path(out)
    if not out.exists():
        return
    for name, given in inputs.items():
        path = Path(str(given)).expanduser() if given is not None else None
        if path is not None and path.exists() and os.path.samefile(out, path):
            raise GcctlError(f"{option} {out} is also the {name} input; write the output to another path")


def json_document(path: str | os.PathLike) -> Any:
    """The JSON object in `path`, or None where it holds none (an `is_own` test: a large binary file is not
    read beyond its first byte)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(1) != b"{":
                return None
            return json.loads(b"{" + handle.read())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def parquet_metadata(path: str | os.PathLike, key: bytes) -> bytes | None:
    """The schema metadata `key` of the Parquet file `path` (an `is_own` test); None where the file has none or
    is not a readable Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return (pq.read_schema(path).metadata or {}).get(key)
    except (pa.ArrowException, OSError):
        return None


def is_png(path: str | os.PathLike) -> bool:
    """Whether `path` is a PNG image (its signature), as the figures gcctl draws are."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False
