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


def _load(path: str | Path):
    import yaml

    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=unique_key_loader())
    except OSError as error:
        raise GcctlError(f"cannot read {path} ({error.strerror}); pass an existing YAML file") from None
    except UnicodeDecodeError as error:
        raise GcctlError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as error:
        raise GcctlError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file") from None


def _section(document, key: str):
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
    node = _section(_load(path), key)
    if node is None:
        parent = _section(_load(path), key.rpartition(".")[0]) if "." in key else _load(path)
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
    return {name: _checked(key, mapping, command)}


def _checked(key: str, mapping: dict, command, name: str | None = None) -> dict:
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


# Which sections of params.yaml are option mappings of which command, as dvc.yaml hands them over.
_RUN_SECTIONS = {
    "pretrain.runs": ("pretrain",),
    "fetch.runs": ("models", "fetch"),
    "train.runs": ("train",),
    "train.pseudo_runs": ("train",),
    "finetune.runs": ("finetune",),
    "datasets": ("data", "table"),
}
_SINGLE_SECTIONS = {"pseudo_label": ("pseudo-label",), "transfer": ("transfer",)}


def _command(root, ctx, names: tuple[str, ...]):
    command = root
    for name in names:
        command = command.get_command(ctx, name)
    return command


# The outputs dvc.yaml names after a run (a section's key; section None: stage transfer_zeroshot's fixed name):
# two names of one family are one folder, which DVC refuses (and the second stage would write over the first).
_OUTPUT_FAMILIES = {
    "pipeline/models/NAME": (("pretrain.runs", "{}"), ("fetch.runs", "{}")),
    "pipeline/runs/DATASET/NAME": (("train.runs", "{}"), ("train.pseudo_runs", "{}")),
    "pipeline/finetuned/DATASET/NAME": (("finetune.runs", "{}"), ("finetune.runs", "{}-wise")),
    "pipeline/transfer/NAME": ((None, "zeroshot"), ("finetune.runs", "{}"), ("finetune.runs", "{}-wise")),
}
# Lists a stage is repeated over (foreach, matrix): an item given twice is two stages writing one output.
_STAGE_LISTS = ("train.datasets", "finetune.seeds")


def _parsed(path: Path, key: str, defaults: dict, command, ctx) -> dict:
    """A run's values as the command receives them: each read by its option's own parser, as click reads the
    values `--config` hands over (`epochs: abc` is refused here as `train` would refuse it, with exit 2), then
    the command's own check of them (`check_options`, e.g. a method's settings through its config registry)."""
    try:  # typer >= 0.25 carries its own copy of click
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException

    command_ctx = command.context_class(command, parent=ctx, info_name=command.name)
    parameters = {parameter.name: parameter for parameter in command.params}
    values = {}
    try:
        for name, value in defaults.items():
            values[name] = parameters[name].process_value(command_ctx, value)
        check = getattr(command.callback, "check_options", None)
        if check is not None:
            check(values)
    except ClickException as error:
        raise GcctlError(f"{path}: {key}: {error.format_message().rstrip('.')}; fix the value") from None
    except GcctlError as error:
        raise GcctlError(f"{path}: {key}: {error}") from None
    return values


def _check_outputs(path: Path, document) -> None:
    """No two runs of params.yaml write one output, and no stage list names an item twice."""
    for family, members in _OUTPUT_FAMILIES.items():
        writers: dict[str, str] = {}
        for section, pattern in members:
            names = [None] if section is None else list(_section(document, section) or {})
            for name in names:
                output = pattern.format(name)
                writer = ("dvc.yaml's transfer_zeroshot" if section is None else f"{section}.{name}" if pattern == "{}"
                          else f"{section}.{name} (as {output})")
                if output in writers and writers[output] != writer:
                    raise GcctlError(f"{path}: {writers[output]} and {writer} both write {family.replace('NAME', output)}; "
                                     "rename one (DVC refuses two stages with one output)")
                writers[output] = writer
    for key in _STAGE_LISTS:
        items = _section(document, key) or []
        repeated = sorted({str(item) for item in items if items.count(item) > 1}) if isinstance(items, list) else []
        if repeated:
            raise GcctlError(f"{path}: {key} lists {repeated[0]} twice; give each once (each is a stage's own output)")


def check_params(path: Path, root_command, ctx) -> dict:
    """Check a params.yaml before `dvc repro`: no key repeated in a mapping; every run's options exist for its
    command, and their values pass the command's own parsers and checks; no two runs write one output; every
    dataset a stage names is declared under `datasets:`. The first problem is a user error; returns what was
    checked."""
    document = _load(path)
    if not isinstance(document, dict):
        raise GcctlError(f"{path} is not a mapping of sections (train:, datasets: ...); fix its shape")
    checked = 0
    for section, command_path in {**_RUN_SECTIONS, **_SINGLE_SECTIONS}.items():
        node = _section(document, section)
        if node is None:
            continue
        if not isinstance(node, dict):
            raise GcctlError(f"{path}: {section} is not a mapping (of named runs or options); fix its shape")
        command = _command(root_command, ctx, command_path)
        runs = {section: node} if section in _SINGLE_SECTIONS else {f"{section}.{name}": run for name, run in node.items()}
        for key, run in runs.items():
            if not isinstance(run, dict):
                raise GcctlError(f"{path}: {key} is not a mapping of `gcctl {' '.join(command_path)}` options")
            _parsed(path, key, _checked(key, run, command, " ".join(command_path)), command, ctx)
            checked += 1
    _check_outputs(path, document)
    declared = set(_section(document, "datasets") or {})
    listed = _section(document, "train.datasets") or []
    if not isinstance(listed, list):
        raise GcctlError(f"{path}: train.datasets is not a list of dataset names, e.g. [waterbirds]")
    named = [("train.datasets", name) for name in listed]
    if _section(document, "finetune.dataset") is not None:
        named.append(("finetune.dataset", _section(document, "finetune.dataset")))
    named += [("transfer.target", Path(spec.partition("=")[2].partition("@")[0]).stem)
              for spec in _section(document, "transfer.target") or []]
    for key, name in named:
        if name not in declared:
            raise GcctlError(f"{path}: {key} names dataset '{name}', which is not declared under datasets: "
                             f"({', '.join(sorted(declared)) or 'none'}); declare it or fix the name")
    return {"params": str(path), "runs_checked": checked, "datasets": sorted(declared)}

