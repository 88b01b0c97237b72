"""The warm server under `dvc repro`: a later command runs in a forked copy with its own arguments, folder,
environment and streams, and its status comes back; nothing changes outside DVC or under torchrun."""

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gcctl.cli import warm

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm server is Linux-only")
CLIENT = ("import sys; from gcctl.cli import warm; print('SOCKET', warm.socket_path()); "
          "status = warm.run_warm(sys.argv[1:]); print('STATUS', status)")


def _dvc_env(tmp_path) -> dict:
    # A variable of its own gives this test its own server (the environment is part of a server's key).
    return {**os.environ, "DVC_ROOT": str(tmp_path), "DVC_STAGE": "a", "GCCTL_TEST_SERVER": uuid.uuid4().hex}


def _client(args, env, cwd):
    result = subprocess.run([sys.executable, "-c", CLIENT, *args], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=180)
    return result.stdout.split("STATUS ")[-1].strip(), result


def _wait_for_server(result, timeout=120.0) -> None:
    path = Path(result.stdout.split("SOCKET ")[1].split()[0])  # the client's: its search path is part of the key
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.2)
    pytest.fail("no warm server started")


def test_a_later_command_runs_in_the_warm_copy_with_its_own_folder_environment_streams_and_status(tmp_path):
    env = _dvc_env(tmp_path)
    status, result = _client(["code", "--out", "first"], env, tmp_path)
    assert status == "None"  # no server yet: the caller runs the command itself, and one starts
    _wait_for_server(result)

    env["DVC_STAGE"] = "b"  # differs between stages: the same server
    status, result = _client(["code", "--out", "digests"], env, tmp_path)
    assert status == "0", result.stderr
    assert (tmp_path / "digests/train.json").is_file()  # relative to the caller's folder

    (tmp_path / "params.yaml").write_text("train:\n  runs:\n    x: {method: groupcoop, epochs: abc}\n")
    status, result = _client(["--quiet", "params", "check", "params.yaml"], env, tmp_path)
    assert status == "1"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "epochs" in lines[0]  # the copy's stderr is ours


def test_what_identifies_a_server():
    env = {"DVC_ROOT": "/p", "DVC_STAGE": "a", "HOME": "/h", "PWD": "/p"}
    same = warm.socket_path(env)
    assert warm.socket_path({**env, "DVC_STAGE": "b", "PWD": "/p/x", "SHLVL": "3"}) == same
    assert warm.socket_path({**env, "OMP_NUM_THREADS": "1"}) != same  # read when torch loads: another server
    assert warm.socket_path({**env, "DVC_ROOT": "/q"}) != same


@pytest.mark.parametrize("extra, applies", [
    ({}, True),
    ({"GCCTL_WARM": "0"}, False),
    ({"LOCAL_RANK": "0"}, False),
    ({"TORCHELASTIC_RUN_ID": "x"}, False),
])
def test_only_dvc_stages_outside_torchrun_use_it(extra, applies):
    assert warm.applies({"DVC_ROOT": "/p", "DVC_STAGE": "a", **extra}) is applies
    assert not warm.applies({"HOME": "/h", **extra})


def test_a_library_that_is_not_installed_does_not_stop_the_warm_up(monkeypatch):
    """The server imports what it can: one missing optional library must not make every stage start a server."""
    monkeypatch.setattr(warm, "WARM_MODULES", ("gcctl_not_installed_library", "json"))
    warm._warm_up()
