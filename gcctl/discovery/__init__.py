"""Spurious-attribute discovery (`gcctl discover`): candidate words ranked by how well the model's own text
tower tells a class's flagged images (its errors, or its minority cluster) from the rest of the class.

The idea of Bias-to-Text (B2T; Kim et al., CVPR 2024, arXiv 2301.11104), from its description: a keyword that
names what a class's misclassified images share is closer in CLIP space to them than to the class's correctly
classified images, so its score is the difference of its mean similarity to the two sets. B2T draws its
keywords from captions of the error images; gcctl has no captioner, so the candidates come from a vocabulary
(the store's own attribute names, a shipped list, or a file), each read in a class's prompt.

Flagged images, per class: those a run's predictions get wrong (most of its seeds), or, with no predictions,
the smaller of two k-means clusters of the class's images (no label but the class read either way).
The output is usable as it stands: `insights.tsv` for RoboShot's `--insights`, and `options.yaml`, a
`gcctl --config` mapping with one `--attribute-prompt` per attribute value of the store (the discovered words
matched to the values by text alone), for orthproj, tie-star and roboshot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gcctl.clip.captions import DEFAULT_ATTRIBUTE_PROMPT, attribute_prompts, fill_prompt
from gcctl.clip.text import class_words, encode_texts
from gcctl.errors import GcctlError
from gcctl.files import atomic_directory, check_output, output_lock, read_lines, write_json
from gcctl.metrics import best_assignment, read_predictions
from gcctl.runtime import resolve_device
from gcctl.store import FeatureStore

RESULT_FILE = "discovery.json"
INSIGHTS_FILE = "insights.tsv"
OPTIONS_FILE = "options.yaml"
VOCABULARIES = ("synthetic", "general", "names")  # shipped; or a file
_GENERAL_WORDS = Path(__file__).with_name("general.txt")


@dataclass(frozen=True)
class Candidate:
    word: str  # what the ranking shows and an attribute prompt's text is built from
    prompt: str  # its prompt template, {class} still to fill in

    def text(self, class_word: str) -> str:
        return fill_prompt(self.prompt, **{"class": class_word})


def synthetic_candidates() -> list[Candidate]:
    """The synthetic world's words for what an object or scene looks like, as its captions phrase them:
    colours, fills and sizes before the kind, backgrounds and positions after it (gcctl.synth)."""
    from gcctl.synth.corpus import BACKGROUND_PHRASES, FACTOR_PROMPTS, FILL_WORDS, POSITIONS, SIZE_WORDS
    from gcctl.synth.render import COLOURS

    before = FACTOR_PROMPTS["colour"]
    adjectives = [*COLOURS, *(word for words in FILL_WORDS.values() for word in words),
                  *(word for words in SIZE_WORDS.values() for word in words)]
    found = [Candidate(word, fill_prompt(before, value=word)) for word in adjectives]
    found += [Candidate(name, fill_prompt(FACTOR_PROMPTS["background"], value=name)) for name in BACKGROUND_PHRASES]
    found += [Candidate(phrase, f"a photo of a {{class}} {phrase}.") for _, phrases in POSITIONS.values() for phrase in phrases]
    return found


def read_vocabulary(path: str | os.PathLike, prompt: str) -> list[Candidate]:
    """Candidates from a UTF-8 file, one word or phrase per line (blank lines and # comments skipped), each read
    in `prompt` as its {value}; a line holding {class} is its own prompt."""
    lines = read_lines(path, "vocabulary", missing=f"give one of {', '.join(VOCABULARIES)} or a text file of words",
                       content="one word or phrase per line")
    words = list(dict.fromkeys(line for _, line in lines))
    if not words:
        raise GcctlError(f"vocabulary {path} holds no word; write one word or phrase per line")
    return [Candidate(word, word if "{class}" in word else fill_prompt(prompt, value=word)) for word in words]


def vocabulary_candidates(vocabulary: str, store: FeatureStore, prompt: str) -> list[Candidate]:
    """The candidates of a shipped vocabulary's name or of a file (`read_vocabulary`)."""
    if vocabulary == "synthetic":
        return synthetic_candidates()
    if vocabulary == "general":
        return read_vocabulary(_GENERAL_WORDS, prompt)
    if vocabulary == "names":
        names = store.vocabulary.attributes
        if not names:
            raise GcctlError(f"{store.path} names no attribute; choose --vocabulary synthetic, general or a file")
        prompts = attribute_prompts((), names, store.vocabulary.attribute_prompts)
        return [Candidate(value, prompts[attribute][i]) for attribute, values in names.items() for i, value in enumerate(values)]
    return read_vocabulary(vocabulary, prompt)


def flagged_by_predictions(predictions_file: str | os.PathLike, store: FeatureStore) -> tuple[np.ndarray, np.ndarray, str]:
    """Store rows of the predictions' samples, whether most seeds got each wrong, and the split they are of."""
    frame, _ = read_predictions(predictions_file)
    wrong = (frame["pred"] != frame["y"]).groupby(frame["id"].astype(str), sort=False).mean() > 0.5
    row_of = {sample: row for row, sample in enumerate(store.ids.astype(str))}
    missing = [sample for sample in wrong.index if sample not in row_of]
    if missing:
        raise GcctlError(f"predictions {predictions_file} hold id '{missing[0]}', which {store.path} lacks; "
                         "give the store the run was evaluated on")
    return np.array([row_of[sample] for sample in wrong.index]), wrong.to_numpy(), str(frame["split"].iloc[0])


def flagged_by_clusters(features: torch.Tensor, y: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Per class, the images of the smaller of its two k-means clusters (its likely minority group)."""
    from gcctl.pseudolabel.strategies import kmeans_clusters

    flagged = np.zeros(len(y), dtype=bool)
    generator = torch.Generator().manual_seed(seed)
    for label in range(num_classes):
        rows = np.flatnonzero(y == label)
        if len(rows) < 2:
            continue
        _, assign = kmeans_clusters(features[torch.from_numpy(rows).to(features.device)], 2, generator)
        assign = assign.cpu().numpy()
        smaller = int(np.bincount(assign, minlength=2).argmin())
        flagged[rows[assign == smaller]] = True
    return flagged


def explainable(y: np.ndarray, flagged: np.ndarray, num_classes: int) -> list[int]:
    """The classes with both flagged and other images: those a word can tell apart."""
    return [label for label in range(num_classes) if (flagged[y == label]).any() and (~flagged[y == label]).any()]


def rank_candidates(features: torch.Tensor, y: np.ndarray, flagged: np.ndarray, class_names: Sequence[str],
                    text_of) -> dict[str, dict]:
    """Per class with both flagged and other images: every candidate's score, its similarity to the flagged
    images' mean minus that to the others' (both means of unit features), best first. `text_of(class_index)`
    gives the candidates' unit text features [W, D] in that class's prompt."""
    features = F.normalize(features.float(), dim=-1)
    ranked = {}
    for label in explainable(y, flagged, len(class_names)):
        name, in_class = class_names[label], y == label
        flagged_mean = features[torch.from_numpy(in_class & flagged).to(features.device)].mean(dim=0)
        rest_mean = features[torch.from_numpy(in_class & ~flagged).to(features.device)].mean(dim=0)
        texts = text_of(label)
        to_flagged, to_rest = (texts @ flagged_mean).cpu().numpy(), (texts @ rest_mean).cpu().numpy()
        score = to_flagged - to_rest
        order = np.argsort(-score, kind="stable")
        ranked[name] = {"flagged": int((in_class & flagged).sum()), "rest": int((in_class & ~flagged).sum()),
                        "order": order, "score": score, "flagged_similarity": to_flagged, "rest_similarity": to_rest}
    if not ranked:
        raise GcctlError("no class has both flagged and other images (no errors, or a single cluster); "
                         "give predictions of a run that makes errors, or a split with more images")
    return ranked


def attribute_words(ranked: dict[str, dict], candidates: list[Candidate], count: int) -> list[int]:
    """The `count` discovered candidates: each class's best in turn, then its next best, none twice."""
    chosen: list[int] = []
    for depth in range(len(candidates)):
        for entry in ranked.values():
            index = int(entry["order"][depth])
            if index not in chosen and len(chosen) < count:
                chosen.append(index)
    return chosen


def match_to_attribute_values(chosen: list[Candidate], store: FeatureStore, text) -> list[tuple[str, str, Candidate]]:
    """(attribute, value, candidate) in the store's order of values: the discovered candidates paired one-to-one
    with the store's attribute values so that the text similarity of each candidate to the value's own prompt (the store's names: names, never a
    sample's attribute) is greatest in total. `text(strings)` gives unit text features."""
    prompts = attribute_prompts((), store.vocabulary.attributes, store.vocabulary.attribute_prompts)
    slots = [(attribute, value, prompts[attribute][i]) for attribute, values in store.vocabulary.attributes.items()
             for i, value in enumerate(values)]
    words = class_words(None, store.class_names)

    def mean_text(template: str) -> torch.Tensor:  # a prompt read over every class, so no class decides it
        return F.normalize(text([fill_prompt(template, **{"class": word}) for word in words]).mean(dim=0), dim=0)

    slot_features = torch.stack([mean_text(template) for _, _, template in slots])
    candidate_features = torch.stack([mean_text(candidate.prompt) for candidate in chosen])
    match = best_assignment((candidate_features @ slot_features.T).cpu().numpy())
    row_of = {int(column): row for row, column in enumerate(match)}
    return [(attribute, value, chosen[row_of[column]]) for column, (attribute, value, _) in enumerate(slots)]


def discovered_options(chosen: list[Candidate], pairs: list[tuple[str, str, Candidate]], store: FeatureStore,
                       out: Path) -> tuple[dict, list[str]]:
    """The `--config` mappings that hand the discovered attribute to `gcctl train` (as --attribute-prompt for
    orthproj, tie-star and roboshot, where the store names attributes; RoboShot's --insights always), and the
    insight file's lines: harmful pairs differ in the discovered word, helpful ones in the class."""
    from gcctl.methods.roboshot import INSIGHT_KINDS, default_insights

    words = class_words(None, store.class_names)
    by_attribute: dict[str, list[Candidate]] = {}
    for attribute, _, candidate in pairs:
        by_attribute.setdefault(attribute, []).append(candidate)
    insights = default_insights({attribute: [[candidate.text(word) for word in words] for candidate in candidates]
                                 for attribute, candidates in (by_attribute or {"discovered": chosen}).items()})
    lines = [f"{kind}\t{a}\t{b}" for kind in INSIGHT_KINDS for a, b in insights[kind]]
    options = {"insights": {"insights": str(out / INSIGHTS_FILE)}}
    if pairs:
        options["attribute_prompts"] = {"attribute_prompt": [f"{attribute}:{value}={candidate.prompt}"
                                                             for attribute, value, candidate in pairs]}
    return options, lines


def discover(
    features: str | os.PathLike,
    out: str | os.PathLike,
    *,
    predictions: str | os.PathLike | None = None,
    split: str = "train",
    vocabulary: str = "synthetic",
    prompt: str = DEFAULT_ATTRIBUTE_PROMPT,
    top: int = 10,
    clusters_without_errors: bool = False,
    seed: int = 0,
    pretrained: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Rank `vocabulary`'s candidates per class of the store `features` (see the module notes) and write the
    folder `out`: discovery.json, insights.tsv and options.yaml (all or nothing; over an earlier discovery only
    with `overwrite`). Flagged images: the errors of `predictions` (a `gcctl evaluate` predictions file of a run
    on this store), else each class's smaller k-means cluster on `split`; with `clusters_without_errors`, the
    clusters also where the predictions leave no class with both errors and right answers (a rule fixed before
    any result, so a pipeline stage never fails on a saturated benchmark). Returns what discovery.json holds."""
    if top < 1:
        raise GcctlError(f"--top {top} must be at least 1")
    out = Path(out)
    with output_lock(out):
        check_output(out, "discover", is_own=lambda path: (path / RESULT_FILE).is_file(), replace_own=overwrite)
        with FeatureStore(features) as store:
            flags = _flagged(store, predictions, split, seed, resolve_device(device))
            if predictions is not None and clusters_without_errors and not explainable(flags[1], flags[2], len(store.class_names)):
                flags = _flagged(store, None, split, seed, resolve_device(device))
                flags[3]["flagged"] += " (the predictions had no error to explain)"
            result, options, insight_lines = _discover(store, out, flags, vocabulary, prompt, top, pretrained,
                                                       resolve_device(device))
        with atomic_directory(out) as staging:
            write_json(staging / RESULT_FILE, result)
            (staging / INSIGHTS_FILE).write_text("".join(line + "\n" for line in insight_lines), encoding="utf-8")
            _write_options(staging / OPTIONS_FILE, options, out)
    return result


def _write_options(path: Path, options: dict, out: Path) -> None:
    import yaml

    usage = "# Hand the discovered attribute to gcctl train:\n"
    for key, methods in (("attribute_prompts", "orthproj, tie-star or roboshot"), ("insights", "roboshot")):
        if key in options:
            usage += f"#   gcctl --config {out / OPTIONS_FILE}:{key} train --method ({methods}) ...\n"
    path.write_text(usage + yaml.safe_dump(options, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")


def _flagged(store: FeatureStore, predictions, split: str, seed: int, device) -> tuple[torch.Tensor, np.ndarray, np.ndarray, dict]:
    """The features, classes and flags of the images ranked on, and how they were flagged."""
    from gcctl.store import load_rows

    if predictions is not None:
        rows, flagged, split = flagged_by_predictions(predictions, store)
        how = {"flagged": "errors", "predictions": str(predictions), "split": split}
    else:
        rows = store.split_index(split)
        if len(rows) == 0:
            raise GcctlError(f"{store.path} has no '{split}' images; choose --split train, val or test")
        how = {"flagged": "smaller k-means cluster", "split": split, "seed": seed}
    features = load_rows(store, rows, device, what=f"split '{split}' of {store.path}", float32=True)
    y = store.y[rows]
    if predictions is None:
        flagged = flagged_by_clusters(F.normalize(features, dim=-1), y, store.vocabulary.num_classes, seed)
    return features, y, flagged, how


def _discover(store: FeatureStore, out: Path, flags: tuple, vocabulary, prompt, top, pretrained, device):
    from gcctl.clip.factory import build_from_reference

    candidates = vocabulary_candidates(vocabulary, store, prompt)
    features, y, flagged, how = flags
    reference = store.model_ref()
    bundle = build_from_reference(reference, recorded_in=f"feature store {store.path}", pretrained=pretrained,
                                  embed_dim=store.embed_dim, device=device)

    def text(strings: list[str]) -> torch.Tensor:
        return encode_texts(bundle.model, bundle.tokenizer, strings).to(device)

    words = class_words(None, store.class_names)
    ranked = rank_candidates(features, y, flagged, store.class_names,
                             lambda label: text([candidate.text(words[label]) for candidate in candidates]))
    slots = sum(len(values) for values in store.vocabulary.attributes.values())
    chosen = [candidates[i] for i in attribute_words(ranked, candidates, slots or len(ranked))]
    pairs = match_to_attribute_values(chosen, store, text) if slots and len(chosen) == slots else []
    options, insight_lines = discovered_options(chosen, pairs, store, out)
    result = {
        "classes": {name: _ranking(entry, candidates, top) for name, entry in ranked.items()},
        "discovered": [candidate.word for candidate in chosen],
        "attribute_values": [{"attribute": a, "value": v, "word": c.word, "prompt": c.prompt} for a, v, c in pairs],
        "provenance": {"features": str(store.path), "model_ref": reference.recorded_for(out).to_dict(),
                       "dataset": store.provenance.get("dataset"),
                       "dataset_fingerprint": store.provenance.get("dataset_fingerprint"),
                       "vocabulary": vocabulary, "candidates": len(candidates), "prompt": prompt, **how},
    }
    return result, options, insight_lines


def _ranking(entry: dict, candidates: list[Candidate], top: int) -> dict:
    best = entry["order"][:top]
    return {"flagged": entry["flagged"], "rest": entry["rest"],
            "ranked": [{"word": candidates[i].word, "score": round(float(entry["score"][i]), 6),
                        "flagged_similarity": round(float(entry["flagged_similarity"][i]), 6),
                        "rest_similarity": round(float(entry["rest_similarity"][i]), 6)} for i in best]}
