"""Building CLIP models: the one module that asks open_clip for a model.

A model is an architecture (a config registered with open_clip; ours live in `configs/`) plus a
`pretrained` source: an open_clip tag, a checkpoint file, `local-dir:PATH`, `hf-hub:ORG/REPO`, or
`none` (random weights drawn from a seed). Every source is resolved to (architecture, weights file)
first, so the weights actually loaded (or drawn) are hashed into the model reference (`reference.ModelRef`)
that travels with features, runs and predictions, and from which `build_from_reference` builds the same
model again.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import open_clip
import torch
from open_clip.pretrained import download_pretrained, download_pretrained_from_hf, get_pretrained_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip.transformer import QuickGELU

from gcctl.clip.reference import HF_HUB, LOCAL_DIR, ModelRef
from gcctl.errors import GcctlError
from gcctl.runtime import (atomic_path, check_seeds, corrupt_file_error, load_torch_file, read_json, resolve_device, sha256_file,
                           write_json)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
PACKAGED_MODELS = tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.json")))
LOCAL_DIR_CONFIG = "open_clip_config.json"  # the names open_clip's local-dir: reader looks for
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
OFFLINE_ALTERNATIVES = "use a local checkpoint file, local-dir:PATH (a folder with open_clip_config.json + weights), or none"
_OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)


def register_packaged_configs() -> None:
    if not set(PACKAGED_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


register_packaged_configs()


@dataclass
class ClipBundle:
    """A model in eval mode with what it needs around it: eval transform, tokenizer, reference, provenance."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor
    tokenizer: Callable  # list[str] -> LongTensor [n, context_length]
    reference: ModelRef  # which model this is; a local source as an absolute path
    provenance: dict = field(default_factory=dict)  # the reference serialised, and the architecture's sizes


@dataclass(frozen=True)
class _Source:
    """Where the architecture and the weights of one `build_clip` call come from."""

    name: str  # the model name recorded in the reference
    architecture: str  # what open_clip.create_model takes: a registered name or local-dir:PATH
    model_cfg: dict
    kind: str  # the weights source's kind and value, as the reference records them
    source: str
    weights: Path | None = None
    tokenizer: str = ""  # what open_clip.get_tokenizer takes; defaults to `architecture`
    preprocess: dict = field(default_factory=dict)  # preprocessing that belongs to the weights
    quick_gelu: bool = False


# ---------------------------------------------------------------------------- model registry


def list_models() -> list[str]:
    """Every architecture `build_clip` knows: ours first, then open_clip's."""
    return list(PACKAGED_MODELS) + [name for name in open_clip.list_models() if name not in PACKAGED_MODELS]


def describe_model(name: str) -> dict:
    """Size figures of a registered architecture, counted on the meta device (nothing is allocated)."""
    cfg = _registered_config(name)
    with torch.device("meta"), _quiet_open_clip():
        model = open_clip.create_model(name, device="meta", pretrained_text=False)
    return {
        "name": name,
        "source": "gcctl" if name in PACKAGED_MODELS else "open_clip",
        "embed_dim": cfg["embed_dim"],
        "image_size": cfg["vision_cfg"].get("image_size"),
        "context_length": cfg["text_cfg"].get("context_length"),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "pretrained_tags": open_clip.list_pretrained_tags_by_model(name),
    }


def _registered_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name) if name and ":" not in name else None
    if cfg is None:
        close = difflib.get_close_matches(name or "", list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise GcctlError(f"unknown model '{name}'; {hint}`gcctl models` lists the known ones")
    return cfg


# ---------------------------------------------------------------------------- building


def build_clip(model_name: str | None, pretrained: str = "none", device="cpu", seed: int = 0) -> ClipBundle:
    """The model `model_name` with weights from `pretrained`, in eval mode on `device`.

    `pretrained`: an open_clip tag (`openai`...), a checkpoint file (.pt/.bin/.pth/.safetensors, a bare
    state_dict or {"state_dict": ...}), `local-dir:PATH`, `hf-hub:ORG/REPO`, or `none` (random weights,
    drawn from `seed`: the same seed gives the same weights). With `local-dir:`/`hf-hub:` the architecture
    comes from the folder and `model_name` may be None.
    """
    source = _resolve_source(model_name, pretrained)
    if source.weights is None:
        log.warning("model %s has random weights (pretrained=none): fine for pretraining, meaningless for evaluation", source.name)
    return _bundle(source, resolve_device(device), seed)


def fresh_clip(model_name: str, device="cpu", seed: int = 0) -> ClipBundle:
    """Randomly initialised on purpose (pretraining from scratch): `build_clip(..., "none")` without the warning."""
    return _bundle(_resolve_source(model_name, "none"), resolve_device(device), seed)


def build_from_reference(
    reference: ModelRef, *, recorded_in: str, pretrained: str | None = None, embed_dim: int | None = None, device="cpu"
) -> ClipBundle:
    """The model an artifact (`recorded_in`, for messages) was made with, from `pretrained` when given (the same
    weights elsewhere), else from where the reference points; weights whose hash differs are refused, and so is
    a model that does not embed into `embed_dim` (the width of the artifact's features, when it has any)."""
    pretrained = pretrained or reference.pretrained()
    from_folder = pretrained.startswith((LOCAL_DIR, HF_HUB))  # the folder names its own architecture
    seed = reference.seed if reference.seed is not None else 0
    bundle = build_clip(None if from_folder else reference.architecture, pretrained, device=device, seed=seed)
    reference.check_built(bundle.reference, pretrained, recorded_in)
    # Records of unseeded random weights pass the hash check, so a changed architecture config shows only in the width.
    built_dim = bundle.provenance["embed_dim"]
    if embed_dim is not None and built_dim != embed_dim:
        raise GcctlError(
            f"model {reference.architecture} embeds into {built_dim} dimensions but {recorded_in} holds "
            f"{embed_dim}-dimensional features; extract the store again with this model"
        )
    return bundle


def _bundle(source: _Source, device: torch.device, seed: int) -> ClipBundle:
    model = _instantiate(source, device, seed)
    model.eval()
    network = _hub_access() if source.tokenizer.startswith(HF_HUB) else contextlib.nullcontext()
    with _quiet_open_clip(), network:
        tokenizer = open_clip.get_tokenizer(source.tokenizer or source.architecture)
    preprocess_cfg = model.visual.preprocess_cfg
    reference = ModelRef(
        architecture=source.name,
        kind=source.kind,
        source=source.source,
        sha256=sha256_file(source.weights) if source.weights else state_dict_sha256(model.state_dict()),
        preprocess=describe_preprocess(preprocess_cfg),
        seed=None if source.weights else seed,
    )
    return ClipBundle(
        model=model,
        preprocess=image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False),
        tokenizer=tokenizer,
        reference=reference,
        provenance={
            "model_ref": reference.to_dict(),
            "embed_dim": source.model_cfg["embed_dim"],
            "image_size": _square_or_pair(model.visual.image_size),
            "context_length": tokenizer.context_length,
        },
    )


def _resolve_source(model_name: str | None, pretrained: str) -> _Source:
    pretrained = (pretrained or "none").strip()
    if pretrained.startswith(LOCAL_DIR):
        return _local_dir_source(model_name, Path(pretrained[len(LOCAL_DIR):]).expanduser())
    if pretrained.startswith(HF_HUB):
        return _hub_source(model_name, pretrained[len(HF_HUB):])
    if not model_name:
        raise GcctlError("a model name is needed (e.g. --model gcctl-tiny) unless pretrained is local-dir:PATH or hf-hub:ORG/REPO")
    cfg = _registered_config(model_name)
    if pretrained.lower() == "none":
        return _Source(model_name, model_name, cfg, "none", "")
    tag = get_pretrained_cfg(model_name, pretrained)
    if tag:
        return _Source(
            model_name, model_name, cfg, "tag", pretrained,
            weights=_download_tag(model_name, pretrained, tag),
            preprocess={key: tag[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag},
            quick_gelu=bool(tag.get("quick_gelu", False)),
        )
    weights = _checkpoint_file(model_name, pretrained)
    return _Source(model_name, model_name, cfg, "file", str(weights.resolve()), weights=weights)


def _checkpoint_file(model_name: str, pretrained: str) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise GcctlError(f"pretrained '{pretrained}' is a folder; to load a model folder pass local-dir:{pretrained}")
    if path.suffix in WEIGHTS_SUFFIXES or os.sep in pretrained:
        raise GcctlError(f"checkpoint file not found: {pretrained}; check the path or use pretrained=none")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    known = f"its tags: {', '.join(tags)}" if tags else "it has no open_clip tags"
    raise GcctlError(f"pretrained '{pretrained}' is neither a tag of {model_name} ({known}) nor an existing file; {OFFLINE_ALTERNATIVES}")


def _local_dir_source(model_name: str | None, directory: Path) -> _Source:
    config_file = directory / LOCAL_DIR_CONFIG
    if not config_file.is_file():
        raise GcctlError(f"local-dir:{directory} has no {LOCAL_DIR_CONFIG}; write one with `export_local_dir` or check the path")
    config = read_json(config_file)
    if "model_cfg" not in config:
        raise GcctlError(f"{config_file} has no 'model_cfg'; it is not an open_clip model folder")
    name = _name_for_folder(model_name, config, default=directory.name)
    return _Source(name, f"{LOCAL_DIR}{directory}", config["model_cfg"], "local-dir", str(directory.resolve()),
                   weights=_weights_in_dir(directory))


def _hub_source(model_name: str | None, repo_id: str) -> _Source:
    with _hub_access() as offline:
        try:
            config_file = Path(download_pretrained_from_hf(repo_id, filename=LOCAL_DIR_CONFIG))
            weights = Path(download_pretrained_from_hf(repo_id))
        except Exception as error:  # any failure here is the network, the hub or the repo id
            raise GcctlError(f"cannot get hf-hub:{repo_id}: {_download_failure(offline, error)}; {OFFLINE_ALTERNATIVES}") from error
    config = read_json(config_file)
    name = _name_for_folder(model_name, config, default=f"{HF_HUB}{repo_id}")
    # The downloaded config sits in a cache folder that open_clip reads like any local-dir:.
    return _Source(name, f"{LOCAL_DIR}{config_file.parent}", config["model_cfg"], "hf-hub", repo_id,
                   weights=weights, tokenizer=f"{HF_HUB}{repo_id}")


def _name_for_folder(model_name: str | None, config: dict, default: str) -> str:
    """A folder defines its own architecture; a model name given alongside must agree with it."""
    if not model_name:
        return config.get("gcctl", {}).get("model_name", default)
    if _without_activation(_registered_config(model_name)) != _without_activation(config["model_cfg"]):
        raise GcctlError(
            f"the model folder holds a different architecture than {model_name}; "
            "drop the model name or pass the one it was saved with"
        )
    return model_name


def _without_activation(model_cfg: dict) -> dict:
    """QuickGELU is a property of the weights saved with an architecture, not of the architecture."""
    return {key: value for key, value in model_cfg.items() if key != "quick_gelu"}


def _weights_in_dir(directory: Path) -> Path:
    """The folder's weights file, safetensors first (safe to load, and what open_clip prefers too)."""
    files = sorted(
        (path for path in directory.iterdir() if path.suffix in WEIGHTS_SUFFIXES),
        key=lambda path: (path.suffix != ".safetensors", path.name),
    )
    if not files:
        raise GcctlError(f"local-dir:{directory} has no weights file ({', '.join('*' + suffix for suffix in WEIGHTS_SUFFIXES)})")
    return files[0]


def _download_tag(model_name: str, tag_name: str, tag: dict) -> Path:
    with _hub_access() as offline:
        try:
            return Path(download_pretrained(tag))
        except Exception as error:  # any failure here is the network, the hub or the cache
            reason = _download_failure(offline, error)
            raise GcctlError(f"cannot get pretrained weights '{tag_name}' for {model_name}: {reason}; {OFFLINE_ALTERNATIVES}") from error


def _download_failure(offline: bool, error: Exception) -> str:
    if offline:
        return "offline and not in the local Hugging Face cache"
    return f"download failed ({str(error).splitlines()[0][:200]})"


@contextlib.contextmanager
def _hub_access():
    """Hub downloads that fail at once without a network, instead of retrying for about a minute.

    Offline (HF_HUB_OFFLINE set, or the hub endpoint unreachable) the hub client is switched to its own
    offline mode, in which files already in the local cache still load. Yields whether it is offline.
    """
    import huggingface_hub.constants as hub

    saved = hub.HF_HUB_OFFLINE
    offline = saved or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} or not _reachable(hub.ENDPOINT)
    hub.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        hub.HF_HUB_OFFLINE = saved


@functools.lru_cache(maxsize=None)
def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    if urllib.request.getproxies().get("https"):
        return True  # only the proxy can tell; let the hub client try
    url = urllib.parse.urlsplit(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _instantiate(source: _Source, device: torch.device, seed: int) -> torch.nn.Module:
    checkpoint = _read_checkpoint(source.weights) if source.weights else _Checkpoint({})
    check_seeds([seed], "--seed")
    # open_clip draws the initial weights on the CPU, then moves them: seeding the CPU generator makes random
    # weights a function of the seed on every device; forking it leaves the caller's random stream alone.
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(
            source.architecture,
            load_weights=False,  # loaded below, from the file we resolved and hash
            pretrained_text=False,  # never fetch tower weights from the network behind our back
            force_quick_gelu=source.quick_gelu or checkpoint.quick_gelu,
            force_preprocess_cfg={**checkpoint.preprocess, **source.preprocess},
            device=device,
        )
    if source.weights is not None:
        _load_weights(model, checkpoint, source.weights, source.name)
    return model


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The sha256 of weights held in memory (names, dtypes, shapes and bytes): the identity of random weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Checkpoint:
    """Weights plus what `save_checkpoint` records next to them (absent in foreign checkpoints)."""

    state_dict: dict
    model_name: str | None = None
    quick_gelu: bool = False  # the weights were trained with QuickGELU (OpenAI's): the model must use it too
    preprocess: dict = field(default_factory=dict)  # mean, std, interpolation, resize_mode of the weights


def _read_checkpoint(path: Path) -> _Checkpoint:
    """Read a checkpoint once: open_clip's own reader would drop the metadata we need before building."""
    if path.suffix != ".safetensors":
        content = load_torch_file(path)
    else:
        from safetensors.torch import load_file

        try:
            content = load_file(str(path))
        except Exception as error:  # safetensors raises several types for a damaged file
            raise corrupt_file_error(path, error) from None
    meta = content if isinstance(content, dict) and "state_dict" in content else {}
    state_dict = meta.get("state_dict", content)
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise GcctlError(f"checkpoint {path} holds no state_dict of tensors; save one with gcctl.clip.save_checkpoint")
    return _Checkpoint(
        state_dict={key.removeprefix("module."): value for key, value in state_dict.items()},  # DataParallel/DDP saves
        model_name=meta.get("model_name"),
        quick_gelu=bool(meta.get("quick_gelu", False)),
        preprocess=meta.get("preprocess_cfg", {}),
    )


def _load_weights(model: torch.nn.Module, checkpoint: _Checkpoint, path: Path, model_name: str) -> None:
    expected = model.state_dict()
    if _same_layout(checkpoint.state_dict, expected):
        model.load_state_dict(checkpoint.state_dict)
        return
    try:
        # open_clip converts third-party layouts and resizes position embeddings; it reads the file again.
        with _quiet_open_clip():
            open_clip.load_checkpoint(model, str(path))
    except Exception as error:  # it fails with assertion, key and runtime errors alike
        raise GcctlError(_mismatch_message(path, model_name, checkpoint, expected)) from error


def _same_layout(state_dict: dict, expected: dict) -> bool:
    return state_dict.keys() == expected.keys() and all(state_dict[key].shape == expected[key].shape for key in expected)


def _mismatch_message(path: Path, model_name: str, checkpoint: _Checkpoint, expected: dict) -> str:
    state_dict = checkpoint.state_dict
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    resized = [
        f"{key} {tuple(state_dict[key].shape)}≠{tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", resized))
    parts = [f"{len(keys)} {label} ({_first(keys)})" for label, keys in found if keys]
    saved_for = checkpoint.model_name
    hint = f"it was saved for {saved_for}; pass --model {saved_for}" if saved_for else "pass the model name it was trained with"
    return f"checkpoint {path} does not match architecture {model_name}: {'; '.join(parts) or 'open_clip could not convert it'}; {hint}"


def _first(items: list[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


class _DropOpenClipNotices(logging.Filter):
    """open_clip logs to the root logger that a model 'has no pretrained weights' before we load them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not record.pathname.startswith(_OPEN_CLIP_DIR)


@contextlib.contextmanager
def _quiet_open_clip():
    """Around open_clip calls: drop its notices, and give the root logger a placeholder handler, because
    its module-level `logging.info(...)` calls would otherwise install one (logging.basicConfig) that
    reformats every later log line of the process."""
    root = logging.getLogger()
    notices, placeholder = _DropOpenClipNotices(), logging.NullHandler()
    root.addFilter(notices)
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeFilter(notices)
        root.removeHandler(placeholder)


# ---------------------------------------------------------------------------- preprocessing


def describe_preprocess(preprocess_cfg: dict) -> dict:
    """The eval transform in a few JSON-able fields (resize shortest side, centre crop, normalise)."""
    size = _square_or_pair(preprocess_cfg["size"])
    return {
        "resize": size,
        "crop": size,
        "resize_mode": preprocess_cfg.get("resize_mode", "shortest"),
        "interpolation": preprocess_cfg.get("interpolation", "bicubic"),
        "mean": [float(value) for value in preprocess_cfg["mean"]],
        "std": [float(value) for value in preprocess_cfg["std"]],
    }


def train_transform(model: torch.nn.Module) -> Callable:
    """open_clip's training transform for `model`'s preprocessing: a random resized crop (scale 0.9–1), then the
    eval transform's normalisation; what FLYP and StarFT fine-tune with. Random: an image differs every epoch."""
    return image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=True)


def preprocess_uint8(images: np.ndarray | torch.Tensor, model: torch.nn.Module, device=None) -> torch.Tensor:
    """A uint8 batch [N, H, W, 3] -> the model's normalised input [N, 3, size, size], on `device`.

    The vectorised twin of `bundle.preprocess` for in-memory arrays: resize the shortest side and
    centre-crop only when the size differs, then normalise with the model's mean and std.
    """
    cfg = model.visual.preprocess_cfg
    batch = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float().div_(255)
    height, width = _pair(cfg["size"])
    if batch.shape[-2:] != (height, width):
        batch = _resize_and_crop(batch, height, width, cfg.get("interpolation", "bicubic"))
    mean = torch.tensor(cfg["mean"], device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def eval_transform_stages(preprocess: Callable) -> tuple[Callable, Callable]:
    """A bundle's eval transform (`bundle.preprocess`) cut where the pixels are still bytes; applied one after
    the other the two stages give the same input bit for bit:

    - per image: everything up to the tensor (resize, crop), ending in a uint8 tensor [3, H, W];
    - per batch: scale to [0, 1] and normalise, where the batch lands (the main process, or the accelerator).

    Decoders then hand over a quarter of the bytes, and a whole batch is normalised at once.
    """
    from torchvision.transforms import Compose, Normalize, PILToTensor, ToTensor

    *pixels, to_tensor, normalize = preprocess.transforms
    if not (isinstance(to_tensor, ToTensor) and isinstance(normalize, Normalize)):  # open_clip changed its transform
        raise GcctlError(f"the eval transform no longer ends in ToTensor, Normalize ({to_tensor}, {normalize}); "
                         "update gcctl.clip.factory.eval_transform_stages")
    return Compose([*pixels, PILToTensor()]), functools.partial(_scaled_and_normalized, normalize=normalize)


def _scaled_and_normalized(batch: torch.Tensor, normalize: Callable) -> torch.Tensor:
    return normalize(batch.float().div_(255))  # ToTensor's scaling, then Normalize (which broadcasts over a batch)


def _resize_and_crop(batch: torch.Tensor, height: int, width: int, interpolation: str) -> torch.Tensor:
    """Scale the shortest side to the target, then centre-crop: the eval transform, on a whole batch."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if height == width:
        size = [height]  # torchvision's shortest-edge mode, exactly what the PIL transform does
    else:
        scale = max(height / batch.shape[-2], width / batch.shape[-1])
        size = [math.ceil(batch.shape[-2] * scale), math.ceil(batch.shape[-1] * scale)]
    batch = F.resize(batch, size, interpolation=InterpolationMode(interpolation), antialias=True)
    return F.center_crop(batch, [height, width]).clamp_(0, 1)


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _square_or_pair(size) -> int | list[int]:
    height, width = _pair(size)
    return height if height == width else [height, width]


# ---------------------------------------------------------------------------- saving


def save_checkpoint(bundle_or_model: ClipBundle | torch.nn.Module, path: str | os.PathLike, model_name: str | None = None) -> Path:
    """Write a checkpoint that `build_clip(model_name, path)` loads with equal weights, atomically."""
    model, model_name = _model_and_name(bundle_or_model, model_name)
    with atomic_path(path) as tmp:
        write_checkpoint(model, tmp, model_name)
    return Path(path)


def checkpoint_model_name(pretrained: str | os.PathLike) -> str | None:
    """The architecture a gcctl checkpoint file records (`save_checkpoint`); None for tags, folders and
    foreign or unreadable files (building the model reports those properly)."""
    path = Path(pretrained).expanduser()
    if not path.is_file() or path.suffix == ".safetensors":
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        return None
    return content.get("model_name") if isinstance(content, dict) else None


def fetch_checkpoint(model_name: str, pretrained: str, out: str | os.PathLike) -> dict:
    """Resolve weights once (e.g. an open_clip tag, while online) into a single checkpoint file that later
    runs load offline with `build_clip(model_name, out)`; returns the provenance of what was fetched."""
    bundle = build_clip(model_name, pretrained, device="cpu")
    path = save_checkpoint(bundle, out)
    return {**bundle.provenance, "out": str(path), "out_sha256": sha256_file(path)}


def write_checkpoint(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """The checkpoint format itself, written in place (callers own atomicity)."""
    torch.save(
        {
            "state_dict": _cpu_state_dict(model),
            "model_name": model_name,
            "quick_gelu": _uses_quick_gelu(model),
            "preprocess_cfg": _weights_preprocess(model),
        },
        path,
    )


def export_local_dir(bundle_or_model: ClipBundle | torch.nn.Module, model_name: str | None, directory: str | os.PathLike) -> Path:
    """Write the folder `local-dir:` reads (ours and open_clip's): config + safetensors weights."""
    from safetensors.torch import save_file

    model, model_name = _model_and_name(bundle_or_model, model_name)
    directory = Path(directory)
    model_cfg = _registered_config(model_name)
    if _uses_quick_gelu(model):
        model_cfg["quick_gelu"] = True
    config = {"model_cfg": model_cfg, "preprocess_cfg": _weights_preprocess(model), "gcctl": {"model_name": model_name}}
    with atomic_path(directory / LOCAL_DIR_WEIGHTS) as tmp:
        save_file(_cpu_state_dict(model), str(tmp))
    write_json(directory / LOCAL_DIR_CONFIG, config)  # last: a folder with a config is complete
    return directory


def _model_and_name(bundle_or_model: ClipBundle | torch.nn.Module, model_name: str | None) -> tuple[torch.nn.Module, str]:
    if isinstance(bundle_or_model, ClipBundle):
        model, model_name = bundle_or_model.model, model_name or bundle_or_model.reference.architecture
    elif model_name:
        model = bundle_or_model
    else:
        raise GcctlError("a model name is needed to save a bare model; pass the architecture it was built with")
    _registered_config(model_name)  # the file is only useful if `build_clip(model_name, file)` can read it
    return model, model_name


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(module, QuickGELU) for module in model.modules())


def _weights_preprocess(model: torch.nn.Module) -> dict:
    """The preprocessing that belongs to the weights (the size belongs to the architecture), as plain JSON."""
    cfg = model.visual.preprocess_cfg
    return json.loads(json.dumps({key: cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in cfg}))


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
