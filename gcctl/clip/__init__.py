"""The only package that builds CLIP models: open_clip configs (ours registered at import), weights
sources, checkpoints, and contrastive pretraining from scratch."""

from gcctl.clip.factory import (
    PACKAGED_MODELS,
    ClipBundle,
    build_clip,
    build_from_reference,
    checkpoint_model_name,
    describe_model,
    export_local_dir,
    fetch_checkpoint,
    list_models,
    preprocess_uint8,
    save_checkpoint,
)
from gcctl.clip.reference import ModelRef

__all__ = [
    "PACKAGED_MODELS",
    "ClipBundle",
    "ModelRef",
    "build_clip",
    "build_from_reference",
    "checkpoint_model_name",
    "describe_model",
    "export_local_dir",
    "fetch_checkpoint",
    "list_models",
    "preprocess_uint8",
    "save_checkpoint",
]
