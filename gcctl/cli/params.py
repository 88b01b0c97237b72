"""`gcctl params check`: the pipeline's params.yaml checked before `dvc repro`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gcctl.cli.config import checked_options, load_yaml, value_at
from gcctl.cli.output import print_summary
from gcctl.errors import GcctlError

app = typer.Typer(help="Check the pipeline's params.yaml before `dvc repro`.", no_args_is_help=True)


@app.command()
def check(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The params file dvc.yaml reads.")] = Path("params.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
) -> None:
    """Check what DVC or a stage's command would refuse: a key repeated in a mapping, a run's option its command
    does not have or a value its parser or checks refuse (e.g. epochs: abc), two runs writing one output (a name in
    both train.runs and train.pseudo_runs), a method that trains among train.fits, and a dataset a stage names that `datasets:` does not declare; the
    first problem is one line naming it and the fix.

    Example: gcctl params check params.yaml
    """
    from gcctl import cli

    cli.register_all()  # every command whose options a run may name
    print_summary(check_params(path, typer.main.get_command(cli.app), ctx.find_root()), "params", as_json)


# Which sections of params.yaml are option mappings of which command, as dvc.yaml hands them over.
_RUN_SECTIONS = {
    "pretrain.runs": ("pretrain",),
    "fetch.runs": ("models", "fetch"),
    "train.runs": ("train",),
    "train.pseudo_runs": ("train",),
    "train.fits": ("train",),
    "label_free.runs": ("train",),
    "budget.runs": ("train",),
    "budget.pseudo_runs": ("train",),
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
    # label_free's runs write pipeline/metrics-label-free/, reported in one table with these (report_label_free)
    "pipeline/metrics/DATASET/NAME.json": (("train.runs", "{}"), ("train.pseudo_runs", "{}"), ("train.fits", "{}"),
                                           ("label_free.runs", "{}")),
    "pipeline/finetuned/DATASET/NAME": (("finetune.runs", "{}"), ("finetune.runs", "{}-wise")),
    "pipeline/transfer/NAME": ((None, "zeroshot"), ("finetune.runs", "{}"), ("finetune.runs", "{}-wise")),
}
# Lists a stage is repeated over (foreach, matrix): an item given twice is two stages writing one output.
_STAGE_LISTS = ("train.datasets", "finetune.seeds", "sweep.datasets", "budget.datasets", "budget.fraction")


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
            names = [None] if section is None else list(value_at(document, section) or {})
            for name in names:
                output = pattern.format(name)
                writer = ("dvc.yaml's transfer_zeroshot" if section is None else f"{section}.{name}" if pattern == "{}"
                          else f"{section}.{name} (as {output})")
                if output in writers and writers[output] != writer:
                    raise GcctlError(f"{path}: {writers[output]} and {writer} both write {family.replace('NAME', output)}; "
                                     "rename one (DVC refuses two stages with one output)")
                writers[output] = writer
    for key in _STAGE_LISTS:
        items = value_at(document, key) or []
        repeated = sorted({str(item) for item in items if items.count(item) > 1}) if isinstance(items, list) else []
        if repeated:
            raise GcctlError(f"{path}: {key} lists {repeated[0]} twice; give each once (each is a stage's own output)")


def _check_fits(path: Path, document) -> None:
    """train.fits share one stage per dataset, so an edit to one refits them all: only training-free methods go there."""
    from gcctl.methods import get_method

    for name, run in (value_at(document, "train.fits") or {}).items():
        if get_method(run["method"]).trains:
            raise GcctlError(f"{path}: train.fits.{name}: {run['method']} trains; move it to train.runs, where each "
                             "trained run is a stage of its own")


def _check_discover(path: Path, document) -> None:
    """The discover stage reads the test predictions of one evaluated run: a named run of train (runs or fits)."""
    run = value_at(document, "discover.run")
    if run is None:
        return
    runs = {*(value_at(document, "train.runs") or {}), *(value_at(document, "train.fits") or {})}
    if run not in runs:
        raise GcctlError(f"{path}: discover.run '{run}' is not a run of train.runs or train.fits "
                         f"({', '.join(sorted(runs)) or 'none'}); name one")


def check_params(path: Path, root_command, ctx) -> dict:
    """Check a params.yaml before `dvc repro`: no key repeated in a mapping; every run's options exist for its
    command, and their values pass the command's own parsers and checks; no two runs write one output; every
    dataset a stage names is declared under `datasets:`. The first problem is a user error; returns what was
    checked."""
    document = load_yaml(path)
    if not isinstance(document, dict):
        raise GcctlError(f"{path} is not a mapping of sections (train:, datasets: ...); fix its shape")
    checked = 0
    for section, command_path in {**_RUN_SECTIONS, **_SINGLE_SECTIONS}.items():
        node = value_at(document, section)
        if node is None:
            continue
        if not isinstance(node, dict):
            raise GcctlError(f"{path}: {section} is not a mapping (of named runs or options); fix its shape")
        command = _command(root_command, ctx, command_path)
        runs = {section: node} if section in _SINGLE_SECTIONS else {f"{section}.{name}": run for name, run in node.items()}
        for key, run in runs.items():
            if not isinstance(run, dict):
                raise GcctlError(f"{path}: {key} is not a mapping of `gcctl {' '.join(command_path)}` options")
            _parsed(path, key, checked_options(key, run, command, " ".join(command_path)), command, ctx)
            checked += 1
    _check_outputs(path, document)
    _check_fits(path, document)
    _check_discover(path, document)
    declared = set(value_at(document, "datasets") or {})
    listed = value_at(document, "train.datasets") or []
    if not isinstance(listed, list):
        raise GcctlError(f"{path}: train.datasets is not a list of dataset names, e.g. [waterbirds]")
    named = [("train.datasets", name) for name in listed]
    for key in ("sweep.datasets", "budget.datasets"):
        names = value_at(document, key) or []
        if not isinstance(names, list):
            raise GcctlError(f"{path}: {key} is not a list of dataset names, e.g. [waterbirds]")
        named += [(key, name) for name in names]
    if value_at(document, "finetune.dataset") is not None:
        named.append(("finetune.dataset", value_at(document, "finetune.dataset")))
    named += [("transfer.target", Path(spec.partition("=")[2].partition("@")[0]).stem)
              for spec in value_at(document, "transfer.target") or []]
    for key, name in named:
        if name not in declared:
            raise GcctlError(f"{path}: {key} names dataset '{name}', which is not declared under datasets: "
                             f"({', '.join(sorted(declared)) or 'none'}); declare it or fix the name")
    return {"params": str(path), "runs_checked": checked, "datasets": sorted(declared)}


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="params")
