"""Prompt templates as text: the default class caption, the spurious-attribute prompts (`--attribute-prompt`)
and the check every template passes. No torch here, so the command line can show and check templates without
loading a model."""

from __future__ import annotations

import string
from typing import Mapping, Sequence

from gcctl.errors import GcctlError

DEFAULT_CAPTION = "a photo of a {}."  # the class prompt of every zero-shot classifier, and FT's caption
# CoOp's initial context: the default caption's words before the class name ("a photo of a").
DEFAULT_CONTEXT = DEFAULT_CAPTION.split("{}")[0].strip()


def check_template(template: str, where: str, slot: str = "the class name") -> None:
    """A prompt template takes exactly one `{}`, filled with `slot`, and no other braces (`str.format` would
    fail on them, or leave a second `{}` unfilled)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise GcctlError(f"template '{template}' {where} is malformed ({error}); use {{}} once and no other braces") from None
    if fields != [""]:
        count = "no {}" if not fields else f"{{{fields[0]}}}" if len(fields) == 1 else f"{len(fields)} fields"
        raise GcctlError(f"template '{template}' {where} has {count}; it needs exactly one {{}} for {slot}, "
                         "e.g. 'a photo of a {}.'")


# Named template ensembles a `--template` may give instead of a template: OpenAI's 80 ImageNet prompts (CLIP's
# zero-shot notebook; what the StarFT authors evaluate ImageNet and its shifts with), read from open_clip.
TEMPLATE_SETS = ("openai-imagenet",)


def expand_templates(specs: Sequence[str], where: str = "in --template") -> list[str]:
    """`specs` with each named set replaced by its templates, every template checked, each kept once in order."""
    templates: list[str] = []
    for spec in specs:
        if spec in TEMPLATE_SETS:
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            templates += [make("{}") for make in OPENAI_IMAGENET_TEMPLATES]
        else:
            check_template(spec, f"{where} (or a named set: {', '.join(TEMPLATE_SETS)})")
            templates.append(spec)
    return list(dict.fromkeys(templates))


# The prompt naming one value of a spurious attribute, per class (zeroshot-attr, the debiasing methods).
DEFAULT_ATTRIBUTE_PROMPT = "a photo of a {class} on {value}."


def fill_prompt(text: str, **words: str) -> str:
    # Plain replacement rather than str.format: prompts may contain other braces.
    for key, word in words.items():
        text = text.replace("{" + key + "}", word)
    return text


def _value_index(attribute: str, value: str, names: list[str]) -> int:
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise GcctlError(f"--attribute-prompt: attribute '{attribute}' has no value '{value}'; its values are {', '.join(names)}")


def attribute_prompts(specs: Sequence[str], attribute_values: dict[str, list[str]],
                      defaults: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """For each attribute, in the store's order, one prompt template per value ({class} still to fill in): from
    `specs` (`--attribute-prompt`), else the dataset's own template for the attribute (`defaults`, its vocabulary's
    `attribute_prompts`), else DEFAULT_ATTRIBUTE_PROMPT."""
    templates: dict[str, str] = {}
    texts: dict[str, dict[int, str]] = {name: {} for name in attribute_values}
    for spec in specs:
        key, sep, text = spec.partition("=")
        attribute, _, value = key.strip().partition(":")
        if not sep or not text.strip():
            raise GcctlError(f"--attribute-prompt '{spec}' is not ATTR=TEMPLATE or ATTR:VALUE=TEXT, e.g. 'place=a photo of a {{class}} on {{value}}.'")
        if attribute not in attribute_values:
            raise GcctlError(f"--attribute-prompt '{spec}': the store has no attribute '{attribute}'; it has {', '.join(attribute_values)}")
        if value:
            texts[attribute][_value_index(attribute, value.strip(), attribute_values[attribute])] = text.strip()
        elif "{value}" not in text:
            raise GcctlError(f"--attribute-prompt '{spec}': a template for every value needs {{value}}; or give ATTR:VALUE=TEXT per value")
        else:
            templates[attribute] = text.strip()
    prompts = {}
    for attribute, names in attribute_values.items():
        template = templates.get(attribute, (defaults or {}).get(attribute, DEFAULT_ATTRIBUTE_PROMPT))
        prompts[attribute] = [texts[attribute].get(i, fill_prompt(template, value=name)) for i, name in enumerate(names)]
    return prompts
