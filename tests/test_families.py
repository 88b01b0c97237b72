"""One model of every open_clip family, random weights, through every stage that builds a model: extract,
train coop and groupcoop, evaluate, pseudo-label zeroshot-attr, finetune ft (issue 25, item 8).

Each family's own config, shrunk where open_clip builds the tower itself (text towers, ResNet and ViT image
towers: one layer, width 32, 64 px) so the walk takes seconds; a timm image tower keeps its size (its config
names a timm model, whose shape open_clip does not expose), except the base-sized ones, which take the
smallest timm model of their family (SMALLER_TIMM) through the same adapter. CoCa runs the stages that need
only the image tower and is refused in one line by those that learn prompts.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
from PIL import Image

from gcctl.errors import GcctlError

FAMILIES = (
    "RN50",  # ModifiedResNet
    "ViT-B-32-quickgelu",  # open_clip's ViT, QuickGELU
    "convnext_tiny",  # timm ConvNeXt
    "EVA02-B-16",  # timm EVA, custom text tower
    "MobileCLIP-S1",  # timm FastViT, text without causal mask
    "MobileCLIP2-S0",
    "ViTamin-S",
    "PE-Core-T-16-384",  # timm PE, map pooling, context 32
    "swin_base_patch4_window7_224",  # timm Swin
    "vit_medium_patch16_gap_256",  # timm ViT, global average pooling
)
COCA = "coca_ViT-B-32"
SMALLER_TIMM = {"eva02_base_patch16_clip_224": "eva02_tiny_patch14_224",
                "swin_base_patch4_window7_224": "swin_tiny_patch4_window7_224",
                "vit_medium_patch16_gap_256": "vit_wee_patch16_reg1_gap_256"}


def micro_config(name: str) -> dict:
    """`name`'s open_clip config with the towers open_clip builds itself shrunk."""
    import open_clip

    config = copy.deepcopy(open_clip.get_model_config(name))
    config["embed_dim"] = 32
    for key in ("text_cfg", "multimodal_cfg"):
        if key in config:
            config[key].update(width=32, heads=2, layers=1)
    vision = config["vision_cfg"]
    if "timm_model_name" in vision:
        vision["timm_model_name"] = SMALLER_TIMM.get(vision["timm_model_name"], vision["timm_model_name"])
    else:
        if isinstance(vision.get("layers"), list):  # ResNet: four stages
            vision.update(layers=[1, 1, 1, 1], width=8, image_size=64)
        else:
            vision.update(layers=1, width=32, head_width=16, image_size=2 * vision["patch_size"])
            if "attn_pooler_heads" in vision:
                vision["attn_pooler_heads"] = 2
    return config


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Every walked family registered with open_clip as `walk-NAME`."""
    import open_clip

    folder = tmp_path_factory.mktemp("configs")
    for name in (*FAMILIES, COCA):
        (folder / f"walk-{name}.json").write_text(json.dumps(micro_config(name)))
    open_clip.add_model_config(folder)
    return folder


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """24 images of a two-class, two-place manifest dataset, every group in every split."""
    from gcctl.datasets import load_dataset

    root = tmp_path_factory.mktemp("walk-data")
    rows = []
    for split in ("train", "val", "test"):
        for y in (0, 1):
            for place in (0, 1):
                for copy_index in range(2):
                    path = f"images/{len(rows)}.png"
                    (root / "images").mkdir(exist_ok=True)
                    Image.new("RGB", (32, 32), (120 * y + 20 * copy_index, 60 + 120 * place, 40)).save(root / path)
                    rows.append((path, y, split, place))
    pd.DataFrame(rows, columns=["path", "y", "split", "place"]).to_csv(root / "manifest.csv", index=False)
    return load_dataset("manifest", root, file="manifest.csv", attribute_columns="place")


def _extract(name: str, table, folder):
    from gcctl.clip.factory import build_clip
    from gcctl.store import extract

    extract(table, build_clip(f"walk-{name}", "none"), folder / "store.h5", batch_size=8, device="cpu")
    return folder / "store.h5"


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_runs_every_stage_that_builds_a_model(name, registered, table, tmp_path, quiet_random_weights):
    from gcctl.finetune import FinetuneConfig, finetune
    from gcctl.methods.runs import evaluate_run, train_run
    from gcctl.pseudolabel import pseudo_label

    store = _extract(name, table, tmp_path)
    for method in ("coop", "groupcoop"):
        train_run(store, method, tmp_path / method, options={"epochs": 1}, device="cpu")
    metrics = evaluate_run(tmp_path / "groupcoop", "test", device="cpu")
    assert 0.0 <= metrics["acc_wg"]["mean"] <= 1.0
    summary = pseudo_label(store, "zeroshot-attr", tmp_path / "groups.parquet", device="cpu")
    assert summary["agreement"] is not None
    finetune(table, tmp_path / "ft", model_name=f"walk-{name}", pretrained="none",
             config=FinetuneConfig(epochs=1, batch_size=8, lr=1e-4, pools=("synthetic",)), device="cpu")
    assert (tmp_path / "ft" / "model.pt").is_file()


def test_cocas_random_weights_are_a_function_of_their_seed(registered):
    """open_clip leaves the text decoder's projection as torch.empty: whatever memory held, so the training path's
    redraw hashed otherwise than extraction's and refused the store for the wrong reason."""
    import torch

    from gcctl.clip.factory import build_clip

    draws = [build_clip(f"walk-{COCA}", "none").model.text_decoder.text_projection.detach().clone() for _ in range(2)]
    clutter = [torch.full((4096,), float(i)) for i in range(64)]  # memory an empty tensor could be given next
    del clutter
    draws.append(build_clip(f"walk-{COCA}", "none").model.text_decoder.text_projection.detach())
    width = draws[0].shape[0]
    assert all(torch.equal(draw, draws[0]) for draw in draws)
    assert abs(draws[0].std().item() - width ** -0.5) < 0.5 * width ** -0.5
    other_seed = build_clip(f"walk-{COCA}", "none", seed=1).model.text_decoder.text_projection
    assert not torch.equal(other_seed, draws[0])


@pytest.mark.slow
def test_coca_extracts_and_is_refused_in_one_line_where_prompts_are_learned(registered, table, tmp_path, quiet_random_weights):
    from gcctl.methods.runs import train_run

    import torch

    from gcctl.clip.factory import build_clip
    from gcctl.store import extract

    store = tmp_path / "store.h5"
    extract(table, build_clip(f"walk-{COCA}", "none"), store, batch_size=8, device="cpu")
    with pytest.raises(GcctlError, match="has another text tower") as refused:
        train_run(store, "coop", tmp_path / "coop", options={"epochs": 1}, device="cpu")
    assert "\n" not in str(refused.value)
