"""Building CLIP models: the one module that asks open_clip for a model.

A model is an architecture (`registry`) plus a `pretrained` source (`weights`): an open_clip tag, a checkpoint
file, `local-dir:PATH`, `hf-hub:ORG/REPO`, or `none` (random weights drawn from a seed). Every source is
resolved to (architecture, weights file) first, so the weights actually loaded (or drawn) are hashed into the
model reference (`reference.ModelRef`) that travels with features, runs and predictions, and from which
`build_from_reference` builds the same model again.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import open_clip
import torch

from gcctl.clip.checkpoint import (
    Checkpoint,
    check_checkpoint_out,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from gcctl.clip.preprocess import describe_preprocess, eval_transform, square_or_pair
from gcctl.clip.reference import HF_HUB, LOCAL_DIR, ModelRef
from gcctl.clip.registry import quiet_open_clip, word_tokenizer
from gcctl.clip.weights import WeightsSource, hub_access, resolve_source
from gcctl.errors import GcctlError
from gcctl.files import sha256_file
from gcctl.runtime import check_seeds, device_layout, resolve_device

log = logging.getLogger(__name__)


@dataclass
class ClipBundle:
    """A model in eval mode with what it needs around it: eval transform, tokenizer, reference, provenance."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor
    tokenizer: Callable  # list[str] -> LongTensor [n, context_length]
    reference: ModelRef  # which model this is; a local source as an absolute path
    provenance: dict = field(default_factory=dict)  # the reference serialised, and the architecture's sizes


def build_clip(model_name: str | None, pretrained: str = "none", device="cpu", seed: int = 0) -> ClipBundle:
    """The model `model_name` with weights from `pretrained`, in eval mode on `device`.

    `pretrained`: an open_clip tag (`openai`...), a checkpoint file (.pt/.bin/.pth/.safetensors, a bare
    state_dict or {"state_dict": ...}), `local-dir:PATH`, `hf-hub:ORG/REPO`, or `none` (random weights,
    drawn from `seed`: the same seed gives the same weights). With `local-dir:`/`hf-hub:` the architecture
    comes from the folder and `model_name` may be None.
    """
    source = resolve_source(model_name, pretrained)
    if source.weights is None:
        log.warning("model %s has random weights (pretrained=none): fine for pretraining, meaningless for evaluation", source.name)
    return _bundle(source, resolve_device(device), seed)


def fresh_clip(model_name: str, device="cpu", seed: int = 0) -> ClipBundle:
    """Randomly initialised on purpose (pretraining from scratch): `build_clip(..., "none")` without the warning."""
    return _bundle(resolve_source(model_name, "none"), resolve_device(device), seed)


def build_from_reference(
    reference: ModelRef, *, recorded_in: str, pretrained: str | None = None, embed_dim: int | None = None, device="cpu"
) -> ClipBundle:
    """The model an artifact (`recorded_in`, for messages) was made with, from `pretrained` when given (the same
    weights elsewhere), else from where the reference points; weights whose hash differs are refused, and so is
    a model that does not embed into `embed_dim` (the width of the artifact's features, when it has any)."""
    pretrained = pretrained or reference.pretrained()
    from_folder = pretrained.startswith((LOCAL_DIR, HF_HUB))  # the folder names its own architecture
    seed = reference.seed if reference.seed is not None else 0
    bundle = build_clip(None if from_folder else reference.architecture, pretrained, device=device, seed=seed)
    reference.check_built(bundle.reference, pretrained, recorded_in)
    # Records of unseeded random weights pass the hash check, so a changed architecture config shows only in the width.
    built_dim = bundle.provenance["embed_dim"]
    if embed_dim is not None and built_dim != embed_dim:
        raise GcctlError(
            f"model {reference.architecture} embeds into {built_dim} dimensions but {recorded_in} holds "
            f"{embed_dim}-dimensional features; extract the store again with this model"
        )
    return bundle


def _bundle(source: WeightsSource, device: torch.device, seed: int) -> ClipBundle:
    with _hugging_face_parts(source):
        model = _instantiate(source, device, seed)
    device_layout(model, device)
    model.eval()
    hf_tokenizer = source.tokenizer.startswith(HF_HUB) or _hf_tokenizer_name(source)
    network = hub_access() if hf_tokenizer else contextlib.nullcontext()
    tokenizer = word_tokenizer(source.architecture) if not source.tokenizer else None
    if tokenizer is None:
        with quiet_open_clip(), network, _hugging_face_parts(source, tokenizing=bool(hf_tokenizer)):
            tokenizer = open_clip.get_tokenizer(source.tokenizer or source.architecture)
    preprocess_cfg = model.visual.preprocess_cfg
    reference = ModelRef(
        architecture=source.name,
        kind=source.kind,
        source=source.source,
        sha256=sha256_file(source.weights) if source.weights else state_dict_sha256(model.state_dict()),
        preprocess=describe_preprocess(preprocess_cfg),
        seed=None if source.weights else seed,
    )
    return ClipBundle(
        model=model,
        preprocess=eval_transform(preprocess_cfg),
        tokenizer=tokenizer,
        reference=reference,
        provenance={
            "model_ref": reference.to_dict(),
            "embed_dim": source.model_cfg["embed_dim"],
            "image_size": square_or_pair(model.visual.image_size),
            "context_length": tokenizer.context_length,
        },
    )


def _hf_tokenizer_name(source: WeightsSource) -> str:
    return source.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") or ""


@contextlib.contextmanager
def _hugging_face_parts(source: WeightsSource, tokenizing: bool = False):
    """The families whose tokenizer or text tower open_clip takes from Hugging Face (SigLIP, SigLIP2, RoBERTa
    and NLLB towers): without `transformers`, or (`tokenizing`) offline with the tokenizer not cached, one line."""
    try:
        yield
    except (ImportError, RuntimeError) as error:
        if "transformers" not in f"{getattr(error, 'name', '')} {error}":
            raise
        raise GcctlError(f"model {source.name} needs Hugging Face's transformers (its tokenizer or text tower); "
                         "install it with pip install 'gcctl[hf]'") from None
    except OSError:
        if not tokenizing:
            raise
        raise GcctlError(f"model {source.name}'s tokenizer ({_hf_tokenizer_name(source) or source.tokenizer}) is not "
                         "in the Hugging Face cache and the hub cannot be reached; fetch it once online, or set "
                         "HF_HOME to a cache that holds it") from None


def _instantiate(source: WeightsSource, device: torch.device, seed: int) -> torch.nn.Module:
    checkpoint = read_checkpoint(source.weights) if source.weights else Checkpoint({})
    check_seeds([seed], "--seed")
    # open_clip draws the initial weights on the CPU, then moves them: seeding the CPU generator makes random
    # weights a function of the seed on every device; forking it leaves the caller's random stream alone.
    with quiet_open_clip(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(
            source.architecture,
            load_weights=False,  # loaded below, from the file we resolved and hash
            pretrained_text=False,  # never fetch tower weights from the network behind our back
            force_quick_gelu=source.quick_gelu or checkpoint.quick_gelu,
            force_preprocess_cfg={**checkpoint.preprocess, **source.preprocess},
            device=device,
        )
        if source.weights is None:
            _draw_what_open_clip_leaves_empty(model)
    if source.weights is not None:
        _check_vocabulary(checkpoint, source)
        load_weights(model, checkpoint, source.weights, source.name)
    return model


def _draw_what_open_clip_leaves_empty(model: torch.nn.Module) -> None:
    """Random weights open_clip allocates and never draws: CoCa's text decoder (`MultimodalTransformer`) makes its
    `text_projection` with torch.empty and its `init_parameters` is never called (and would fail: it reads a
    `.transformer` the class lacks), so that matrix held whatever memory was there and random CoCa weights were
    no function of their seed. Drawn here as that method means to: normal with std width ** -0.5, on the CPU's
    generator, as open_clip draws the rest, so the weights are the same on every device."""
    from open_clip.transformer import MultimodalTransformer

    for module in model.modules():
        if isinstance(module, MultimodalTransformer) and module.text_projection is not None:
            with torch.no_grad():
                module.text_projection.copy_(torch.randn(module.text_projection.shape) * module.width ** -0.5)


def _check_vocabulary(checkpoint: Checkpoint, source: WeightsSource) -> None:
    """Weights trained with one word list are refused with another: every text feature would be noise."""
    words = word_tokenizer(source.architecture)
    if words is not None and checkpoint.vocabulary is not None and checkpoint.vocabulary != words.digest:
        raise GcctlError(f"checkpoint {source.weights} was trained with another word list than {source.architecture} "
                         "has now (gcctl/clip/configs/words.txt changed); pretrain it again")


def fetch_checkpoint(model_name: str, pretrained: str, out: str | os.PathLike, *, overwrite: bool = False) -> dict:
    """Resolve weights once (e.g. an open_clip tag, while online) into a single checkpoint file that later
    runs load offline with `build_clip(model_name, out)`; returns the provenance of what was fetched. An earlier
    fetched checkpoint at `out` is replaced only with `overwrite`; anything else there, or `pretrained` itself, never."""
    check_checkpoint_out(out, "models fetch", overwrite, {"--pretrained": pretrained})
    bundle = build_clip(model_name, pretrained, device="cpu")
    path = save_checkpoint(bundle, out)
    return {**bundle.provenance, "out": str(path), "out_sha256": sha256_file(path)}
