"""Where a model's weights come from: an open_clip tag, a checkpoint file, `local-dir:PATH`, `hf-hub:ORG/REPO` or
`none`, each resolved to (architecture, weights file) before anything is built, so what is loaded can be hashed."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
from open_clip.pretrained import (
    download_pretrained,
    download_pretrained_from_hf,
    get_pretrained_cfg,
)

from gcctl.clip.reference import HF_HUB, LOCAL_DIR
from gcctl.clip.registry import registered_config
from gcctl.errors import GcctlError
from gcctl.files import read_json

LOCAL_DIR_CONFIG = "open_clip_config.json"  # the names open_clip's local-dir: reader looks for
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
OFFLINE_ALTERNATIVES = "use a local checkpoint file, local-dir:PATH (a folder with open_clip_config.json + weights), or none"


@dataclass(frozen=True)
class WeightsSource:
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


def resolve_source(model_name: str | None, pretrained: str) -> WeightsSource:
    pretrained = (pretrained or "none").strip()
    if pretrained.startswith(LOCAL_DIR):
        return _local_dir_source(model_name, Path(pretrained[len(LOCAL_DIR):]).expanduser())
    if pretrained.startswith(HF_HUB):
        return _hub_source(model_name, pretrained[len(HF_HUB):])
    if not model_name:
        raise GcctlError("a model name is needed (e.g. --model gcctl-tiny) unless pretrained is local-dir:PATH or hf-hub:ORG/REPO")
    cfg = registered_config(model_name)
    if pretrained.lower() == "none":
        return WeightsSource(model_name, model_name, cfg, "none", "")
    tag = get_pretrained_cfg(model_name, pretrained)
    if tag:
        return WeightsSource(
            model_name, model_name, cfg, "tag", pretrained,
            weights=_download_tag(model_name, pretrained, tag),
            preprocess={key: tag[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag},
            quick_gelu=bool(tag.get("quick_gelu", False)),
        )
    weights = _checkpoint_file(model_name, pretrained)
    return WeightsSource(model_name, model_name, cfg, "file", str(weights.resolve()), weights=weights)


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


def _local_dir_source(model_name: str | None, directory: Path) -> WeightsSource:
    config_file = directory / LOCAL_DIR_CONFIG
    if not config_file.is_file():
        raise GcctlError(f"local-dir:{directory} has no {LOCAL_DIR_CONFIG}; write one with `export_local_dir` or check the path")
    config = read_json(config_file)
    if "model_cfg" not in config:
        raise GcctlError(f"{config_file} has no 'model_cfg'; it is not an open_clip model folder")
    name = _name_for_folder(model_name, config, default=directory.name)
    return WeightsSource(name, f"{LOCAL_DIR}{directory}", config["model_cfg"], "local-dir", str(directory.resolve()),
                   weights=_weights_in_dir(directory))


def _hub_source(model_name: str | None, repo_id: str) -> WeightsSource:
    with hub_access() as offline:
        try:
            config_file = Path(download_pretrained_from_hf(repo_id, filename=LOCAL_DIR_CONFIG))
            weights = Path(download_pretrained_from_hf(repo_id))
        except Exception as error:  # any failure here is the network, the hub or the repo id
            raise GcctlError(f"cannot get hf-hub:{repo_id}: {_download_failure(offline, error)}; {OFFLINE_ALTERNATIVES}") from error
    config = read_json(config_file)
    name = _name_for_folder(model_name, config, default=f"{HF_HUB}{repo_id}")
    # The downloaded config sits in a cache folder that open_clip reads like any local-dir:.
    return WeightsSource(name, f"{LOCAL_DIR}{config_file.parent}", config["model_cfg"], "hf-hub", repo_id,
                   weights=weights, tokenizer=f"{HF_HUB}{repo_id}")


def _name_for_folder(model_name: str | None, config: dict, default: str) -> str:
    """A folder defines its own architecture; a model name given alongside must agree with it."""
    if not model_name:
        return config.get("gcctl", {}).get("model_name", default)
    if _without_activation(registered_config(model_name)) != _without_activation(config["model_cfg"]):
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
    with hub_access() as offline:
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
def hub_access():
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
