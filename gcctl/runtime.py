"""Cross-cutting run-time helpers: device choice, autocast, seeding, atomic writes, output locks, progress."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import random
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from gcctl.errors import GcctlError

log = logging.getLogger(__name__)

# Set by the CLI's --quiet flag; library code asks `progress_enabled()` instead of reading it.
_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def progress_enabled() -> bool:
    """Progress bars only for a person at a terminal: CI logs stay clean."""
    return not _QUIET and sys.stderr.isatty()


def progress():
    """A rich progress bar on stderr, disabled when not at a terminal or with --quiet."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress_enabled(),
        transient=False,
    )


def resolve_device(requested: str = "auto"):
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GcctlError(f"device '{requested}' requested but CUDA is not available; use --device auto or cpu")
    return device


# The user's override of the CPU thread count gcctl chooses (see `configure_cpu_threads`).
THREADS_VARIABLE = "GCCTL_THREADS"


def cpu_budget() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup CPU quota
    (how containers and CI runners limit a job; os.cpu_count() sees the whole host)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time per period that this cgroup allows (v2 cpu.max, else v1), None when unlimited."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields.append((root / period_file).read_text().strip())
        except OSError:
            continue
        quota, period = (fields + ["", ""])[:2]
        if quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
            return int(quota) / int(period)
        return None  # "max" (v2) or -1 (v1): no limit
    return None


def configure_cpu_threads() -> int:
    """The one place that sets how many CPU threads torch uses and how they wait; called at process start by
    the CLI (and the benchmarks) before torch is imported, since OpenMP reads its settings once, when it loads.

    Threads: $GCCTL_THREADS, else $OMP_NUM_THREADS when set (torchrun sets it to 1 per process), else
    `cpu_budget()`. Waiting: OMP_WAIT_POLICY=PASSIVE unless set, because OpenMP's default busy-waits at every
    barrier; with a second job on the machine the spinning threads take the cores the working thread needs
    and a parallel region waits a whole time slice for it (measured: pretraining 5.6x slower beside one
    CPU-bound process). Returns the thread count.
    """
    text = os.environ.get(THREADS_VARIABLE) or os.environ.get("OMP_NUM_THREADS")
    threads = cpu_budget() if not text else _positive_threads(text)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:  # too late for OpenMP's wait policy, but the count still applies
        sys.modules["torch"].set_num_threads(threads)
    return threads


def in_background(items: Iterable, depth: int = 2) -> Iterator:
    """`items`, in order, made by a thread that runs up to `depth` ahead of the consumer; an exception raised
    while making one is raised to the consumer in its place. Image decoding (PIL and torch release the GIL)
    then overlaps the model's forward pass in the same process, with no fork and no copy between processes.
    Leaving the loop early stops the thread after the item it is making."""
    import queue
    import threading

    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            offer((end, error))
            return
        offer((end, None))

    thread = threading.Thread(target=produce, name="gcctl-background", daemon=True)
    thread.start()
    try:
        while True:
            item, error = slots.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _positive_threads(text: str) -> int:
    try:
        threads = int(text.split(",")[0])  # OpenMP's nested form "4,2": the outer level is torch's
    except ValueError:
        threads = 0
    if threads < 1:
        variable = THREADS_VARIABLE if os.environ.get(THREADS_VARIABLE) else "OMP_NUM_THREADS"
        raise GcctlError(f"{variable}='{text}' is not a positive number of threads; set it to e.g. 2, or unset it")
    return threads


def autocast(device) -> contextlib.AbstractContextManager:
    """Mixed precision on accelerators; full precision on CPU, where bf16 autocast is slower for small models."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# numpy's legacy global generator, seeded by `seed_everything`, takes the narrowest range of the three.
MAX_SEED = 2**32 - 1


def check_seeds(seeds: Sequence[int], option: str = "--seeds") -> None:
    """Seeds every generator accepts, each once (a repeated seed would train the same model twice)."""
    outside = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if outside:
        raise GcctlError(f"{option} {outside[0]} is outside 0..{MAX_SEED}; choose seeds in that range")
    repeated = [seed for seed, count in Counter(seeds).items() if count > 1]
    if repeated:
        raise GcctlError(f"{option} repeats seed {repeated[0]}; give each seed once")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s batch order: a function of the run's seed and the epoch alone, so a resumed
    run draws the same batches."""
    return seed * 1_000_003 + epoch


def seed_everything(seed: int) -> None:
    import torch

    check_seeds([seed], "--seed")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def lazy_exports(package: str, owners: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` (PEP 562) that imports an exported name's own module on first use, so importing
    one module of a package, or the package for one name, does not import the rest (and a DVC stage depends on
    the modules it runs). `owners` maps each name to its module within the package; by convention `_LAZY`."""

    def __getattr__(name: str) -> Any:
        if name in owners:
            return getattr(importlib.import_module(f"{package}.{owners[name]}"), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
