"""`gcctl --config FILE:KEY`: a command's option values from one mapping of a YAML file.

The DVC stages keep each named run as a mapping in params.yaml (option name: value) and hand it to the
command this way, so dvc.yaml never spells a run's options out and each stage depends on its own run's
parameters only. Keys are option names with `-` or `_` (`batch_size` and `batch-size` are the same).
"""

from __future__ import annotations

from pathlib import Path

from gcctl.errors import GcctlError


def read_mapping(spec: str) -> tuple[str, dict]:
    """The mapping at KEY (dotted) of the YAML file FILE, from `FILE:KEY`."""
    import yaml

    path, _, key = spec.rpartition(":")
    if not path or not key:
        raise GcctlError(f"--config '{spec}' is not FILE:KEY, e.g. params.yaml:train.runs.groupcoop")
    try:
        document = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise GcctlError(f"--config: cannot read {path} ({error.strerror}); pass an existing YAML file") from None
    except yaml.YAMLError as error:
        raise GcctlError(f"--config: {path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from None
    node = document
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(map(str, node)) if isinstance(node, dict) else "nothing"
            raise GcctlError(f"--config: {path} has no '{key}' (no '{part}'; known there: {known}); declare it or fix the name")
        node = node[part]
    if not isinstance(node, dict):
        raise GcctlError(f"--config: {key} in {path} is not a mapping of option names to values")
    return key, node


def option_defaults(spec: str, ctx) -> dict:
    """The root context's default map for the command about to run, checked against its options."""
    key, mapping = read_mapping(spec)
    name = ctx.invoked_subcommand
    command = ctx.command.get_command(ctx, name)
    if command is None or hasattr(command, "get_command"):
        raise GcctlError(f"--config gives options to one command (e.g. `gcctl --config {spec} train`), not to '{name}'")
    return {name: _checked(key, mapping, command)}


def _checked(key: str, mapping: dict, command) -> dict:
    """`mapping` keyed by `command`'s parameter names; an unknown option is a user error."""
    by_flag = {flag.lstrip("-").replace("-", "_"): parameter
               for parameter in command.params for flag in getattr(parameter, "opts", []) if flag.startswith("--")}
    defaults = {}
    for name, value in mapping.items():
        parameter = by_flag.get(str(name).replace("-", "_"))
        if parameter is None:
            known = ", ".join(sorted(flag.replace("_", "-") for flag in by_flag if flag != "help"))
            raise GcctlError(f"{key}: '{name}' is not an option of gcctl {command.name}; it takes: {known}")
        repeatable = getattr(parameter, "multiple", False)
        defaults[parameter.name] = [value] if repeatable and not isinstance(value, list) else value
    return defaults
