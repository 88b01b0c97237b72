"""The checkpoint format: one file holding the weights and what they need to be built again (architecture,
QuickGELU, the weights' preprocessing), its reader, and the `local-dir:` folder export.

A run that produces a model (pretraining, fine-tuning, WiSE-FT) writes it as `MODEL_FILE` beside its `SUMMARY_FILE`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
from open_clip.transformer import QuickGELU

from gcctl.clip.registry import quiet_open_clip, registered_config, word_tokenizer
from gcctl.clip.weights import LOCAL_DIR_CONFIG, LOCAL_DIR_WEIGHTS
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_path,
    check_output,
    corrupt_file_error,
    load_torch_file,
    refuse_directory,
    refuse_input,
    write_json,
)

if TYPE_CHECKING:
    from gcctl.clip.factory import ClipBundle

MODEL_FILE = "model.pt"  # a model-producing run's checkpoint, inside its folder
SUMMARY_FILE = "summary.json"  # that run's record (its config, and so its seed), beside the checkpoint


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """The sha256 of weights held in memory (names, dtypes, shapes and bytes): the identity of random weights."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """Weights plus what `save_checkpoint` records next to them (absent in foreign checkpoints)."""

    state_dict: dict
    model_name: str | None = None
    quick_gelu: bool = False  # the weights were trained with QuickGELU (OpenAI's): the model must use it too
    preprocess: dict = field(default_factory=dict)  # mean, std, interpolation, resize_mode of the weights
    vocabulary: str | None = None  # sha256 of the word list of a word-tokenized model (gcctl.clip.words)


def read_checkpoint(path: Path) -> Checkpoint:
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
    return Checkpoint(
        state_dict={key.removeprefix("module."): value for key, value in state_dict.items()},  # DataParallel/DDP saves
        model_name=meta.get("model_name"),
        quick_gelu=bool(meta.get("quick_gelu", False)),
        preprocess=meta.get("preprocess_cfg", {}),
        vocabulary=meta.get("vocabulary"),
    )


def load_weights(model: torch.nn.Module, checkpoint: Checkpoint, path: Path, model_name: str) -> None:
    expected = model.state_dict()
    if _same_layout(checkpoint.state_dict, expected):
        model.load_state_dict(checkpoint.state_dict)
        return
    try:
        # open_clip converts third-party layouts and resizes position embeddings; it reads the file again.
        with quiet_open_clip():
            open_clip.load_checkpoint(model, str(path))
    except Exception as error:  # it fails with assertion, key and runtime errors alike
        raise GcctlError(_mismatch_message(path, model_name, checkpoint, expected)) from error


def _same_layout(state_dict: dict, expected: dict) -> bool:
    return state_dict.keys() == expected.keys() and all(state_dict[key].shape == expected[key].shape for key in expected)


def _mismatch_message(path: Path, model_name: str, checkpoint: Checkpoint, expected: dict) -> str:
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


def save_checkpoint(bundle_or_model: "ClipBundle" | torch.nn.Module, path: str | os.PathLike, model_name: str | None = None) -> Path:
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


def is_loose_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint `save_checkpoint` wrote outside a run: what `gcctl models fetch` and `gcctl
    wise` write. A `MODEL_FILE` beside a `SUMMARY_FILE` is the model of the run that wrote both, no one else's."""
    path = Path(path)
    return checkpoint_model_name(path) is not None and not (path.parent / SUMMARY_FILE).is_file()


def check_checkpoint_out(out: str | os.PathLike, command: str, overwrite: bool, inputs: dict) -> None:
    """Refuse, before any work, a checkpoint --out that is a folder, one of the command's `inputs` (option: value),
    or a file other than a checkpoint an earlier `gcctl models fetch` or `gcctl wise` wrote (replaced only with
    `overwrite`)."""
    refuse_directory(out)
    refuse_input(out, inputs)
    check_output(out, command, is_own=is_loose_checkpoint, replace_own=overwrite)


def write_checkpoint(model: torch.nn.Module, path: Path, model_name: str) -> None:
    """The checkpoint format itself, written in place (callers own atomicity)."""
    torch.save(
        {
            "state_dict": _cpu_state_dict(model),
            "model_name": model_name,
            "quick_gelu": _uses_quick_gelu(model),
            "preprocess_cfg": _weights_preprocess(model),
            **({"vocabulary": words.digest} if (words := word_tokenizer(model_name)) else {}),
        },
        path,
    )


def export_local_dir(bundle_or_model: "ClipBundle" | torch.nn.Module, model_name: str | None, directory: str | os.PathLike) -> Path:
    """Write the folder `local-dir:` reads (ours and open_clip's): config + safetensors weights."""
    from safetensors.torch import save_file

    model, model_name = _model_and_name(bundle_or_model, model_name)
    directory = Path(directory)
    model_cfg = registered_config(model_name)
    if _uses_quick_gelu(model):
        model_cfg["quick_gelu"] = True
    config = {"model_cfg": model_cfg, "preprocess_cfg": _weights_preprocess(model), "gcctl": {"model_name": model_name}}
    with atomic_path(directory / LOCAL_DIR_WEIGHTS) as tmp:
        save_file(_cpu_state_dict(model), str(tmp))
    write_json(directory / LOCAL_DIR_CONFIG, config)  # last: a folder with a config is complete
    return directory


def _model_and_name(bundle_or_model: "ClipBundle" | torch.nn.Module, model_name: str | None) -> tuple[torch.nn.Module, str]:
    if not isinstance(bundle_or_model, torch.nn.Module):  # a ClipBundle
        model, model_name = bundle_or_model.model, model_name or bundle_or_model.reference.architecture
    elif model_name:
        model = bundle_or_model
    else:
        raise GcctlError("a model name is needed to save a bare model; pass the architecture it was built with")
    registered_config(model_name)  # the file is only useful if `build_clip(model_name, file)` can read it
    return model, model_name


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(module, QuickGELU) for module in model.modules())


def _weights_preprocess(model: torch.nn.Module) -> dict:
    """The preprocessing that belongs to the weights (the size belongs to the architecture), as plain JSON."""
    cfg = model.visual.preprocess_cfg
    return json.loads(json.dumps({key: cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in cfg}))


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
