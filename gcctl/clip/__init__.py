"""The only package that builds CLIP models: open_clip configs (ours registered at import), weights
sources, checkpoints, and contrastive pretraining from scratch.

Its names load `gcctl.clip.factory` (and with it open_clip, about 2 s) on first use, so commands that never
build a model — evaluating a trained run, reports, pseudo-labels from features — do not pay for it.
"""

import importlib

from gcctl.clip.reference import ModelRef

_FROM_FACTORY = (
    "PACKAGED_MODELS",
    "ClipBundle",
    "build_clip",
    "build_from_reference",
    "checkpoint_model_name",
    "describe_model",
    "export_local_dir",
    "fetch_checkpoint",
    "list_models",
    "preprocess_uint8",
    "save_checkpoint",
)


def __getattr__(name: str):
    if name in _FROM_FACTORY:
        return getattr(importlib.import_module("gcctl.clip.factory"), name)
    raise AttributeError(f"module 'gcctl.clip' has no attribute '{name}'")


__all__ = ["ModelRef", *_FROM_FACTORY]
