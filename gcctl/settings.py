"""Config fields that say how they read as command-line options: one place for a setting's default, its help,
its flag, its allowed values and its bounds. The CLI generates its options from them (`gcctl.cli.generated`),
and `check_settings` validates a config with the same words whatever built it (the CLI, params.yaml, Python).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from gcctl.errors import GcctlError

_MISSING = dataclasses.MISSING


def setting(default: Any = _MISSING, *, help: str, flag: str | None = None, choices: Sequence[str] | None = None,
            positive: bool = False, csv: bool = False,
            default_factory: Any = _MISSING) -> Any:
    """A dataclass field with its option: `flag` (default `--name-with-dashes`; `--on/--off` for a boolean pair),
    `choices` (the allowed values), `positive` (a bound), `csv` (a list given as one comma-separated
    value, e.g. --class-names a,b)."""
    metadata = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "positive": positive,
                "csv": csv}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(base: type, name: str, default: Any) -> Any:
    """The setting `name` of the config `base` with another default: a subclass keeps the option's help and checks."""
    field = next(field for field in dataclasses.fields(base) if field.name == name)
    return dataclasses.field(default=default, metadata=field.metadata)


def described(field: dataclasses.Field) -> bool:
    return "help" in field.metadata


def flag_of(field: dataclasses.Field) -> str:
    """The option's first flag: `--lambda` for a field `reg_lambda` declared so, else `--name-with-dashes`."""
    declared = field.metadata.get("flag")
    return declared.split("/")[0] if declared else "--" + field.name.replace("_", "-")


def check_value(field: dataclasses.Field, value: Any) -> None:
    """Refuse a value outside the field's choices or bounds, naming its option."""
    meta = field.metadata
    if not described(field):
        return
    if meta["choices"] and value not in meta["choices"]:
        raise GcctlError(f"{flag_of(field)} '{value}' is unknown; choose one of {', '.join(meta['choices'])}")
    if meta["positive"] and not value > 0:
        raise GcctlError(f"{flag_of(field)} must be positive, got {value}")


def check_settings(config: Any) -> None:
    """`check_value` for every field of a config instance."""
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name))
