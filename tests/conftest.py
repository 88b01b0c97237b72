"""Fixtures shared across test modules: a tiny synthetic benchmark and a tiny random CLIP."""

import pytest


@pytest.fixture(scope="session")
def tiny_waterbirds(tmp_path_factory):
    """A Waterbirds-like benchmark in Waterbirds' layout, about 240 images."""
    from gcctl.synth.benchmarks import write_waterbirds

    return write_waterbirds(tmp_path_factory.mktemp("data") / "waterbirds", seed=0, scale=0.02)


@pytest.fixture()
def micro_bundle():
    """gcctl-micro with random weights of seed 0 (fresh per test: extraction moves it between devices)."""
    from gcctl.clip.factory import build_clip

    return build_clip("gcctl-micro", "none")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny tensors: one thread avoids OpenMP spin-waits that make them crawl on a busy machine.
    GCCTL_THREADS keeps it so when a test runs the CLI in process, and in the processes tests start."""
    import os

    import torch

    threads, variable = torch.get_num_threads(), os.environ.get("GCCTL_THREADS")
    os.environ["GCCTL_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if variable is None:
        os.environ.pop("GCCTL_THREADS")
    else:
        os.environ["GCCTL_THREADS"] = variable


@pytest.fixture()
def run_cli(monkeypatch, capsys):
    """Run `gcctl ARGS…` through the real entry point; returns (exit code, stdout, stderr)."""
    import sys

    from gcctl.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["gcctl", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


@pytest.fixture()
def quiet_random_weights():
    """Silence the warning every model with random weights logs (modules opt in with `pytestmark`)."""
    import logging

    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def tree_digest(root) -> str:
    """sha256 over every file below `root`, names and bytes in sorted order: equal for byte-identical trees."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
