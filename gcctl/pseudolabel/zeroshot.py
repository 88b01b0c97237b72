"""`zeroshot-attr`: each spurious attribute predicted zero-shot by the store's own CLIP text tower, no labels.

For every attribute the prompts name each of its values, e.g. "a photo of a {class} on {value}." with the
class's word and the value's name from the store. `--attribute-prompt` replaces them:
  `ATTR=TEMPLATE`      a template for every value of ATTR ({value} and optionally {class} are filled in);
  `ATTR:VALUE=TEXT`    the text for one value (VALUE is its name or 0-based index; {class} is filled in).
A sample's group combines the most likely value of every attribute; its confidence is the product of their
softmax probabilities (at the model's logit scale), each among the values of one attribute.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gcctl.clip.captions import attribute_prompts, fill_prompt
from gcctl.clip.reference import ModelRef
from gcctl.clip.text import class_words
from gcctl.pseudolabel.data import LabelingData
from gcctl.pseudolabel.strategies import Inference


def zeroshot_attr(
    data: LabelingData,
    reference: ModelRef,
    specs: Sequence[str] = (),
    class_names: Sequence[str] | None = None,
    pretrained: str | None = None,
) -> Inference:
    """Groups from the text tower of `reference` (the store's model), built from `pretrained` when given."""
    from gcctl.clip.factory import (
        build_from_reference,  # here: the other strategies need no model (open_clip is slow to import)
    )
    from gcctl.clip.text import encode_texts, logit_scale

    prompts = attribute_prompts(specs, data.vocabulary.attributes, data.vocabulary.attribute_prompts)
    words = class_words(class_names, data.class_names)
    bundle = build_from_reference(reference, recorded_in=f"the feature store in {reference.anchor}", pretrained=pretrained,
                                  embed_dim=data.train_features.shape[1], device=data.device)
    scale = logit_scale(bundle.model)
    values = {attribute: np.zeros(len(data.train_y), dtype=np.int64) for attribute in prompts}
    confidence = np.ones(len(data.train_y))
    for attribute, templates in prompts.items():
        for label, word in enumerate(words):
            rows = np.flatnonzero(data.train_y == label)
            text = encode_texts(bundle.model, bundle.tokenizer, [fill_prompt(t, **{"class": word}) for t in templates]).to(data.device)
            image = F.normalize(data.train_features[torch.from_numpy(rows).to(data.device)], dim=-1)
            best, value = torch.softmax(scale * image @ text.T, dim=1).max(dim=1)
            values[attribute][rows] = value.cpu().numpy()
            confidence[rows] *= best.cpu().numpy()
    return Inference(data.vocabulary.within_index(values), confidence, {"prompts": prompts})
