"""The CLI contract: version, help with examples, exit codes for usage and user errors."""


import pytest

from gcctl import __version__


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"gcctl {__version__}"


@pytest.mark.parametrize("command", [["data", "synth"], ["data", "show"], ["models"], ["models", "fetch"], ["pretrain"],
                                     ["extract"], ["info"], ["merge"], ["pseudo-label"], ["train"], ["evaluate"], ["report"], ["finetune"], ["wise"]])
def test_every_command_has_help_with_an_example(run_cli, command):
    code, out, _ = run_cli(*command, "--help")
    assert code == 0 and "Example: gcctl " + command[0] in " ".join(out.split())


def test_unknown_command_is_a_usage_error(run_cli):
    code, _, err = run_cli("modelz")
    assert code == 2 and "No such command" in err and "Traceback" not in err


def test_missing_option_is_a_usage_error(run_cli):
    code, _, err = run_cli("extract", "--dataset", "waterbirds", "--root", "data", "--out", "x.h5")
    assert code == 2 and "--model" in err
    code, _, err = run_cli("extract", "--dataset", "waterbirds", "--model", "gcctl-micro", "--out", "x.h5")
    assert code == 1 and "give --dataset and --root together, or --table" in err


def test_user_error_is_one_line_and_exit_1(run_cli, tmp_path):
    code, out, err = run_cli("info", str(tmp_path / "missing.h5"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "gcctl extract" in err


def test_running_the_cli_again_in_one_process_registers_nothing_twice(run_cli, tmp_path):
    """A program (or a test) that calls main() many times: each call would otherwise add every command again,
    and building the command tree grew with them (2 s a call after a few hundred)."""
    from gcctl import cli

    run_cli("code", "--out", str(tmp_path / "a"))
    run_cli("params", "--help")
    counts = (len(cli.app.registered_commands), len(cli.app.registered_groups))
    for _ in range(3):
        assert run_cli("code", "--out", str(tmp_path / "a"))[0] == 0
        run_cli("params", "--help")
    assert (len(cli.app.registered_commands), len(cli.app.registered_groups)) == counts
