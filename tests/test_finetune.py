"""Fine-tuning the whole CLIP: spurious pools, the StarFT regulariser, the training loop (resume, selection,
data parallelism), WiSE-FT, and the `finetune` / `wise` commands."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MICRO, tree_digest

from gcctl.clip import build_clip, save_checkpoint
from gcctl.clip.preprocess import train_transform
from gcctl.curves import read_curve
from gcctl.datasets import load_dataset
from gcctl.datasets.images import ImageDataset
from gcctl.errors import GcctlError
from gcctl.evaluation.checkpoints import evaluate_checkpoints, zeroshot_metrics, zeroshot_scores
from gcctl.files import read_timings, sha256_file
from gcctl.finetune import FinetuneConfig, finetune, read_pool, read_pools, wise_ft
from gcctl.finetune import train as train_module
from gcctl.finetune.losses import starft_regulariser
from gcctl.finetune.pools import SHIPPED_POOLS, draw_templates, fill
from gcctl.metrics import metrics_from_predictions, read_predictions
from gcctl.store import extract
from gcctl.synth.render import BACKGROUNDS, COLOURS

# 96 train images: 3 steps of 32 per epoch; a learning rate large enough for a micro model to move.
QUICK = dict(epochs=1, batch_size=32, lr=1e-3, pools=("synthetic",))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a shared machine a busy core stalls a two-thread step of a micro model a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(tiny_waterbirds):
    return load_dataset("waterbirds", tiny_waterbirds)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A micro CLIP saved as the 'zero-shot' checkpoint every run starts from."""
    return str(save_checkpoint(build_clip(MICRO, "none"), tmp_path_factory.mktemp("base") / "model.pt"))


def run(table, base, out, **options):
    return finetune(table, out, model_name=MICRO, pretrained=base, config=FinetuneConfig(**{**QUICK, **options}), device="cpu")


def weights(path) -> dict:
    return build_clip(MICRO, str(path)).model.state_dict()


def final_weights(run_dir) -> dict:
    """The weights after the last epoch (model.pt holds the selected one)."""
    return torch.load(run_dir / "state.pt", weights_only=True)["model"]


def tsv_steps(path) -> list[int]:
    """The steps of one dvclive metric file, in file order (read_curve would hide a repeated step)."""
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def without_key_bias(state: dict) -> dict:
    """The weights minus the attention key bias, whose true gradient is exactly 0 (a shift of every key
    leaves each query's softmax unchanged): its gradient is rounding noise, which Adam scales up to steps
    of up to the learning rate, so two equal computations summed in another order differ there only."""
    kept = {}
    for key, value in state.items():
        if key.endswith("attn.in_proj_bias"):
            width = len(value) // 3
            value = torch.cat([value[:width], value[2 * width :]])
        kept[key] = value
    return kept


def assert_close(first: dict, second: dict, atol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0, msg=lambda m: f"{key}: {m}")


# ---------------------------------------------------------------------------- pools


@pytest.mark.parametrize("name", ["background", "texture", "resolution", "synthetic"])
def test_shipped_pools_hold_tens_of_templates(name):
    templates = read_pool(name)
    assert name in SHIPPED_POOLS and len(templates) >= 20 and len(set(templates)) == len(templates)
    assert all(template.count("{}") == 1 for template in templates)


def test_synthetic_pool_names_every_background_and_colour_of_the_world():
    text = " ".join(read_pool("synthetic"))
    assert all(word in text for word in BACKGROUNDS + COLOURS)


def test_pools_join_without_repeats_and_a_file_is_a_pool(tmp_path):
    own = tmp_path / "own.txt"
    own.write_text("# my pool\n\n{} on the moon.\n{} in the snow.\n")
    joined = read_pools(["background", own])
    assert joined[-1] == "{} on the moon." and joined.count("{} in the snow.") == 1


def test_a_template_is_filled_with_the_caption_without_its_period():
    assert fill("{} in the snow.", "a photo of a circle.") == "a photo of a circle in the snow."


@pytest.mark.parametrize("content, message", [
    ("", "no templates"),
    ("# only a comment\n\n", "no templates"),
    ("{} on grass.\nblurred photo.\n", "bad.txt:2 has no {}"),
    ("{} and {}.\n", "2 fields"),
    ("{name} on grass.\n", "{name}"),
    ("{} on grass {.\n", "malformed"),
])
def test_bad_pool_files_are_one_line_user_errors(tmp_path, content, message):
    pool = tmp_path / "bad.txt"
    pool.write_text(content)
    with pytest.raises(GcctlError) as error:
        read_pool(pool)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_torch_pool_of_strings_is_read_like_the_authors_keywords_files(tmp_path):
    torch.save(["{} surrounded by flowers.", "  ", "{} in urban settings."], tmp_path / "bg.pt")
    assert read_pool(tmp_path / "bg.pt") == ["{} surrounded by flowers.", "{} in urban settings."]
    assert read_pools(["background", tmp_path / "bg.pt"])[-1] == "{} in urban settings."


class _Payload:
    def __reduce__(self):
        return (print, ("a pickle that runs code",))


@pytest.mark.parametrize("content, message", [
    ({"bg": ["{} on grass."]}, "holds a dict, not a list of template strings"),
    (["{} on grass.", 3], "holds a list, not a list of template strings"),
    (["on grass."], "bg.pt:0 has no {}"),
    (_Payload(), "as a torch file of a list of strings"),
    (b"not a torch file", "as a torch file of a list of strings"),
])
def test_a_torch_pool_of_anything_else_is_refused_in_one_line(tmp_path, content, message, capsys):
    pool = tmp_path / "bg.pt"
    if isinstance(content, bytes):
        pool.write_bytes(content)
    else:
        torch.save(content, pool)
    with pytest.raises(GcctlError) as error:
        read_pool(pool)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert "runs code" not in capsys.readouterr().out  # weights_only loading never called it


def test_an_unknown_pool_name_lists_the_shipped_ones():
    with pytest.raises(GcctlError, match="background, resolution, synthetic, texture"):
        read_pool("backgrounds")


# ---------------------------------------------------------------------------- the regulariser


def _features(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_regulariser_is_the_masked_kl_from_zero_shot_to_fine_tuned():
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    image, spurious, zs_image, zs_spurious = (_features(6, seed) for seed in range(4))
    value = starft_regulariser(image, spurious, zs_image, zs_spurious, labels, zeroshot_scale=10.0)
    expected = 0.0
    for i in range(6):  # row by row, over the captions of the other classes only
        other = labels != labels[i]
        p = torch.softmax(10 * zs_image[i] @ zs_spurious[other].T, dim=0)
        q = torch.softmax(10 * image[i] @ spurious[other].T, dim=0)
        expected += float((p * (p.log() - q.log())).sum())
    assert value.item() == pytest.approx(expected / 6, rel=1e-5)


def test_the_unmasked_ablation_is_the_kl_over_every_caption_of_the_batch():
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    image, spurious, zs_image, zs_spurious = (_features(6, seed) for seed in range(4))
    value = starft_regulariser(image, spurious, zs_image, zs_spurious, labels, 10.0, mask_same_class=False)
    expected = F.kl_div(torch.log_softmax(10 * image @ spurious.T, -1), torch.softmax(10 * zs_image @ zs_spurious.T, -1),
                        reduction="batchmean")  # what the authors' SpuriousKLReg computes
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert value.item() != pytest.approx(starft_regulariser(image, spurious, zs_image, zs_spurious, labels, 10.0).item())


def test_the_regulariser_option_reaches_the_step(table, base, tmp_path):
    star = run(table, base, tmp_path / "star", method="starft", epochs=1)
    kl = run(table, base, tmp_path / "kl", method="starft", epochs=1, regulariser="kl")
    assert star["config"]["regulariser"] == "star" and kl["config"]["regulariser"] == "kl"
    curves = [read_curve(tmp_path / name / "dvclive")[1]["regulariser"] for name in ("star", "kl")]
    assert curves[0] != pytest.approx(curves[1])


def test_regulariser_is_zero_for_the_zero_shot_model_and_ignores_same_class_captions():
    labels = torch.tensor([0, 1, 0, 1])
    image, spurious = _features(4, 0), _features(4, 1)
    assert starft_regulariser(image, spurious, image, spurious, labels, 10.0).item() == pytest.approx(0, abs=1e-7)
    moved = spurious.clone()
    moved[2] = _features(1, 9)[0]  # caption of class 0: only rows of class 1 see it
    before = starft_regulariser(image, spurious, _features(4, 2), _features(4, 3), labels, 10.0)
    after = starft_regulariser(image, moved, _features(4, 2), _features(4, 3), labels, 10.0)
    assert before.item() != after.item()
    same = torch.tensor([0, 0, 0, 0])  # one class: nothing to align, and no NaN in the gradient
    image.requires_grad_(True)
    value = starft_regulariser(image, spurious, _features(4, 2), _features(4, 3), same, 10.0)
    value.backward()
    assert value.item() == 0 and torch.isfinite(image.grad).all()


# ---------------------------------------------------------------------------- the training loop


def test_finetune_writes_a_loadable_model_of_the_best_validation_epoch(table, base, tmp_path):
    summary = run(table, base, tmp_path / "run", method="starft", epochs=2, select_by="acc_avg")
    out = tmp_path / "run"
    assert {path.name for path in out.iterdir()} == {"state.pt", "model.pt", "dvclive", "summary.json"}
    curve = read_curve(out / "dvclive")
    assert [record["step"] for record in curve] == [0, 1, 2]  # 0 = the zero-shot starting point
    assert "loss" not in curve[0] and curve[0]["val_acc_wg"] == summary["zeroshot_val_acc_wg"]
    assert [record["lambda"] for record in curve[1:]] == [0.5, 0.25]  # decayed linearly over the epochs
    trained = curve[1:]
    best = max(trained, key=lambda record: record["val_acc_avg"])  # the earliest of equals
    assert summary["best_epoch"] == best["step"] and summary["val_acc_avg"] == best["val_acc_avg"]
    kept = build_clip(MICRO, str(out / "model.pt"))
    assert zeroshot_metrics(kept, table, "val", device=torch.device("cpu"))["acc_avg"] == best["val_acc_avg"]
    assert any(not torch.equal(kept.model.state_dict()[key], value) for key, value in weights(base).items())
    assert curve[1]["regulariser"] > 0 and curve[1]["loss"] > curve[1]["base_loss"]
    assert summary["teacher_cache"]["images"] == "computed once"
    assert summary["teacher_cache"]["training_images"] == int((table.frame["split"] == "train").sum())


def test_select_by_last_keeps_the_last_epoch_whatever_validation_says(table, base, tmp_path):
    summary = run(table, base, tmp_path / "run", method="ft", epochs=3, select_by="last")
    assert summary["best_epoch"] == 3 and summary["select_by"] == "last"
    kept = build_clip(MICRO, str(tmp_path / "run" / "model.pt"))
    last = read_curve(tmp_path / "run" / "dvclive")[-1]
    assert zeroshot_metrics(kept, table, "val", device=torch.device("cpu"))["acc_avg"] == last["val_acc_avg"]
    with pytest.raises(GcctlError, match="--select-by 'best' is unknown; choose one of acc_wg, acc_avg, acc_worst_class, last"):
        FinetuneConfig(select_by="best").check()


def test_the_random_resized_crop_keeps_the_scale_range_asked_for(base):
    from torchvision.transforms import RandomResizedCrop

    model = build_clip(MICRO, base).model
    crops = [step for step in train_transform(model, 0.5).transforms if isinstance(step, RandomResizedCrop)]
    assert [crop.scale for crop in crops] == [(0.5, 1.0)]
    assert next(step for step in train_transform(model).transforms if isinstance(step, RandomResizedCrop)).scale == (0.9, 1.0)
    for bad in (0, 1.5):
        with pytest.raises(GcctlError, match="--crop-scale is a share of the image's area in \\(0, 1\\]"):
            FinetuneConfig(crop_scale=bad).check()


def test_same_seed_same_weights_and_starft_with_lambda_zero_is_ft(table, base, tmp_path):
    run(table, base, tmp_path / "ft", method="ft")
    run(table, base, tmp_path / "ft_again", method="ft")
    run(table, base, tmp_path / "starft0", method="starft", reg_lambda=0.0)
    run(table, base, tmp_path / "starft", method="starft", reg_lambda=1.0)
    ft = final_weights(tmp_path / "ft")
    assert_close(ft, final_weights(tmp_path / "ft_again"))
    # Byte for byte, state.pt and summary.json included: no wall-clock inside a run (it goes beside it).
    assert tree_digest(tmp_path / "ft") == tree_digest(tmp_path / "ft_again")
    assert read_timings(tmp_path / "ft")["epoch_seconds"].keys() == {"1"}
    assert_close(without_key_bias(ft), without_key_bias(final_weights(tmp_path / "starft0")), atol=1e-5)
    starft = final_weights(tmp_path / "starft")
    assert max(float((ft[key] - starft[key]).abs().max()) for key in ft) > 1e-3


def test_the_frozen_copy_has_no_gradients_and_stays_the_zero_shot_model(table, base, tmp_path):
    trainer = train_module.FinetuneRun(table, tmp_path / "run", model_name=MICRO, pretrained=base,
                                       config=FinetuneConfig(**{**QUICK, "method": "starft"}), device=torch.device("cpu"))
    trainer.train()
    frozen = trainer.teacher.model
    assert not frozen.training and all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert not {id(p) for p in frozen.parameters()} & {id(p) for p in trainer.trainable}
    assert_close(frozen.state_dict(), weights(base))


def _trainer(table, base, out, **options):
    return train_module.FinetuneRun(table, out, model_name=MICRO, pretrained=base, device=torch.device("cpu"),
                                    config=FinetuneConfig(**{**QUICK, "method": "starft", **options.pop("config", {})}), **options)


def _first_step_losses(trainer, table) -> dict:
    """The losses of one step of a student unlike the teacher (other weights, so the regulariser is not 0) on a
    batch of training rows out of table order (a cache read by batch position or by train-split position
    instead of by table row would give other teacher features)."""
    trainer.model.load_state_dict(build_clip(MICRO, "none", seed=5).model.state_dict())
    rows = train_module.split_rows(table, "train")[::-3][:16].tolist()
    images, rows = next(iter(torch.utils.data.DataLoader(ImageDataset(table, trainer.bundle.preprocess, rows), batch_size=16)))
    templates = draw_templates(len(table.frame), len(trainer.templates), seed=0)[rows]
    return trainer.step(images, rows, templates, reg_lambda=1.0)


def test_the_cached_teacher_gives_the_step_loss_of_the_teacher_encoding_every_batch(table, base, tmp_path):
    cached = _trainer(table, base, tmp_path / "cached")
    uncached = _trainer(table, base, tmp_path / "uncached", teacher_cache=False)
    assert cached.teacher.cache["images"] == "computed once" and uncached.teacher.cache["images"] == "per step"
    assert torch.isnan(cached.teacher.images[train_module.split_rows(table, "val")]).all()  # only training rows are kept
    first, second = _first_step_losses(cached, table), _first_step_losses(uncached, table)
    assert first["regulariser"] > 1e-4
    assert first == pytest.approx(second, rel=1e-5, abs=1e-7)


def test_teacher_features_come_from_a_feature_store_of_the_same_model_only(table, base, tmp_path):
    store = tmp_path / "features.h5"
    extract(table, build_clip(MICRO, base), store, dtype="float32", device=torch.device("cpu"))
    read = _trainer(table, base, tmp_path / "read", teacher_features=store)
    assert read.teacher.cache["images"] == f"read from {store}"
    computed = _trainer(table, base, tmp_path / "computed")
    assert _first_step_losses(read, table) == pytest.approx(_first_step_losses(computed, table), rel=1e-5, abs=1e-7)
    other = save_checkpoint(build_clip(MICRO, "none", seed=5), tmp_path / "other.pt")
    with pytest.raises(GcctlError, match="holds another model's features"):
        _trainer(table, str(other), tmp_path / "other", teacher_features=store)
    with pytest.raises(GcctlError, match="drop --augment or --teacher-features"):
        _trainer(table, base, tmp_path / "augmented", teacher_features=store, config={"augment": True})


def test_augmentation_turns_the_teacher_cache_off_and_says_so(table, base, tmp_path, caplog):
    summary = run(table, base, tmp_path / "run", method="starft", augment=True)
    assert summary["teacher_cache"] == {"images": "per step", "texts": "once", "reason": "--augment: the training images differ every epoch"}
    assert "computed every step (--augment" in caplog.text
    assert run(table, base, tmp_path / "ft", method="ft")["teacher_cache"] is None


@pytest.mark.parametrize("schedule, expected", [
    ("linear", [0.5, 0.375, 0.25, 0.125]),
    ("paper", [0.375, 0.25, 0.125, 0.0]),  # the authors' λ·(1 − (e+1)/E)
    ("constant", [0.5, 0.5, 0.5, 0.5]),
])
def test_lambda_schedules_give_the_weight_of_each_epoch(schedule, expected):
    config = FinetuneConfig(epochs=4, reg_lambda=0.5, lambda_schedule=schedule)
    assert [config.lambda_at(epoch) for epoch in range(4)] == pytest.approx(expected)
    assert FinetuneConfig(method="ft", lambda_schedule=schedule).lambda_at(0) == 0.0


def test_an_unknown_lambda_schedule_is_a_user_error():
    with pytest.raises(GcctlError, match="--lambda-schedule 'cosine' is unknown; choose one of linear, paper, constant"):
        FinetuneConfig(lambda_schedule="cosine").check()


def test_ce_loss_and_towers_choose_what_trains(table, base, tmp_path):
    run(table, base, tmp_path / "ce", loss="ce", method="ft", towers="both")
    start, after = weights(base), final_weights(tmp_path / "ce")
    changed = {key for key in start if not torch.equal(start[key], after[key])}
    assert any(key.startswith("visual.") for key in changed)
    # Plain CE reads no caption: the text tower and the temperature cannot learn and stay as they were.
    assert all(key.startswith("visual.") for key in changed)
    run(table, base, tmp_path / "text", towers="text")
    after = final_weights(tmp_path / "text")
    assert all(torch.equal(start[key], after[key]) for key in start if key.startswith("visual."))
    with pytest.raises(GcctlError, match="nothing of the model trains"):
        run(table, base, tmp_path / "none", loss="ce", method="ft", towers="text")


def test_an_interrupted_run_resumes_without_losing_finished_epochs(table, base, tmp_path, monkeypatch):
    run(table, base, tmp_path / "straight", method="starft", epochs=2)
    original_epoch, calls = train_module.FinetuneRun._epoch, []

    def interrupted_in_second_epoch(self, epoch, on_step):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return original_epoch(self, epoch, on_step)

    monkeypatch.setattr(train_module.FinetuneRun, "_epoch", interrupted_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(table, base, tmp_path / "resumed", method="starft", epochs=2)
    out = tmp_path / "resumed"
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1 and not (out / "model.pt").exists()

    monkeypatch.setattr(train_module.FinetuneRun, "_epoch", lambda self, epoch, on_step: calls.append(epoch) or original_epoch(self, epoch, on_step))
    run(table, base, out, method="starft", epochs=2)
    assert calls == [0, 1, 1]  # the finished epoch is not trained again
    assert read_timings(out)["epoch_seconds"].keys() == {"1", "2"}  # the first session's epoch kept
    assert_close(final_weights(out), final_weights(tmp_path / "straight"), atol=1e-6)
    # The resumed curve is the straight one: no epoch twice (dvclive appends), none lost.
    assert tsv_steps(out / "dvclive" / "plots" / "metrics" / "loss.tsv") == [1, 2]
    assert tsv_steps(out / "dvclive" / "plots" / "metrics" / "val_acc_wg.tsv") == [0, 1, 2]
    resumed, straight = read_curve(out / "dvclive"), read_curve(tmp_path / "straight" / "dvclive")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert [r["loss"] for r in resumed[1:]] == pytest.approx([r["loss"] for r in straight[1:]], abs=1e-5)


def test_a_run_directory_of_another_config_is_refused_unless_restarted(table, base, tmp_path):
    out = tmp_path / "run"
    run(table, base, out, method="ft")
    with pytest.raises(GcctlError, match=r"another config \(lr 0.001 → 0.002\)") as error:
        run(table, base, out, method="ft", lr=2e-3)
    assert "--restart" in str(error.value)
    summary = finetune(table, out, model_name=MICRO, pretrained=base, device="cpu", restart=True,
                       config=FinetuneConfig(**{**QUICK, "method": "ft", "lr": 2e-3}))
    assert summary["config"]["lr"] == 2e-3


def test_random_starting_weights_are_drawn_from_the_run_seed(table, tmp_path):
    summary = finetune(table, tmp_path / "run", model_name=MICRO, pretrained="none", device="cpu",
                       config=FinetuneConfig(**{**QUICK, "method": "ft", "seed": 2}))
    drawn = build_clip(MICRO, "none", seed=2).reference
    assert summary["base"]["seed"] == 2 and summary["base"]["sha256"] == drawn.sha256  # the run's identity holds it too


def test_restart_if_changed_resumes_the_same_config_and_starts_another_over(table, base, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(table, base, out, method="ft", epochs=2)
    calls = []
    epoch = train_module.FinetuneRun._epoch
    monkeypatch.setattr(train_module.FinetuneRun, "_epoch", lambda self, e, on_step: calls.append(e) or epoch(self, e, on_step))

    def again(**options):
        config = FinetuneConfig(**{**QUICK, "method": "ft", "epochs": 2, **options})
        return finetune(table, out, model_name=MICRO, pretrained=base, config=config, device="cpu", restart_if_changed=True)

    again()
    assert calls == []  # same config, already finished: nothing to train
    summary = again(lr=2e-3)
    assert calls == [0, 1] and summary["config"]["lr"] == 2e-3
    assert tsv_steps(out / "dvclive" / "plots" / "metrics" / "val_acc_wg.tsv") == [0, 1, 2]


@pytest.mark.slow
def test_data_parallel_run_matches_one_process_with_the_same_global_batch(table, base, tmp_path):
    options = {**QUICK, "method": "starft"}
    finetune(table, tmp_path / "single", model_name=MICRO, pretrained=base, device="cpu", config=FinetuneConfig(**options))
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent("""
        import json, sys
        from gcctl.datasets import load_dataset
        from gcctl.finetune import FinetuneConfig, finetune
        root, out, base, options = sys.argv[1:]
        options = json.loads(options)
        options["pools"] = tuple(options["pools"])
        finetune(load_dataset("waterbirds", root), out, model_name="gcctl-micro", pretrained=base,
                 config=FinetuneConfig(**options), device="cpu")
    """))
    with socket.socket() as probe:  # a free port on the loopback interface only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(port), str(launcher),
               str(table.root), str(tmp_path / "parallel"), base, json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "parallel" / "summary.json").read_text())
    assert summary["processes"] == 2
    parallel_weights = without_key_bias(final_weights(tmp_path / "parallel"))
    assert_close(parallel_weights, without_key_bias(final_weights(tmp_path / "single")), atol=1e-5)


# ---------------------------------------------------------------------------- WiSE-FT


def test_wise_interpolates_the_weights(table, base, tmp_path):
    run(table, base, tmp_path / "ft", method="ft")
    finetuned = tmp_path / "ft" / "model.pt"
    start, end = weights(base), weights(finetuned)
    for alpha in (0.0, 0.5, 1.0):
        summary = wise_ft(base, str(finetuned), alpha, tmp_path / f"wise{alpha}.pt")
        assert summary["model"] == MICRO
        mixed = weights(tmp_path / f"wise{alpha}.pt")
        expected = {key: torch.lerp(start[key], end[key], alpha) if start[key].is_floating_point() else start[key] for key in start}
        assert_close(mixed, expected, atol=1e-6)


def test_wise_keeps_the_fine_tuned_batch_norm_counters(tmp_path):
    zeroshot, finetuned = (build_clip("gcctl-tiny", "none", seed=seed) for seed in (0, 1))  # a ResNet tower
    counters = [key for key in finetuned.model.state_dict() if key.endswith("num_batches_tracked")]
    assert counters
    with torch.no_grad():
        for key in counters:
            finetuned.model.state_dict()[key].fill_(7)  # the fine-tuned model took 7 training steps
    paths = [save_checkpoint(bundle, tmp_path / f"{name}.pt") for name, bundle in (("zs", zeroshot), ("ft", finetuned))]
    wise_ft(str(paths[0]), str(paths[1]), 0.5, tmp_path / "wise.pt")
    mixed = torch.load(tmp_path / "wise.pt", weights_only=True)["state_dict"]
    assert all(int(mixed[key]) == 7 for key in counters)


def test_wise_refuses_checkpoints_of_two_architectures_and_a_bad_alpha(base, tmp_path):
    tiny = save_checkpoint(build_clip("gcctl-tiny", "none"), tmp_path / "tiny.pt")
    with pytest.raises(GcctlError, match="one architecture"):
        wise_ft(base, str(tiny), 0.5, tmp_path / "out.pt")
    with pytest.raises(GcctlError, match="does not match architecture"):
        wise_ft(base, str(tiny), 0.5, tmp_path / "out.pt", model_name=MICRO)
    with pytest.raises(GcctlError, match=r"\[0, 1\]"):
        wise_ft(base, base, 1.5, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------------------- evaluating checkpoints


def test_checkpoints_are_evaluated_zero_shot_as_seeds_of_one_run(table, base, tmp_path):
    for seed in (2, 10):  # sorted paths put seed-10 first
        run(table, base, tmp_path / "ft" / f"seed-{seed}", method="ft", seed=seed)
    metrics = evaluate_checkpoints([tmp_path / "ft"], table, "test", device="cpu", out=tmp_path / "ft.json")
    per_seed = [zeroshot_metrics(build_clip(MICRO, str(tmp_path / "ft" / f"seed-{seed}" / "model.pt")), table, "test",
                                 device=torch.device("cpu")) for seed in (2, 10)]
    assert metrics["acc_wg"]["mean"] == pytest.approx((per_seed[0]["acc_wg"] + per_seed[1]["acc_wg"]) / 2)
    assert list(metrics["seeds"]) == ["2", "10"]
    assert [metrics["seeds"][seed]["acc_avg"] for seed in ("2", "10")] == [m["acc_avg"] for m in per_seed]
    provenance = metrics["provenance"]
    assert provenance["run"] == "ft" and provenance["seeds"] == [2, 10]
    assert [reference["architecture"] for reference in provenance["checkpoints"]] == [MICRO, MICRO]
    assert provenance["dataset_fingerprint"] == table.fingerprint()
    assert provenance["checkpoints"][0]["sha256"] == sha256_file(tmp_path / "ft" / "seed-2" / "model.pt")
    predictions, vocabulary = read_predictions(tmp_path / "ft.predictions.parquet")
    recomputed = metrics_from_predictions(predictions, vocabulary)
    assert [recomputed[key] for key in ("acc_avg", "acc_wg")] == [metrics[key] for key in ("acc_avg", "acc_wg")]
    assert set(predictions.columns) >= {"id", "group_name", *(f"score_{name}" for name in table.class_names)}


def test_checkpoint_scores_are_logits_at_the_models_own_scale(table, base):
    """Scores are cosines times the logit scale, as the feature methods score, so their softmax (hence ECE)
    is the model's own and not the near-uniform softmax of raw cosines."""
    bundle, cpu = build_clip(MICRO, base), torch.device("cpu")
    scores = {}
    for scale in (1.0, 50.0):
        with torch.no_grad():
            bundle.model.logit_scale.fill_(math.log(scale))
        scores[scale], _ = zeroshot_scores(bundle, table, "test", device=cpu)
    assert abs(scores[1.0]).max() <= 1 + 1e-5
    torch.testing.assert_close(torch.from_numpy(scores[50.0]), 50 * torch.from_numpy(scores[1.0]), rtol=1e-4, atol=1e-4)


def test_targets_of_one_label_space_encode_its_class_texts_once(table, base, monkeypatch):
    from gcctl.evaluation import checkpoints

    bundle, cpu = build_clip(MICRO, base), torch.device("cpu")
    alone, _ = zeroshot_scores(bundle, table, "test", device=cpu)
    encoded = []
    real = checkpoints.class_text_features
    monkeypatch.setattr(checkpoints, "class_text_features", lambda *args: encoded.append(args[2]) or real(*args))
    cache: dict = {}
    first, _ = zeroshot_scores(bundle, table, "test", device=cpu, text_features=cache)
    second, _ = zeroshot_scores(bundle, table, "val", device=cpu, text_features=cache)
    other, _ = zeroshot_scores(bundle, table, "test", device=cpu, text_features=cache, templates=("a {}.",))
    assert len(encoded) == 2 and len(cache) == 2  # the second split shared the first's; other templates did not
    np.testing.assert_array_equal(first, alone)
    assert not np.array_equal(other, first)


def test_a_checkpoint_without_a_run_takes_its_seed_folder(table, base, tmp_path):
    for folder in ("wise/seed-10", "wise/seed-2", "bare/a", "bare/b", "again/seed-2"):  # a model.pt without summary.json
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(base, tmp_path / folder / "model.pt")
    assert evaluate_checkpoints([tmp_path / "wise"], table, device="cpu")["provenance"]["seeds"] == [2, 10]
    with pytest.raises(GcctlError, match="cannot tell the seed of .*pass the `gcctl finetune` run folders"):
        evaluate_checkpoints([tmp_path / "bare"], table, device="cpu")
    with pytest.raises(GcctlError, match="both trained with seed 2"):
        evaluate_checkpoints([tmp_path / "wise", tmp_path / "again"], table, device="cpu")


def test_a_folder_without_checkpoints_is_a_user_error(table, tmp_path):
    with pytest.raises(GcctlError, match="holds no model.pt"):
        evaluate_checkpoints([tmp_path], table, device="cpu")
    with pytest.raises(GcctlError, match="does not exist"):
        evaluate_checkpoints([tmp_path / "missing.pt"], table, device="cpu")


def test_a_split_the_dataset_lacks_is_a_user_error_naming_its_splits(table, base):
    with pytest.raises(GcctlError, match=r"no 'dev' images \(its splits: test, train, val\)"):
        evaluate_checkpoints([base], table, "dev", device="cpu")


# ---------------------------------------------------------------------------- the commands


def test_finetune_command_trains_and_reports(run_cli, tiny_waterbirds, base, tmp_path):
    code, out, _ = run_cli("--quiet", "finetune", "--dataset", "waterbirds", "--root", str(tiny_waterbirds),
                          "--model", MICRO, "--pretrained", base, "--method", "ft", "--epochs", "1", "--batch-size", "32",
                          "--lr", "1e-3", "--device", "cpu", "--out", str(tmp_path / "run"), "--json")
    assert code == 0 and json.loads(out)["best_epoch"] == 1
    assert build_clip(MICRO, str(tmp_path / "run" / "model.pt")).reference.architecture == MICRO


def test_finetune_help_lists_the_lambda_schedules_and_the_teacher_cache(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # option names whole
    code, out, _ = run_cli("finetune", "--help")
    text = " ".join(out.split())
    assert code == 0 and "paper λ(1-(e+1)/E)" in text
    assert all(option in text for option in ("--lambda-schedule", "--teacher-cache", "--teacher-features", "--augment"))


def test_bad_pool_and_foreign_checkpoint_are_one_line_errors(run_cli, tiny_waterbirds, base, tmp_path):
    pool = tmp_path / "pool.txt"
    pool.write_text("a photo without a slot.\n")
    code, _, err = run_cli("finetune", "--dataset", "waterbirds", "--root", str(tiny_waterbirds),
                          "--model", MICRO, "--pretrained", base, "--pool", str(pool), "--device", "cpu", "--out", str(tmp_path / "run"))
    assert code == 1 and err.count("\n") == 1 and "has no {}" in err
    tiny = save_checkpoint(build_clip("gcctl-tiny", "none"), tmp_path / "tiny.pt")
    code, _, err = run_cli("wise", "--zeroshot", base, "--finetuned", str(tiny), "--out", str(tmp_path / "w.pt"))
    assert code == 1 and err.count("\n") == 1 and "one architecture" in err


def test_evaluate_command_scores_a_checkpoint_on_images_and_reports_it(run_cli, tiny_waterbirds, base, tmp_path):
    out = tmp_path / "metrics" / "base.json"
    code, _, err = run_cli("evaluate", "--checkpoint", base, "--dataset", "waterbirds", "--root", str(tiny_waterbirds),
                           "--name", "base", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    metrics = json.loads(out.read_text())
    assert metrics["provenance"]["run"] == "base" and 0 <= metrics["acc_wg"]["mean"] <= metrics["acc_avg"]["mean"]
    assert metrics["provenance"]["seeds"] == [None] and list(metrics["seeds"]) == ["none"]  # a lone checkpoint without a run
    assert (out.parent / "base.predictions.parquet").is_file()
    code, _, err = run_cli("report", str(out), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert "base" in (tmp_path / "report" / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "either --run"),
    (["--checkpoint", "X"], "needs the images"),
    (["--run", "R", "--checkpoint", "X"], "either --run"),
    (["--checkpoint", "X", "--dataset", "waterbirds"], "give --dataset and --root together, or --table"),
    (["--checkpoint", "X", "--target", "Blond_Hair"], "--target needs --dataset and --root"),
])
def test_evaluate_needs_exactly_one_source_and_images_for_checkpoints(run_cli, tmp_path, args, message):
    code, _, err = run_cli("evaluate", *args, "--out", str(tmp_path / "m.json"))
    assert code == 1 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "m.json").exists()
