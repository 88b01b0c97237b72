"""The image-based methods: fine-tuning the whole CLIP (FT, StarFT) and WiSE-FT weight interpolation.

Unlike the feature-based methods they read images, not the feature store; their output is a checkpoint,
a model like any other (`gcctl extract --pretrained DIR/model.pt`, then any evaluation).
"""

from gcctl.methods.finetune.pools import SHIPPED_POOLS, read_pool, read_pools
from gcctl.methods.finetune.train import FinetuneConfig, finetune
from gcctl.methods.finetune.wise import wise_ft

__all__ = ["SHIPPED_POOLS", "FinetuneConfig", "finetune", "read_pool", "read_pools", "wise_ft"]
