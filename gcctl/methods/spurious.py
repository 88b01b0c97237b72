"""The spurious attribute as text, and the subspaces its text spans: shared by the training-free debiasing
methods (orthproj, roboshot, tie)."""

from __future__ import annotations

from typing import Sequence

import torch

from gcctl.clip.captions import attribute_prompts, fill_prompt
from gcctl.clip.text import encode_texts
from gcctl.datasets.groups import GroupVocabulary
from gcctl.errors import GcctlError

# A direction whose singular value is below this share of the largest adds nothing to the span: it is a
# combination of the others up to float error (e.g. a-c given a-b and b-c).
_RANK_TOLERANCE = 1e-6


def orthonormal_basis(vectors: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows [r, D] spanning the rows of `vectors` [k, D] (r ≤ k; none for an empty span), in
    their dtype.

    From the SVD rather than QR: QR of dependent directions returns arbitrary extra basis vectors, which a
    projection would then remove from the embeddings as well.
    """
    if len(vectors) == 0:
        return vectors.new_zeros((0, vectors.shape[1]))
    _, singular, basis = torch.linalg.svd(vectors.double(), full_matrices=False)
    keep = singular > _RANK_TOLERANCE * singular.max()
    return basis[keep].to(vectors.dtype)


def span_projector(vectors: torch.Tensor) -> torch.Tensor:
    """The orthogonal projection [D, D] onto the span of the rows of `vectors` [k, D]."""
    basis = orthonormal_basis(vectors)
    return basis.T @ basis


def attribute_texts(vocabulary: GroupVocabulary, words: list[str], specs: Sequence[str], needed_by: str) -> dict[str, list[list[str]]]:
    """For each attribute of the store, its prompts per value and class (`texts[attribute][value][class]`):
    the `--attribute-prompt` templates, else the dataset's (gcctl.clip.captions), with each class's word filled in."""
    if not vocabulary.attributes:
        raise GcctlError(f"{needed_by} needs the spurious attribute's value names, but the store has no attribute; "
                         "extract a dataset with attribute columns (named in its gcctl-names.json)")
    prompts = attribute_prompts(specs, vocabulary.attributes, vocabulary.attribute_prompts)
    return {attribute: [[fill_prompt(template, **{"class": word}) for word in words] for template in templates]
            for attribute, templates in prompts.items()}


def prompt_embeddings(bundle, texts: dict[str, list[list[str]]]) -> dict[str, torch.Tensor]:
    """Each attribute's prompt embeddings [values, classes, D] (float64 on the CPU, for the linear algebra)."""
    embeddings = {}
    for attribute, per_value in texts.items():
        flat = encode_texts(bundle.model, bundle.tokenizer, [text for row in per_value for text in row])
        embeddings[attribute] = flat.double().cpu().view(len(per_value), len(per_value[0]), -1)
    return embeddings
