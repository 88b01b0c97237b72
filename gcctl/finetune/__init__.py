"""Whole-model fine-tuning: FT and StarFT (`train`, with its `losses`, StarFT's `teacher` and spurious `pools`),
data-parallel under torchrun (`parallel`), and WiSE-FT weight interpolation (`wise`).

Unlike the feature-based methods they read images, not the feature store; their output is a checkpoint,
a model like any other (`gcctl extract --pretrained DIR/model.pt`, then any evaluation).
"""

from gcctl.runtime import lazy_exports

_LAZY = {
    "METHODS": "config",
    "FinetuneConfig": "config",
    "finetune": "train",
    "SHIPPED_POOLS": "pools",
    "read_pool": "pools",
    "read_pools": "pools",
    "wise_ft": "wise",
}
__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
