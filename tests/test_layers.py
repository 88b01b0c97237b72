"""The house by layer: no lower layer imports a higher one, no import circle, and every DVC stage depends on
all the gcctl code its command runs (and on nothing the layering keeps apart from it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gcctl.cli.code import PACKAGE, PACKAGE_DATA, closure, command_files, imports_of, lazy_owners, module_file

REPO = PACKAGE.parent
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
        clashes = sorted(name for name in lazy_owners(init) if module_file(f"{_dotted(init.parent)}.{name}"))
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


def _deps(name: str) -> list[str]:
    stage = _stages()[name]
    return stage.get("do", stage).get("deps", [])


def _covers(deps: list[str], path: Path) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


def command_module(cmd: str) -> str:
    """The CLI module whose command a stage's `cmd` runs (`gcctl [--options] GROUP... COMMAND ...`)."""
    from gcctl import cli

    key = cli.command_key(cmd.split()[1:])
    assert cmd.startswith("gcctl ") and key is not None, f"no gcctl command in {cmd!r}"
    return cli.COMMAND_MODULES[key]


def _stage_code(name: str) -> list[Path]:
    return command_files(command_module(_stages()[name].get("do", _stages()[name])["cmd"]))


def test_the_code_stage_depends_on_the_whole_package_and_writes_every_digest():
    from gcctl import cli

    assert _deps("code") == ["gcctl"]
    assert _stages()["code"]["outs"] == ["pipeline/code"]
    assert command_module(_stages()["code"]["cmd"]) == "code" and set(cli.COMMAND_MODULES.values()) >= {"code", "train"}


@pytest.mark.parametrize("name", sorted(set(_stages()) - {"code"}))
def test_each_stage_depends_on_its_commands_code_through_its_digest(name):
    """No stage lists gcctl files itself: its command's digest (pipeline/code/<module>.json, which stage `code`
    writes) stands for them, so dvc.lock holds each command's files once."""
    deps = _deps(name)
    module = command_module(_stages()[name].get("do", _stages()[name])["cmd"])
    assert f"pipeline/code/{module}.json" in deps, f"stage {name} runs gcctl.cli.{module} but does not depend on its digest"
    assert not [dep for dep in deps if dep.startswith("gcctl")], f"stage {name} lists gcctl files; its digest covers them"


def test_a_digest_names_the_files_its_command_loads_and_changes_with_them(tmp_path, monkeypatch):
    from gcctl.cli import code

    train = {path.relative_to(REPO).as_posix() for path in command_files("train")}
    assert {"gcctl/cli/train.py", "gcctl/methods/coop.py", "gcctl/store/format.py", "gcctl/clip/configs"} <= train
    assert not {"gcctl/cli/finetune.py", "gcctl/finetune/train.py", "gcctl/__init__.py"} & train
    assert "gcctl/discovery/general.txt" in {p.relative_to(REPO).as_posix() for p in command_files("discover")}
    before = code.command_digest("train")
    assert set(before["files"]) == train and before["command_module"] == "train"
    real = code._digest
    monkeypatch.setattr(code, "_digest", lambda path, root: real(path, root) + ("!" if path.name == "coop.py" else ""))
    after = code.command_digest("train")
    assert [name for name in train if before["files"][name] != after["files"][name]] == ["gcctl/methods/coop.py"]
    assert "gcctl/methods/coop.py" not in code.command_digest("synth")["files"]  # synth's digest stays


def test_the_code_command_digests_the_copy_it_is_given(tmp_path):
    """What DVC hashes (the project's gcctl/ folder) is what the digests read, whichever copy is installed."""
    import shutil

    from typer.testing import CliRunner

    from gcctl import cli

    cli.register_all()
    copy = tmp_path / "project/gcctl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def digests() -> dict[str, bytes]:
        result = CliRunner().invoke(cli.app, ["code", "--package", str(copy), "--out", str(tmp_path / "code")])
        assert result.exit_code == 0, result.output
        return {path.stem: path.read_bytes() for path in (tmp_path / "code").iterdir()}

    first = digests()
    assert sorted(first) == sorted(set(cli.COMMAND_MODULES.values()))
    assert digests() == first  # the same bytes: dvc.lock stays
    with open(copy / "methods/coop.py", "a") as handle:
        handle.write("# a change\n")
    changed = {name for name, text in digests().items() if text != first[name]}
    assert {"train", "evaluate", "discover"} <= changed and not changed & {"synth", "data", "pretrain", "extract", "finetune"}
    result = CliRunner().invoke(cli.app, ["code", "--package", str(tmp_path), "--out", str(tmp_path / "code")])
    assert "not a gcctl source folder" in str(result.exception)  # main() prints it as one error line


@pytest.mark.parametrize("edited, stages", [
    ("gcctl/finetune/train.py", ("pseudo_label", "train", "fit", "train_pseudo", "evaluate", "report")),
    ("gcctl/evaluation/transfer.py", ("pretrain", "extract", "train", "fit", "train_pseudo", "evaluate")),
    ("gcctl/methods/coop.py", ("synth", "pretrain", "extract", "pseudo_label", "finetune", "transfer")),
    ("gcctl/methods/prompts.py", ("pretrain", "extract")),
    ("gcctl/pseudolabel/labeling.py", ("pretrain", "extract", "train", "finetune")),
])
def test_an_edit_reruns_only_what_its_layer_feeds(edited, stages):
    """An edit in fine-tuning reruns no feature method; one in CoOp reruns no pretraining or extraction."""
    rerun = [name for name in stages if REPO / edited in _stage_code(name)]
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
