"""`gcctl code`: which gcctl files each command runs, as digests the DVC stages depend on.

A stage must rerun when the code its command runs changes, and only then. Listing every file a command imports
in every stage made dvc.lock mostly code hashes (80% of its 537 kB at 118 stages), and DVC parses and rewrites
the whole lock after each stage: about 5 s a stage on 2 cores. Instead one stage, `code`, depends on the package
and writes `<module>.json` per command module (every file the module's command can load and their sha256); each
stage depends on its command's file, which changes only when one of those files does.

What a command can load is read from the source (imports at any depth, a package's `__init__` before its modules,
a lazily exported name's module, the package data a module reads): the same walk tests/test_layers.py uses to
check the layering, so one function owns "the code a command runs".
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import typer

PACKAGE = Path(__file__).resolve().parents[1]
# Package data and the module that reads it: a command that runs the module depends on the data too.
PACKAGE_DATA = {
    "gcctl/clip/registry.py": "gcctl/clip/configs",
    "gcctl/datasets/imagenet.py": "gcctl/datasets/imagenet_classes.tsv",
    "gcctl/discovery/__init__.py": "gcctl/discovery/general.txt",
    "gcctl/finetune/pools/__init__.py": "gcctl/finetune/pools",
}


def module_file(dotted: str, package: Path = PACKAGE) -> Path | None:
    """The file of gcctl module `dotted` (a package's `__init__.py`) in the copy at `package`, or None."""
    path = package.parent.joinpath(*dotted.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


@lru_cache(maxsize=None)
def lazy_owners(path: Path | None) -> dict[str, str]:
    """A package's lazily exported names and their modules (its `_LAZY`, see `gcctl.runtime.lazy_exports`)."""
    if path is None or path.name != "__init__.py":
        return {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "_LAZY" for target in node.targets):
            return ast.literal_eval(node.value)
    return {}


@lru_cache(maxsize=None)
def imports_of(path: Path, module_level_only: bool = False, package: Path = PACKAGE) -> frozenset[Path]:
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
                owner = lazy_owners(module_file(node.module, package)).get(alias.name)
                found.add(module_file(f"{node.module}.{owner or alias.name}", package) or module_file(node.module, package))
        elif isinstance(node, ast.Import):
            found.update(module_file(alias.name, package) for alias in node.names if alias.name.split(".")[0] == "gcctl")
    found.discard(None)
    return frozenset(found)


def closure(path: Path, package: Path = PACKAGE) -> set[Path]:
    """Every gcctl module file running `path` can load: its imports, theirs, and the packages they sit in."""
    entry = package / "cli" / "__init__.py"
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        targets = imports_of(current, package=package)
        if current == entry:  # it registers every command module; a process runs one of them
            targets = {target for target in targets if target.parent != entry.parent or target.name == "config.py"}
        todo.extend(targets)
        for parent in current.parents:  # importing gcctl.a.b runs gcctl/a/__init__.py first
            if parent == package or package not in parent.parents:
                break
            todo.append(parent / "__init__.py")
    return seen


def command_files(module: str, package: Path = PACKAGE) -> list[Path]:
    """The files command module `gcctl.cli.<module>` runs: the code it can load (not `gcctl/__init__.py`, the
    lazy public API no command goes through) and the package data of those modules, files or folders."""
    code = closure(package / "cli" / f"{module}.py", package)
    code.discard(package / "__init__.py")
    data = {package.parent / folder for reader, folder in PACKAGE_DATA.items() if package.parent / reader in code}
    return sorted(code | data)


def _digest(path: Path, root: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
    hashed = hashlib.sha256()
    for file in files:
        hashed.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return hashed.hexdigest()


def command_digest(module: str, package: Path = PACKAGE, known: dict[Path, str] | None = None) -> dict:
    """`{"command_module": ..., "files": {relative path: sha256}}`: what a stage running the module depends on.
    `known` holds digests already taken (the command modules share most files), and gets the new ones."""
    root, known = package.parent, {} if known is None else known
    files = command_files(module, package)
    for path in files:
        if path not in known:
            known[path] = _digest(path, root)
    return {"command_module": module, "files": {path.relative_to(root).as_posix(): known[path] for path in files}}


def code(
    out: Annotated[Path, typer.Option("--out", help="Folder to write one <module>.json per command module into.")],
    package: Annotated[Path, typer.Option(
        "--package", help="The gcctl source folder to read (the pipeline's: the folder stage `code` depends on); "
        "default: the installed package.")] = PACKAGE,
) -> None:
    """Write, for every command module, the gcctl files its command runs and their sha256: what the pipeline's
    stages depend on instead of the files themselves (dvc.yaml's stage `code`).

    Example: gcctl code --out pipeline/code
    """
    from gcctl.cli import COMMAND_MODULES
    from gcctl.files import atomic_directory

    from gcctl.errors import GcctlError

    package = package.resolve()
    if not (package / "cli" / "__init__.py").is_file():
        raise GcctlError(f"--package {package}: not a gcctl source folder (no cli/__init__.py); name the folder gcctl/")
    known: dict[Path, str] = {}
    with atomic_directory(out) as folder:
        for module in sorted(set(COMMAND_MODULES.values())):
            text = json.dumps(command_digest(module, package, known), indent=1, sort_keys=True) + "\n"
            (folder / f"{module}.json").write_text(text, encoding="utf-8")


def register(root: typer.Typer) -> None:
    root.command(name="code")(code)
