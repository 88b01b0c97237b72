"""The house by layer: no lower layer imports a higher one, no import circle, and every DVC stage depends on
all the gcctl code its command runs (and on nothing the layering keeps apart from it)."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gcctl"
# Lower first; a module may import its own package and any lower layer. `gcctl/__init__.py` (the public API,
# loaded lazily) and `gcctl/__main__.py` stand above everything.
LAYERS = (
    ("errors", "settings"),
    ("runtime", "files", "curves", "distributed"),
    ("datasets",),
    ("synth", "clip", "metrics"),
    ("store",),
    ("pseudolabel",),
    ("methods",),
    ("evaluation", "discovery"),
    ("finetune",),
    ("report", "html"),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
CLI_ENTRY = PACKAGE / "cli" / "__init__.py"
# Package data and the module that reads it: a stage that runs the module depends on the data too.
PACKAGE_DATA = {
    "gcctl/clip/registry.py": "gcctl/clip/configs",
    "gcctl/datasets/imagenet.py": "gcctl/datasets/imagenet_classes.tsv",
    "gcctl/discovery/__init__.py": "gcctl/discovery/general.txt",
    "gcctl/finetune/pools/__init__.py": "gcctl/finetune/pools",
}


def _module_file(dotted: str) -> Path | None:
    path = REPO.joinpath(*dotted.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@lru_cache(maxsize=None)
def _lazy_owners(path: Path | None) -> dict[str, str]:
    """A package's lazily exported names and their modules (its `_LAZY`, see `gcctl.runtime.lazy_exports`)."""
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "_LAZY" for target in node.targets):
            return ast.literal_eval(node.value)
    return {}


@lru_cache(maxsize=None)
def imports_of(path: Path, module_level_only: bool = False) -> frozenset[Path]:
    """The gcctl module files `path` imports (inside functions too, unless `module_level_only`), a package's
    `__init__` standing for `from gcctl.pkg import name` unless `name` is a submodule."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.If):  # TYPE_CHECKING blocks import nothing at run time
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gcctl":
            for alias in node.names:
                owner = _lazy_owners(_module_file(node.module)).get(alias.name)
                found.add(_module_file(f"{node.module}.{owner or alias.name}") or _module_file(node.module))
        elif isinstance(node, ast.Import):
            found.update(_module_file(alias.name) for alias in node.names if alias.name.split(".")[0] == "gcctl")
    found.discard(None)
    return frozenset(found)


def closure(path: Path) -> set[Path]:
    """Every gcctl module file running `path` can load: its imports, theirs, and the packages they sit in."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        targets = imports_of(current)
        if current == CLI_ENTRY:  # it registers every command module; a stage runs one of them
            targets = {target for target in targets if target.parent != CLI_ENTRY.parent or target.name == "config.py"}
        todo.extend(targets)
        for parent in current.parents:  # importing gcctl.a.b runs gcctl/a/__init__.py first
            if parent == PACKAGE or PACKAGE not in parent.parents:
                break
            todo.append(parent / "__init__.py")
    return seen


def _layer(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] not in ("__init__.py", "__main__.py"))


def test_every_data_file_has_a_reader_named():
    data = [path for path in PACKAGE.rglob("*") if path.is_file() and path.suffix not in (".py", ".pyc")]
    unnamed = sorted(str(path.relative_to(REPO)) for path in data if not _covers(list(PACKAGE_DATA.values()), path))
    assert not unnamed, f"name the module that reads {unnamed} in PACKAGE_DATA"


def test_no_lazily_exported_name_is_also_a_submodule():
    """Once a submodule is imported its package attribute is the module, and would hide an export of that name."""
    for init in PACKAGE.rglob("__init__.py"):
        clashes = sorted(name for name in _lazy_owners(init) if _module_file(f"{_dotted(init.parent)}.{name}"))
        assert not clashes, f"{init.relative_to(REPO)} exports {clashes}, which are also its submodules"


def _dotted(folder: Path) -> str:
    return ".".join(folder.relative_to(REPO).parts)


def test_every_module_belongs_to_a_layer():
    assert {_layer(path) for path in _modules()} <= set(RANK)


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(REPO)))
def test_no_module_imports_a_higher_layer(path):
    higher = sorted(str(target.relative_to(REPO)) for target in imports_of(path)
                    if _layer(target) in RANK and RANK[_layer(target)] > RANK[_layer(path)])
    assert not higher, f"{path.relative_to(REPO)} imports the higher layer(s) {higher}"


def test_no_import_circle():
    """Among module-level imports (what runs at import time): a circle would work only by import order."""
    state: dict[Path, str] = {}

    def visit(path: Path, trail: list[Path]) -> None:
        state[path] = "open"
        for target in imports_of(path, module_level_only=True):
            if target == path or target.name == "__init__.py" and path.parent == target.parent:
                continue  # a package's own init, run before its modules anyway
            if state.get(target) == "open":
                circle = [str(p.relative_to(REPO)) for p in trail[trail.index(target):]] if target in trail else []
                pytest.fail(f"import circle: {' -> '.join(circle + [str(target.relative_to(REPO))])}")
            if target not in state:
                visit(target, trail + [target])
        state[path] = "done"

    for module in _modules():
        if module not in state:
            visit(module, [module])


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> list[str]:
    spec = stage.get("do", stage)
    return [dep for dep in spec.get("deps", []) if dep.startswith("gcctl/")]


def _covers(deps: list[str], path: Path) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


def command_module(cmd: str) -> Path:
    """The file of the CLI module whose command a stage's `cmd` runs (`gcctl [--options] GROUP... COMMAND ...`)."""
    import typer

    from gcctl import cli

    cli.register_all()
    command = typer.main.get_command(cli.app)
    words = iter(cmd.split()[1:])
    for word in words:
        if word == "--config":
            next(words)
        elif not word.startswith("-"):
            command = command.commands[word]
            if not hasattr(command, "commands"):
                return _module_file(command.callback.__module__)
    raise AssertionError(f"no gcctl command in {cmd!r}")


@pytest.mark.parametrize("name", sorted(_stages()))
def test_each_stage_depends_on_the_code_its_command_runs(name):
    stage = _stages()[name]
    deps = _code_deps(stage)
    needed = {path for path in closure(command_module(stage.get("do", stage)["cmd"])) if path != PACKAGE / "__init__.py"}
    needed |= {REPO / PACKAGE_DATA[key] for key in PACKAGE_DATA if REPO / key in needed}
    missing = sorted(str(path.relative_to(REPO)) for path in needed if not _covers(deps, path))
    assert not missing, f"stage {name} runs {missing} but does not depend on them"


@pytest.mark.parametrize("edited, stages", [
    ("gcctl/finetune/train.py", ("pseudo_label", "train", "fit", "train_pseudo", "evaluate", "report")),
    ("gcctl/evaluation/transfer.py", ("pretrain", "extract", "train", "fit", "train_pseudo", "evaluate")),
    ("gcctl/methods/coop.py", ("synth", "pretrain", "extract", "pseudo_label", "finetune", "transfer")),
    ("gcctl/methods/prompts.py", ("pretrain", "extract")),
    ("gcctl/pseudolabel/labeling.py", ("pretrain", "extract", "train", "finetune")),
])
def test_an_edit_reruns_only_what_its_layer_feeds(edited, stages):
    """An edit in fine-tuning reruns no feature method; one in CoOp reruns no pretraining or extraction."""
    rerun = [name for name in stages if _covers(_code_deps(_stages()[name]), REPO / edited)]
    assert not rerun, f"editing {edited} would rerun {rerun}"


def test_every_command_is_found_by_the_words_that_invoke_it():
    """`gcctl.cli.COMMAND_MODULES` names the module of every command, so a process imports only the one it runs."""
    import typer

    from gcctl import cli

    cli.register_all()
    root = typer.main.get_command(cli.app)
    invoked = {f"{name} {sub}" if sub else name: command
               for name, group in root.commands.items()
               for sub, command in (getattr(group, "commands", None) or {None: group}).items()}
    assert {"models fetch", "params check"} <= set(invoked)
    for words, command in invoked.items():
        key = words if words in cli.COMMAND_MODULES else words.split()[0]
        assert command.callback.__module__ == f"gcctl.cli.{cli.COMMAND_MODULES[key]}", words
    assert cli._command_words(["--quiet", "--config", "p.yaml:train.runs.x", "train", "--features", "f.h5"]) == ["train"]
    assert cli._command_words(["data", "table", "--root", "r"]) == ["data", "table"]
