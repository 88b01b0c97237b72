"""`gcctl --config FILE:KEY`: a command's option values from one mapping of a YAML file.

The DVC stages keep each named run as a mapping in params.yaml (option name: value) and hand it to the
command this way, so dvc.yaml never spells a run's options out and each stage depends on its own run's
parameters only. Keys are option names with `-` or `_` (`batch_size` and `batch-size` are the same).
"""

from __future__ import annotations

import functools
from pathlib import Path

from gcctl.errors import GcctlError


@functools.lru_cache(maxsize=None)
def unique_key_loader():
    """A yaml SafeLoader that refuses a mapping naming a key twice: PyYAML keeps the last one silently, DVC refuses
    the whole file. A `<<` merge may still be overridden, as YAML allows."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: SafeLoader names it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key '{key}' appears twice in one mapping, line {key_node.start_mark.line + 1}",
                        key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(path: str | Path):
    import yaml

    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=unique_key_loader())
    except OSError as error:
        raise GcctlError(f"cannot read {path} ({error.strerror}); pass an existing YAML file") from None
    except UnicodeDecodeError as error:
        raise GcctlError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as error:
        raise GcctlError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from None


def value_at(document, key: str):
    """The value at dotted `key`, or None where the document has none."""
    node = document
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def read_mapping(spec: str) -> tuple[str, dict]:
    """The mapping at KEY (dotted) of the YAML file FILE, from `FILE:KEY`."""
    path, _, key = spec.rpartition(":")
    if not path or not key:
        raise GcctlError(f"--config '{spec}' is not FILE:KEY, e.g. params.yaml:train.runs.groupcoop")
    node = value_at(load_yaml(path), key)
    if node is None:
        parent = value_at(load_yaml(path), key.rpartition(".")[0]) if "." in key else load_yaml(path)
        known = ", ".join(map(str, parent)) if isinstance(parent, dict) else "nothing"
        raise GcctlError(f"--config: {path} has no '{key}' (known there: {known}); declare it or fix the name")
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
    return {name: checked_options(key, mapping, command)}


def checked_options(key: str, mapping: dict, command, name: str | None = None) -> dict:
    """`mapping` keyed by `command`'s parameter names; an unknown option is a user error."""
    by_flag = {flag.lstrip("-").replace("-", "_"): parameter
               for parameter in command.params for flag in getattr(parameter, "opts", []) if flag.startswith("--")}
    defaults = {}
    for option, value in mapping.items():
        parameter = by_flag.get(str(option).replace("-", "_"))
        if parameter is None:
            known = ", ".join(sorted(flag.replace("_", "-") for flag in by_flag if flag != "help"))
            raise GcctlError(f"{key}: '{option}' is not an option of gcctl {name or command.name}; it takes: {known}")
        repeatable = getattr(parameter, "multiple", False)
        defaults[parameter.name] = [value] if repeatable and not isinstance(value, list) else value
    return defaults
