"""Cross-cutting run-time helpers: device choice, autocast, CPU threads, seeding, progress, lazy package exports
(files, atomic writes and locks are `gcctl.files`')."""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import random
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
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise GcctlError(f"--device '{requested}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GcctlError(f"device '{requested}' requested but CUDA is not available; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GcctlError(f"device '{requested}' requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}; choose one of them or --device auto")
    return device


def worker_context(workers: int):
    """The multiprocessing context DataLoader workers start in: the platform's default (fork on Linux, the
    cheapest) until this process has initialised CUDA, forkserver (else spawn) from then on. A worker forked
    from a CUDA process aborts with "CUDA error: initialization error" as soon as it frees an inherited CUDA
    tensor, and forking from the helper thread of `in_background` can deadlock; a forkserver's workers start
    from a clean single-threaded process and receive only the pickled dataset."""
    import multiprocessing

    import torch

    if workers == 0 or not torch.cuda.is_initialized():
        return None
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


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


def amp_dtype(device):
    """The one choice of mixed precision: bfloat16 on CUDA devices with native bf16 (Ampere and later: the
    tensor cores' rate at float32's range, so no loss scaling, as open_clip's amp_bf16), float16 on older ones,
    None (full precision) on CPU, where bf16 autocast is slower for small models."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def loss_scaling(device) -> bool:
    """Whether gradients need a loss scaler on `device`: only under float16 autocast, whose range underflows."""
    import torch

    return amp_dtype(device) == torch.float16


def device_layout(model, device):
    """`model` with channels-last weights when its image tower is convolutional (more than one Conv2d: ResNet,
    ConvNeXt, MobileCLIP, ViTamin) and `device` is CUDA: cuDNN's
    tensor-core convolutions run in NHWC, and a channels-last weight makes each convolution take that path (its
    input follows). A ViT's one convolution, the patch embedding, and every CPU model stay as they are (the
    CPU's results do not move)."""
    import torch

    if device.type != "cuda" or getattr(model, "visual", None) is None:
        return model
    if sum(isinstance(module, torch.nn.Conv2d) for module in model.visual.modules()) > 1:
        model.to(memory_format=torch.channels_last)
    return model


def autocast(device) -> contextlib.AbstractContextManager:
    """Autocast to `amp_dtype(device)`; nothing on CPU."""
    import torch

    dtype = amp_dtype(device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


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


def lazy_exports(package: str, owners: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's `__getattr__` (PEP 562) that imports an exported name's own module on first use, so importing
    one module of a package, or the package for one name, does not import the rest (and a DVC stage depends on
    the modules it runs). `owners` maps each name to its module within the package; by convention `_LAZY`."""

    def __getattr__(name: str) -> Any:
        if name in owners:
            return getattr(importlib.import_module(f"{package}.{owners[name]}"), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__
