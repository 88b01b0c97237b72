"""The only package that builds CLIP models: architectures (`registry`), weights sources (`weights`), the
checkpoint format (`checkpoint`), preprocessing (`preprocess`), the factory itself (`factory`), fixed text
prompts (`text`), the contrastive step and pretraining from scratch (`contrastive`, `pretrain`).

Its names load open_clip (about 2 s) on first use, so commands that never build a model — evaluating a
trained run, reports, pseudo-labels from features — do not pay for it.
"""

from gcctl.runtime import lazy_exports

_LAZY = {
    "ModelRef": "reference",
    "PACKAGED_MODELS": "registry",
    "describe_model": "registry",
    "list_models": "registry",
    "ClipBundle": "factory",
    "build_clip": "factory",
    "build_from_reference": "factory",
    "fetch_checkpoint": "factory",
    "checkpoint_model_name": "checkpoint",
    "export_local_dir": "checkpoint",
    "save_checkpoint": "checkpoint",
    "preprocess_uint8": "preprocess",
}

__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
