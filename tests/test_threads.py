"""The CPU thread policy gcctl sets at process start: how many torch threads, and how OpenMP waits."""

import json
import os
import subprocess
import sys

import pytest
import torch

from gcctl import runtime
from gcctl.errors import GcctlError


@pytest.fixture()
def thread_env(monkeypatch):
    """A clean slate for the variables the policy reads and writes; torch's thread count restored after."""
    for variable in ("GCCTL_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(variable, raising=False)
    yield monkeypatch
    torch.set_num_threads(1)


def test_gcctl_threads_wins_then_omp_num_threads_then_the_cpu_budget(thread_env):
    thread_env.setattr(runtime, "cpu_budget", lambda: 5)
    assert runtime.configure_cpu_threads() == 5 and os.environ["OMP_NUM_THREADS"] == "5"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    thread_env.setenv("OMP_NUM_THREADS", "3")
    thread_env.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice is kept
    assert runtime.configure_cpu_threads() == 3 and torch.get_num_threads() == 3
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    thread_env.setenv("GCCTL_THREADS", "2")
    assert runtime.configure_cpu_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == 2


def test_a_cgroup_quota_caps_the_cpu_budget(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime._cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime._cgroup_cpu_quota(tmp_path) == 3.0
    monkeypatch.setattr(runtime, "_cgroup_cpu_quota", lambda: 0.5)
    assert runtime.cpu_budget() == 1


def test_a_bad_thread_count_is_one_line_from_the_cli(thread_env, run_cli):
    thread_env.setenv("GCCTL_THREADS", "zero")
    code, _, stderr = run_cli("models")
    assert code == 1 and stderr == "error: GCCTL_THREADS='zero' is not a positive number of threads; set it to e.g. 2, or unset it\n"
    thread_env.delenv("GCCTL_THREADS")
    thread_env.setenv("OMP_NUM_THREADS", "0")
    with pytest.raises(GcctlError, match="OMP_NUM_THREADS='0'"):
        runtime.configure_cpu_threads()


def test_a_fresh_process_has_the_policy_before_torch_loads_openmp():
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the policy must be in the environment first."""
    script = ("from gcctl.runtime import configure_cpu_threads; configure_cpu_threads(); import os, torch, json; "
              "print(json.dumps([torch.get_num_threads(), os.environ['OMP_WAIT_POLICY']]))")
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["GCCTL_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [1, "PASSIVE"]


def test_in_background_keeps_order_and_stays_a_bounded_distance_ahead():
    import threading

    made = []

    def items():
        for value in range(10):
            made.append(value)
            yield value

    consumed = []
    for value in runtime.in_background(items(), depth=2):
        consumed.append(value)
        if value == 3:
            import time

            time.sleep(0.3)  # time enough for the thread to run ahead as far as it may
            assert len(made) <= len(consumed) + 3  # depth queued, one in the making
    assert consumed == list(range(10))
    assert not [thread for thread in threading.enumerate() if thread.name == "gcctl-background"]


def test_in_background_raises_the_makers_error_in_its_place_and_stops_on_early_exit():
    import threading

    def failing():
        yield 1
        raise GcctlError("cannot read image x.png")

    received = []
    with pytest.raises(GcctlError, match="cannot read image x.png"):
        for value in runtime.in_background(failing()):
            received.append(value)
    assert received == [1]

    endless = runtime.in_background(iter(int, 1))  # zeros forever
    assert next(endless) == 0
    endless.close()  # what leaving a for loop early does
    assert not [thread for thread in threading.enumerate() if thread.name == "gcctl-background"]
