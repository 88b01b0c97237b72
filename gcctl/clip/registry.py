"""The architectures gcctl can build: open_clip's configs plus ours (`configs/`, registered at import), and the
one guard around open_clip's logging."""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path

import open_clip
import torch

from gcctl.errors import GcctlError

CONFIG_DIR = Path(__file__).parent / "configs"
PACKAGED_MODELS = tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.json")))
_OPEN_CLIP_DIR = str(Path(open_clip.__file__).parent)


def register_packaged_configs() -> None:
    if not set(PACKAGED_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


register_packaged_configs()


def list_models() -> list[str]:
    """Every architecture `build_clip` knows: ours first, then open_clip's."""
    return list(PACKAGED_MODELS) + [name for name in open_clip.list_models() if name not in PACKAGED_MODELS]


def describe_model(name: str) -> dict:
    """Size figures of a registered architecture, counted on the meta device (nothing is allocated)."""
    cfg = registered_config(name)
    with torch.device("meta"), quiet_open_clip():
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


def word_tokenizer(name: str):
    """The word-level tokenizer a packaged architecture names (`gcctl.clip.words`), or None: open_clip's own."""
    if name not in PACKAGED_MODELS:
        return None
    text_cfg = registered_config(name)["text_cfg"]
    vocabulary = (text_cfg.get("tokenizer_kwargs") or {}).get("vocabulary")
    if vocabulary is None:
        return None
    from gcctl.clip.words import WordTokenizer

    return WordTokenizer.from_file(CONFIG_DIR / vocabulary, text_cfg["context_length"], text_cfg["vocab_size"])


def registered_config(name: str) -> dict:
    cfg = open_clip.get_model_config(name) if name and ":" not in name else None
    if cfg is None:
        close = difflib.get_close_matches(name or "", list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise GcctlError(f"unknown model '{name}'; {hint}`gcctl models` lists the known ones")
    return cfg


class _DropOpenClipNotices(logging.Filter):
    """open_clip logs to the root logger that a model 'has no pretrained weights' before we load them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING or not record.pathname.startswith(_OPEN_CLIP_DIR)


@contextlib.contextmanager
def quiet_open_clip():
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
