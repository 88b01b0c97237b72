"""examples/ci/: the GPU-runner workflow parses, and every gcctl and dvc command in it exists with its flags."""

import shlex
from pathlib import Path

import pytest
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / "examples" / "ci").glob("*.yml"))
SEPARATORS = {"|", "||", "&&", ";", "(", ")", "$", ">", ">>", "<", "&"}
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "time", "exec"}


def _steps(path: Path) -> list[dict]:
    workflow = yaml.safe_load(path.read_text())
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def _commands(script: str) -> list[list[str]]:
    """Every simple command of a run script as words, without leading variable assignments or shell keywords."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        words = []
        for token in list(lexer) + [";"]:
            if token in SEPARATORS:
                commands.append(words)
                words = []
            elif words or not (token in SHELL_WORDS or "=" in token.split("-")[0]):
                words.append(token)
    return [command for command in commands if command]


def _tool_commands(path: Path, tool: str) -> list[list[str]]:
    found = []
    for step in _steps(path):
        found += [command for command in _commands(step.get("run", "")) if command[0] == tool]
    return found


def test_a_workflow_is_shipped():
    assert WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_the_workflow_runs_a_shipped_preset_on_a_gpu_runner_and_publishes_a_summary(path):
    workflow = yaml.safe_load(path.read_text())
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    preset = workflow["env"]["PRESET"].split("'")[1]  # the default of `inputs.preset || '...'`
    assert (REPO / "conf" / "preset" / f"{preset}.yaml").is_file()
    dvc = [" ".join(command) for command in _tool_commands(path, "dvc")]
    assert any(command.startswith("dvc exp run -S preset=$PRESET") for command in dvc)
    assert any(command.startswith("dvc metrics diff --md") for command in dvc)
    scripts = "\n".join(step.get("run", "") for step in _steps(path))
    assert "$GITHUB_STEP_SUMMARY" in scripts and "pipeline/report/$DATASET/per_group.png" in scripts


@pytest.fixture(scope="module")
def gcctl_command():
    from gcctl.cli import app, register_all

    register_all()
    return typer.main.get_command(app)


def _unknown_gcctl_words(root, words: list[str]) -> list[str]:
    """The subcommands and options of `gcctl WORDS` that the CLI (a click command tree; typer may vendor click,
    so groups are told by their `commands`) does not define."""
    command, unknown, position = root, [], 1
    while position < len(words):
        word = words[position]
        if word.startswith("-"):
            name = word.split("=")[0]
            option = next((p for p in command.params if name in p.opts + p.secondary_opts), None)
            if option is None and name != "--help":
                unknown.append(f"{command.name} {name}")
            elif option is not None and not option.is_flag and not option.count and "=" not in word:
                position += 1  # the option's value
        elif hasattr(command, "commands"):
            if word not in command.commands:
                unknown.append(f"{command.name} {word}")
                break
            command = command.commands[word]
        position += 1
    return unknown


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_gcctl_command_exists_with_its_options(path, gcctl_command):
    commands = _tool_commands(path, "gcctl")
    assert commands
    for words in commands:
        assert not _unknown_gcctl_words(gcctl_command, words), words


class DvcRejected(Exception):
    pass


@pytest.fixture()
def dvc_parse(monkeypatch):
    """`dvc WORDS` through dvc's own argument parser, offline; a rejection raises DvcRejected with dvc's reason
    (dvc's parser would log it, print help and exit)."""
    from dvc.cli.parser import DvcParser, get_main_parser

    def reject(self, message, cmd_cls=None):
        raise DvcRejected(message)

    monkeypatch.setattr(DvcParser, "error", reject)
    parser = get_main_parser()
    return lambda words: parser.parse_args(words[1:])


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_dvc_command_parses_with_dvcs_own_parser(path, dvc_parse):
    commands = _tool_commands(path, "dvc")
    assert commands
    for words in commands:
        try:
            dvc_parse(words)
        except DvcRejected as rejected:
            pytest.fail(f"dvc does not accept `{shlex.join(words)}`: {rejected}")


def test_the_checks_catch_an_unknown_option_and_command(gcctl_command, dvc_parse):
    assert _unknown_gcctl_words(gcctl_command, ["gcctl", "train", "--no-such-option"]) == ["train --no-such-option"]
    assert _unknown_gcctl_words(gcctl_command, ["gcctl", "trian"]) == ["gcctl trian"]
    assert not _unknown_gcctl_words(gcctl_command, ["gcctl", "--quiet", "data", "synth", "--out", "x", "--scale", "0.1"])
    with pytest.raises(DvcRejected, match="--no-such-flag"):
        dvc_parse(["dvc", "exp", "run", "--no-such-flag"])
    with pytest.raises(DvcRejected, match="invalid choice"):
        dvc_parse(["dvc", "metrics", "difff"])
    assert _commands('x=1 dvc pull "$A" && echo $(gcctl --version) >> "$OUT"  # dvc nope\nif dvc status; then :; fi') == [
        ["dvc", "pull", "$A"], ["echo"], ["gcctl", "--version"], ["$OUT"], ["dvc", "status"], [":"]]
