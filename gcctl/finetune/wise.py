"""WiSE-FT (Wortsman et al., CVPR 2022): interpolate the weights of the zero-shot and the fine-tuned model."""

from __future__ import annotations

import os

import torch

from gcctl.clip.checkpoint import check_checkpoint_out, checkpoint_model_name, save_checkpoint
from gcctl.clip.factory import build_clip
from gcctl.errors import GcctlError
from gcctl.files import sha256_file

_COUNTER = "num_batches_tracked"  # a BatchNorm buffer that counts steps: no weight to interpolate


def wise_ft(zeroshot: str, finetuned: str, alpha: float, out: str | os.PathLike, *, model_name: str | None = None,
            overwrite: bool = False) -> dict:
    """Write `(1 - alpha) · zeroshot + alpha · finetuned` as a checkpoint `build_clip(model, out)` loads.

    Both are `--pretrained` values of one architecture (a checkpoint file, a tag...); `model_name` defaults
    to the architecture the fine-tuned checkpoint was saved for. Integer buffers must agree and are kept, except
    batch-norm step counters (`num_batches_tracked`), which count training and are the fine-tuned model's.
    `out` replaces an earlier interpolation only with `overwrite`; anything else, or an input, never.
    """
    if not 0 <= alpha <= 1:
        raise GcctlError(f"--alpha must be in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {alpha}")
    check_checkpoint_out(out, "wise", overwrite, {"--zeroshot": zeroshot, "--finetuned": finetuned})
    model_name = model_name or _architecture_for(zeroshot, finetuned)
    start = build_clip(model_name, zeroshot, device="cpu")
    end = build_clip(model_name, finetuned, device="cpu")
    mixed = {}
    start_weights = start.model.state_dict()
    for key, value in end.model.state_dict().items():
        if value.is_floating_point():
            mixed[key] = torch.lerp(start_weights[key].float(), value.float(), alpha).to(value.dtype)
        elif torch.equal(start_weights[key], value) or key.endswith(_COUNTER):
            mixed[key] = value
        else:
            raise GcctlError(f"{zeroshot} and {finetuned} differ in the non-float tensor {key}; they are not one architecture")
    end.model.load_state_dict(mixed)
    path = save_checkpoint(end.model, out, model_name)
    return {
        "out": str(path),
        "model": model_name,
        "alpha": alpha,
        "zeroshot": str(zeroshot),
        "zeroshot_sha256": start.reference.sha256,
        "finetuned": str(finetuned),
        "finetuned_sha256": end.reference.sha256,
        "out_sha256": sha256_file(path),
    }


def _architecture_for(zeroshot: str, finetuned: str) -> str:
    """The architecture both checkpoints were saved for; a disagreement is the user's error to fix."""
    saved = {source: checkpoint_model_name(source) for source in (zeroshot, finetuned)}
    known = {name for name in saved.values() if name}
    if len(known) > 1:
        raise GcctlError(f"--zeroshot {zeroshot} is a {saved[zeroshot]} checkpoint but --finetuned {finetuned} is "
                         f"{saved[finetuned]}; WiSE-FT interpolates two checkpoints of one architecture")
    if not known:
        raise GcctlError(f"cannot tell the architecture of {finetuned}; pass --model (see `gcctl models`)")
    return known.pop()

