"""The public Python API: the README's example runs as written (on a tiny world and a micro CLIP), and a
user error through the API is a GcctlError with the CLI's message."""

import re
from pathlib import Path

import pytest

import gcctl

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.usefixtures("quiet_random_weights")


def _example() -> str:
    block = re.search(r"<!-- api-example:start -->(.*?)<!-- api-example:end -->", README.read_text(), re.S)
    assert block, "README.md has no api-example block"
    return re.search(r"```python\n(.*?)```", block.group(1), re.S).group(1)


def test_the_readme_example_runs(tiny_waterbirds, tmp_path, capsys):
    code = _example()
    for written, replacement in {
        '"pipeline/data/waterbirds"': repr(str(tiny_waterbirds)),
        '"gcctl-tiny", "pipeline/models/tiny/model.pt"': '"gcctl-micro", "none"',
        '"waterbirds.h5"': repr(str(tmp_path / "waterbirds.h5")),
        'seed=0)': 'seed=0, options={"epochs": 2})',
    }.items():
        assert written in code, f"the README example no longer contains {written}"
        code = code.replace(written, replacement)
    exec(compile(code, "README example", "exec"), {})
    assert re.fullmatch(r"worst-group \d+\.\d%, average \d+\.\d%\n", capsys.readouterr().out)


def test_every_exported_name_resolves():
    for name in gcctl.__all__:
        assert getattr(gcctl, name) is not None
    with pytest.raises(AttributeError):
        gcctl.not_a_name


def test_a_user_error_through_the_api_is_a_gcctl_error(tmp_path):
    with pytest.raises(gcctl.GcctlError, match=r"^feature store .* not found.*gcctl extract"):
        gcctl.fit(tmp_path / "missing.h5", "linear")
    with pytest.raises(gcctl.GcctlError, match="unknown method 'nope'"):
        gcctl.fit(tmp_path / "missing.h5", "nope")
