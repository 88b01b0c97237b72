"""Prompt templates as text: the default class caption and the check every template passes. No torch here,
so the command line can show and check templates without loading a model."""

from __future__ import annotations

import string

from gcctl.errors import GcctlError

DEFAULT_CAPTION = "a photo of a {}."  # the class prompt of every zero-shot classifier, and FT's caption


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
