"""gcctl.clip: building models from every kind of weights source, checkpoints, pretraining, `gcctl models`."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import open_clip
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner
from conftest import tree_digest

from gcctl.cli import models as models_cli
from gcctl.clip import (
    ModelRef,
    build_clip,
    build_from_reference,
    contrastive,
    export_local_dir,
    list_models,
    preprocess_uint8,
    save_checkpoint,
)
from gcctl.clip import schedule
from gcctl.clip.checkpoint import state_dict_sha256
from gcctl.clip.pretrain import PretrainConfig, pretrain
from gcctl.curves import read_curve
from gcctl.errors import GcctlError
from gcctl.files import read_timings, sha256_file
from gcctl.report import plot_pretraining_loss

MICRO = "gcctl-micro"


def weights_equal(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Micro models gain nothing from a second thread, and on a shared machine a busy core stalls a
    two-thread step a hundredfold: one thread keeps these tests fast whatever else runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def micro():
    return build_clip(MICRO, "none")


@pytest.fixture()
def corpus(tmp_path):
    """64 captioned images: two colours on two backgrounds, so captions are learnable from pixels."""
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    backgrounds = {"sand": (200, 180, 120), "grass": (40, 140, 40)}
    images, captions = [], []
    for index in range(64):
        colour, background = list(colours)[index % 2], list(backgrounds)[index // 2 % 2]
        image = np.empty((32, 32, 3), np.uint8)
        image[:] = backgrounds[background]
        top, left = rng.integers(4, 16, size=2)
        image[top : top + 12, left : left + 12] = colours[colour]
        images.append(image)
        captions.append(f"a photo of a {colour} square on {background}")
    path = tmp_path / "corpus.npz"
    np.savez(path, images=np.stack(images), captions=np.array(captions))
    return path


def test_packaged_configs_are_registered_and_listed_first():
    names = list_models()
    assert names[:2] == ["gcctl-micro", "gcctl-tiny"]
    assert "ViT-B-32" in names and "gcctl-tiny" in open_clip.list_models()


def test_random_micro_model_warns_and_encodes(micro, caplog):
    with caplog.at_level(logging.WARNING, logger="gcctl.clip"):
        bundle = build_clip(MICRO, "none")
    assert "random weights" in caplog.text
    assert not bundle.model.training
    assert bundle.reference.kind == "none" and bundle.reference.seed == 0
    assert bundle.reference.sha256 == state_dict_sha256(bundle.model.state_dict())
    assert bundle.provenance["model_ref"] == bundle.reference.to_dict()
    assert bundle.provenance["embed_dim"] == 32 and bundle.provenance["image_size"] == 32
    assert bundle.provenance["context_length"] == 16
    json.dumps(bundle.provenance)  # provenance goes into HDF5 attributes and JSON summaries
    image = bundle.preprocess(Image.new("RGB", (48, 40), "red")).unsqueeze(0)
    with torch.no_grad():
        assert bundle.model.encode_image(image).shape == (1, 32)
        assert bundle.model.encode_text(bundle.tokenizer(["a photo of a cat"])).shape == (1, 32)


def test_random_weights_are_drawn_from_the_seed_alone():
    first = build_clip(MICRO, "none", seed=0)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    again = build_clip(MICRO, "none", seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream is left alone
    assert weights_equal(again.model, first.model) and again.reference == first.reference
    other = build_clip(MICRO, "none", seed=1)
    assert not weights_equal(other.model, first.model)
    assert other.reference.identity() != first.reference.identity()  # two seeds are two models to every resume
    rebuilt = build_from_reference(ModelRef.from_dict(other.reference.to_dict()), recorded_in="a store")
    assert weights_equal(rebuilt.model, other.model)
    with pytest.raises(GcctlError, match="--seed -1 is outside"):
        build_clip(MICRO, "none", seed=-1)


def test_unknown_model_suggests_close_names():
    with pytest.raises(GcctlError, match="unknown model 'gcctl-mikro'; did you mean gcctl-micro"):
        build_clip("gcctl-mikro")


def test_checkpoint_file_round_trip(micro, tmp_path):
    path = save_checkpoint(micro, tmp_path / "model.pt")
    loaded = build_clip(MICRO, str(path))
    assert weights_equal(micro.model, loaded.model)
    assert loaded.reference.sha256 == sha256_file(path)
    assert (loaded.reference.kind, loaded.reference.source) == ("file", str(path.resolve()))
    assert not list(tmp_path.glob("*.partial"))


def test_bare_and_wrapped_state_dicts_load(micro, tmp_path):
    torch.save(micro.model.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in micro.model.state_dict().items()}}, tmp_path / "ddp.bin")
    for name in ("bare.pt", "ddp.bin"):
        assert weights_equal(micro.model, build_clip(MICRO, str(tmp_path / name)).model)


def test_local_dir_round_trip_names_the_model(micro, tmp_path):
    folder = export_local_dir(micro, None, tmp_path / "exported")
    loaded = build_clip(None, f"local-dir:{folder}")
    assert loaded.reference.architecture == MICRO and loaded.reference.kind == "local-dir"
    assert weights_equal(micro.model, loaded.model)
    assert loaded.reference.sha256 == sha256_file(folder / "open_clip_model.safetensors")
    assert weights_equal(micro.model, open_clip.create_model(f"local-dir:{folder}"))  # open_clip reads it too
    with pytest.raises(GcctlError, match="different architecture than gcctl-tiny"):
        build_clip("gcctl-tiny", f"local-dir:{folder}")


def test_checkpoint_records_weights_preprocessing(micro, tmp_path):
    """Weights trained with QuickGELU and their own mean/std must come back with both."""
    model = open_clip.create_model(MICRO, force_quick_gelu=True, force_preprocess_cfg={"mean": (0.5,) * 3, "std": (0.25,) * 3})
    path = save_checkpoint(model, tmp_path / "model.pt", MICRO)
    loaded = build_clip(MICRO, str(path))
    assert any(isinstance(module, open_clip.transformer.QuickGELU) for module in loaded.model.modules())
    assert loaded.reference.preprocess["mean"] == [0.5] * 3 and loaded.reference.preprocess["std"] == [0.25] * 3


def test_wrong_architecture_names_the_mismatch(micro, tmp_path):
    path = save_checkpoint(micro, tmp_path / "micro.pt")
    with pytest.raises(GcctlError, match=r"does not match architecture gcctl-tiny: .*shape mismatches.*saved for gcctl-micro"):
        build_clip("gcctl-tiny", str(path))


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(GcctlError, match="checkpoint file not found"):
        build_clip(MICRO, str(tmp_path / "nowhere.pt"))
    with pytest.raises(GcctlError, match="local-dir:.* has no open_clip_config.json"):
        build_clip(MICRO, f"local-dir:{tmp_path}")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GcctlError, match="junk.pt is incomplete or corrupt"):
        build_clip(MICRO, str(tmp_path / "junk.pt"))


def test_unknown_tag_lists_what_would_work():
    with pytest.raises(GcctlError, match="neither a tag of ViT-B-32 .*openai.*nor an existing file"):
        build_clip("ViT-B-32", "no-such-tag")


def test_open_clip_tag_offline_fails_fast_naming_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty: nothing to fall back on
    started = time.perf_counter()
    alternatives = "local checkpoint file, local-dir:PATH.*none"
    with pytest.raises(GcctlError, match=f"cannot get pretrained weights 'openai' for ViT-B-32: offline.*{alternatives}"):
        build_clip("ViT-B-32", "openai")
    with pytest.raises(GcctlError, match="cannot get hf-hub:org/repo: offline"):
        build_clip(None, "hf-hub:org/repo")
    assert time.perf_counter() - started < 5


def test_vectorised_preprocessing_matches_the_eval_transform(micro):
    rng = np.random.default_rng(0)
    native = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = torch.stack([micro.preprocess(Image.fromarray(image)) for image in native])
    assert torch.allclose(preprocess_uint8(native, micro.model), expected, atol=1e-5)
    ys, xs = np.mgrid[0:64, 0:48]
    smooth = np.stack([128 + 100 * np.sin(xs / 5), 128 + 100 * np.cos(ys / 7), 2 * (xs + ys)], -1).clip(0, 255).astype(np.uint8)
    resized = preprocess_uint8(torch.from_numpy(smooth[None]), micro.model)
    assert resized.shape == (1, 3, 32, 32)
    assert (resized[0] - micro.preprocess(Image.fromarray(smooth))).abs().mean() < 0.02  # PIL and torch kernels differ slightly


def test_the_tensor_twin_takes_a_squashing_model_where_the_modes_agree(micro, monkeypatch):
    monkeypatch.setitem(micro.model.visual.preprocess_cfg, "resize_mode", "squash")  # as SigLIP's weights
    square = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    assert preprocess_uint8(square, micro.model).shape == (2, 3, 32, 32)  # same aspect ratio: no mode differs
    with pytest.raises(GcctlError, match=r"resizes the shortest side only, and this model's resize_mode is 'squash'"):
        preprocess_uint8(square[:, :, :40], micro.model)


def test_pretraining_lowers_the_loss_and_is_reproducible(corpus, tmp_path):
    config = PretrainConfig(model=MICRO, epochs=6, batch_size=32, lr=5e-3, seed=3)
    summary = pretrain(corpus, tmp_path / "a", config, device="cpu", plot=plot_pretraining_loss)
    again = pretrain(corpus, tmp_path / "b", config, device="cpu", plot=plot_pretraining_loss)
    assert summary["steps"] == 12 and summary["final_loss"] < summary["first_loss"] - 0.3
    assert summary["corpus_sha256"] == sha256_file(corpus)
    assert again["model_sha256"] == summary["model_sha256"]  # same seed, same bytes
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")  # summary, curve and plot too: no wall-clock
    assert read_timings(tmp_path / "a")["seconds"] == summary["seconds"] > 0  # beside the folder instead
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["dvclive", "loss.png", "model.pt", "summary.json"]
    curve = read_curve(tmp_path / "a" / "dvclive")
    assert [record["step"] for record in curve] == list(range(1, 13)) and {"loss", "lr"} <= set(curve[0])
    assert curve[0]["loss"] == summary["first_loss"] and curve == read_curve(tmp_path / "b" / "dvclive")
    assert sorted(p.name for p in (tmp_path / "a" / "dvclive" / "plots" / "metrics").iterdir()) == ["loss.tsv", "lr.tsv"]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["model_sha256"] == sha256_file(tmp_path / "a" / "model.pt")
    first, second = build_clip(MICRO, str(tmp_path / "a" / "model.pt")), build_clip(MICRO, str(tmp_path / "b" / "model.pt"))
    assert weights_equal(first.model, second.model)
    assert not weights_equal(first.model, build_clip(MICRO, "none").model)


def test_interrupted_pretraining_leaves_no_model(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"a previous run")
    steps = []
    step = contrastive.ContrastiveOptimiser.step

    def interrupted_step(self, loss):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        step(self, loss)

    monkeypatch.setattr(contrastive.ContrastiveOptimiser, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, out, PretrainConfig(model=MICRO, epochs=2, batch_size=32), device="cpu", overwrite=True)
    assert [path.name for path in out.iterdir()] == ["dvclive"]  # the log of what ran, but no model


def test_killed_pretraining_resumes_to_the_same_weights(corpus, tmp_path, monkeypatch):
    config = PretrainConfig(model=MICRO, epochs=2, batch_size=16, lr=5e-3, seed=1)
    settings = dict(device="cpu", checkpoint_every=3)
    whole = pretrain(corpus, tmp_path / "whole", config, **settings)  # 8 steps; a resumable state after steps 3, 4 and 6
    out = tmp_path / "resumed"
    real_step, steps = contrastive.ContrastiveOptimiser.step, []

    def killed_in_step_seven(self, loss):
        steps.append(1)
        if len(steps) == 7:
            raise KeyboardInterrupt
        real_step(self, loss)

    monkeypatch.setattr(contrastive.ContrastiveOptimiser, "step", killed_in_step_seven)
    with pytest.raises(KeyboardInterrupt):
        pretrain(corpus, out, config, **settings)
    assert [record["step"] for record in read_curve(out / "dvclive")] == list(range(1, 7))
    assert (out / "state.pt").is_file() and not (out / "model.pt").exists()
    monkeypatch.setattr(contrastive.ContrastiveOptimiser, "step", real_step)
    with pytest.raises(GcctlError, match=r"another config \(lr 0.005 → 0.004\); .*--restart"):
        pretrain(corpus, out, dataclasses.replace(config, lr=4e-3), **settings)
    resumed = pretrain(corpus, out, config, **settings)  # from step 6: the middle of the second epoch
    assert resumed["model_sha256"] == whole["model_sha256"] == sha256_file(out / "model.pt")
    assert read_curve(out / "dvclive") == read_curve(tmp_path / "whole" / "dvclive")  # every step once
    assert sorted(path.name for path in out.iterdir()) == ["dvclive", "model.pt", "summary.json"]


def test_pretraining_rejects_a_corpus_without_captions(tmp_path):
    np.savez(tmp_path / "corpus.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(GcctlError, match="has no captions array"):
        pretrain(tmp_path / "corpus.npz", tmp_path / "out", PretrainConfig(model=MICRO))


def test_warmup_cosine_schedule_shape():
    factors = [schedule.warmup_cosine(step, 100, 0.1) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(later <= earlier for earlier, later in zip(factors[9:], factors[10:]))
    assert factors[-1] < 0.01


def test_a_warmup_from_one_is_a_step_count_as_the_starft_authors_give_it():
    factors = [schedule.warmup_cosine(step, 1000, 500) for step in range(1000)]
    assert factors[0] == pytest.approx(1 / 500) and factors[499] == pytest.approx(1.0)
    assert factors[750] == pytest.approx(0.5, abs=0.01)  # half way through the cosine after the warm-up
    assert schedule.warmup_cosine(9, 10, 500) == pytest.approx(10 / 500)  # longer than the run: never shortened
    for bad in (-0.1, 1.5, 12.25):
        with pytest.raises(GcctlError, match="fraction of the steps in \\[0, 1\\) or a whole number of steps"):
            schedule.check_warmup(bad)
    schedule.check_warmup(500)


def test_models_command_lists_ours_first_with_sizes():
    app = typer.Typer()
    app.callback()(lambda: None)  # a root callback keeps `models` a subcommand, as in gcctl's app
    models_cli.register(app)
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["name"] for row in rows[:2]] == ["gcctl-micro", "gcctl-tiny"]
    tiny = rows[1]
    assert tiny["source"] == "gcctl" and tiny["embed_dim"] == 128 and tiny["image_size"] == 32
    assert 4.5e6 < tiny["parameters"] < 5e6  # a ResNet image tower and a word-level text tower: about 4.7M
    assert any(row["name"] == "ViT-B-32" and "openai" in row["pretrained_tags"] for row in rows)


def test_commands_that_build_no_model_do_not_import_open_clip():
    """Evaluating a trained run, reports and feature-only methods stay fast: open_clip costs seconds to import."""
    import subprocess
    import sys

    code = "import sys, gcctl.methods.runs, gcctl.report, gcctl.pseudolabel; print('open_clip' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("size", [(48, 40), (20, 64), (32, 32)])
def test_the_eval_transform_cut_in_two_stages_gives_the_same_input_bit_for_bit(size):
    """Extraction decodes to uint8 and normalises whole batches; the model must see what `preprocess` gives."""
    from gcctl.clip.preprocess import eval_transform_stages

    bundle = build_clip(MICRO, "none")
    pixels, normalized = eval_transform_stages(bundle.preprocess)
    images = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for seed in range(4)]
    decoded = torch.stack([pixels(image) for image in images])
    assert decoded.dtype == torch.uint8 and decoded.shape == (4, 3, 32, 32)
    assert torch.equal(normalized(decoded), torch.stack([bundle.preprocess(image) for image in images]))


def _without_transformers() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is None


@pytest.mark.skipif(not _without_transformers(), reason="transformers is installed")
@pytest.mark.parametrize("name", ["ViT-B-16-SigLIP", "roberta-ViT-B-32"])
def test_a_hugging_face_family_without_transformers_names_the_extra_in_one_line(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GcctlError, match=rf"^model {name} needs Hugging Face's transformers .* pip install 'gcctl\[hf\]'$"):
        build_clip(name, "none")


def test_a_hugging_face_tokenizer_missing_offline_names_the_cache_in_one_line(monkeypatch):
    import open_clip

    def offline(name, *args, **kwargs):
        raise OSError(f"We couldn't connect to the hub to load the files of {name}, and couldn't find them in the cache")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(GcctlError, match=r"tokenizer \(timm/ViT-B-16-SigLIP\) is not in the Hugging Face cache .* HF_HOME"):
        build_clip("ViT-B-16-SigLIP", "none")
