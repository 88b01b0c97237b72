"""Options generated from the config dataclasses they fill (`gcctl.settings`): each default, help text, flag and
check is written once, on the config field, and the command line follows from it.

- `config_options(Config)`: a command takes one option per field of `Config`, with the field's default, and
  receives `config=Config(...)`.
- `method_options(settings)`: a command that trains any of several methods takes one option per setting any of
  them declares, unset by default (the method's own default applies, listed in the help), and receives
  `options={name: value}` of those given.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Annotated, Any, Callable, Optional, Union

import typer

from gcctl.settings import check_settings, flag_of


def _cli_type(annotation: Any, csv: bool) -> type:
    """The type Typer parses for a config field: lists become repeatable options (one comma-separated value with
    `csv`), an optional value its inner type."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) in (list, tuple):
        return str if csv else list[str]
    return annotation


def _declaration(field: dataclasses.Field, cli_type: type, unset_default: bool) -> str:
    declared = field.metadata.get("flag") or flag_of(field)
    if cli_type is bool and "/" not in declared and unset_default:
        declared += "/--no-" + declared[2:]  # an unset boolean needs both spellings
    return declared


def _parameter(field: dataclasses.Field, annotation: Any, default: Any, help_text: str) -> inspect.Parameter:
    cli_type = _cli_type(annotation, field.metadata.get("csv", False))
    option = typer.Option(_declaration(field, cli_type, default is None), help=help_text, show_default=True)
    typed = Optional[cli_type] if default is None else cli_type
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typed, option], default=default)


def _from_cli(field: dataclasses.Field, annotation: Any, value: Any) -> Any:
    """A parsed option value as the config field holds it."""
    if value is None:
        return None
    if field.metadata.get("csv"):
        return [part.strip() for part in value.split(",") if part.strip()]
    return tuple(value) if typing.get_origin(annotation) is tuple else value


def _field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        return list(value) if isinstance(value, tuple) else value
    return field.default


def replace_parameter(command: Callable, generated: list[inspect.Parameter], replaced: str,
                     convert: Callable[[dict], Any]) -> Callable:
    """`command` with its parameter `replaced` swapped for the `generated` ones, called with
    `replaced=convert(their values)` (also how `gcctl.cli.data.reads_dataset` puts the dataset options in)."""
    signature = inspect.signature(command, eval_str=True)  # typer needs real annotations, not strings
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == replaced:
            parameters += generated
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = [parameter.name for parameter in generated]

    @functools.wraps(command)
    def with_config(**values):
        converted = convert({name: values.pop(name) for name in names})
        return command(**values, **{replaced: converted})

    with_config.__signature__ = signature.replace(parameters=parameters)
    with_config.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return with_config


def config_options(config_type: type, parameter: str = "config") -> Callable[[Callable], Callable]:
    """Decorator: one option per described field of `config_type`, in place of the command's `parameter`.

    The command gains `check_options(values)`, what `gcctl params check` asks of a run: the config made from
    the parsed option values given (defaults for the rest) as the command makes it, with its settings' checks
    (`check_settings`) and the config's own `check()` where it has one."""
    hints = typing.get_type_hints(config_type)
    described = [field for field in dataclasses.fields(config_type) if "help" in field.metadata]

    def decorate(command: Callable) -> Callable:
        generated = [_parameter(field, hints[field.name], _field_default(field), field.metadata["help"]) for field in described]

        def convert(values: dict) -> Any:
            return config_type(**{field.name: _from_cli(field, hints[field.name], values[field.name]) for field in described})

        def check_options(values: dict) -> None:
            config = convert({field.name: values.get(field.name, _field_default(field)) for field in described})
            check_settings(config)
            if callable(getattr(config, "check", None)):
                config.check()

        decorated = replace_parameter(command, generated, parameter, convert)
        decorated.check_options = check_options
        return decorated

    return decorate


def _defaults_text(declared: list[tuple[str, dataclasses.Field]]) -> str:
    """`linear, dfr: 100; coop: 30`: which methods take a setting, and each one's default."""
    by_default: dict[str, list[str]] = {}
    for method, field in declared:
        value = _field_default(field)
        values = value if isinstance(value, list) else [] if value is None else [value]
        shown = ", ".join(f"'{item}'" if isinstance(item, str) else str(item) for item in values) or "none"
        by_default.setdefault(shown, []).append(method)
    return "; ".join(f"{', '.join(methods)}: {value}" for value, methods in by_default.items())


def method_options(settings: dict[str, list[tuple[str, dataclasses.Field]]], config_types: list[type],
                   parameter: str = "options", check: Callable[[dict, dict], None] | None = None) -> Callable[[Callable], Callable]:
    """Decorator: one unset option per setting of any method (`settings`: name -> the (method, field) pairs
    declaring it), in place of the command's `parameter`, which receives the given ones as a dict.

    With `check`, the command gains `check_options(values)` for `gcctl params check`: `check(values, options)`
    with the parsed option values given and the options dict they make."""
    hints: dict[str, Any] = {}
    for config_type in config_types:
        hints.update(typing.get_type_hints(config_type))
    fields = {name: declared[0][1] for name, declared in settings.items() if "help" in declared[0][1].metadata}

    def decorate(command: Callable) -> Callable:
        generated = [_parameter(field, hints[name], None, f"{field.metadata['help']} Defaults, by method: {_defaults_text(settings[name])}.")
                     for name, field in fields.items()]

        def convert(values: dict) -> dict:
            return {name: _from_cli(fields[name], hints[name], value) for name, value in values.items() if value is not None}

        decorated = replace_parameter(command, generated, parameter, convert)
        if check is not None:
            decorated.check_options = lambda values: check(values, convert({name: values.get(name) for name in fields}))
        return decorated

    return decorate
