"""Bad input, one row each: the command fails with exit 1 and a single `error:` line, no traceback, and changes
no file (neither an output nor anything that was already there)."""

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
from conftest import MICRO
from PIL import Image

CPU = ("--device", "cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A manifest dataset of 24 tiny images (every group in every split), its store and a zero-shot run."""
    from gcctl.clip.factory import build_clip
    from gcctl.datasets import load_dataset
    from gcctl.methods.runs import train_run
    from gcctl.runtime import seed_everything
    from gcctl.store import extract

    base = tmp_path_factory.mktemp("world")
    root = base / "data"
    rows = []
    for split in ("train", "val", "test"):
        for y in (0, 1):
            for place in (0, 1):
                for copy in range(2):
                    path = f"images/{len(rows)}.png"
                    write_rgb(root / path, (40 * y + 10 * copy, 100 + 50 * place, 30 * len(rows) % 255))
                    rows.append((path, y, split, place))
    pd.DataFrame(rows, columns=["path", "y", "split", "place"]).to_csv(root / "manifest.csv", index=False)
    table = load_dataset("manifest", root, file="manifest.csv", attribute_columns="place")
    seed_everything(0)
    extract(table, build_clip(MICRO, "none"), base / "store.h5", batch_size=8)
    train_run(base / "store.h5", "zeroshot", base / "run", device="cpu")
    return base


def write_rgb(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def dataset_args(world: Path, manifest: Path | str = "manifest.csv") -> list[str]:
    return ["--dataset", "manifest", "--root", str(world / "data"), "--manifest-file", str(manifest), "--attribute-column", "place"]


def copy_run(world: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(world / "run", tmp / "run"))


def truncate(path: Path, keep: float = 0.5) -> Path:
    path.write_bytes(path.read_bytes()[: int(len(path.read_bytes()) * keep)])
    return path


def edited_store(world: Path, tmp: Path, edit) -> Path:
    """A copy of the world's store changed by `edit(h5py.File)`."""
    path = Path(shutil.copy(world / "store.h5", tmp / "store.h5"))
    with h5py.File(path, "r+") as handle:
        edit(handle)
    return path


def shorten_y(handle) -> None:
    y = handle["y"][()]
    del handle["y"]
    handle["y"] = y[:-3]


def narrow_features(handle) -> None:
    """Features of another width than the model's (as a store of another model would have)."""
    features = handle["features"][:, :16]
    del handle["features"]
    handle["features"] = features
    handle.attrs["embed_dim"] = 16


def unmark_complete(handle) -> None:
    """What a store looks like whose writer was cut short (or that an older gcctl wrote)."""
    del handle.attrs["complete"]


def incomplete_store(world: Path, tmp: Path) -> Path:
    return edited_store(world, tmp, unmark_complete)


def damaged_store(world: Path, tmp: Path, dataset: str) -> Path:
    """The store with the object header of `dataset` overwritten: the file opens, reading that dataset fails."""
    path = Path(shutil.copy(world / "store.h5", tmp / "store.h5"))
    with h5py.File(path, "r") as handle:
        header = h5py.h5o.get_info(handle[dataset].id).addr
    data = bytearray(path.read_bytes())
    data[header : header + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def manifest_with_path(world: Path, tmp: Path, image_path: str) -> list[str]:
    frame = pd.read_csv(world / "data" / "manifest.csv")
    frame.loc[0, "path"] = image_path
    frame.to_csv(tmp / "escape.csv", index=False)
    return dataset_args(world, tmp / "escape.csv")


def extract_args(dataset: list[str], out: Path, model: str = MICRO) -> list[str]:
    return ["extract", *dataset, "--model", model, "--out", str(out), *CPU]


def train_args(features: Path, out: Path, *extra: str, method: str = "zeroshot") -> list[str]:
    return ["train", "--features", str(features), "--method", method, "--out", str(out), *extra, *CPU]


def evaluate_args(run: Path, out: Path) -> list[str]:
    return ["evaluate", "--run", str(run), "--out", str(out), *CPU]


def checkpoint_args(world: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--model", MICRO, *dataset_args(world), "--out", str(out), *extra, *CPU]


def folder(tmp: Path, name: str = "folder") -> Path:
    """A folder holding a file of someone else's."""
    path = tmp / name
    path.mkdir()
    (path / "keep.txt").write_text("not gcctl's\n")
    return path


def empty_manifest(tmp: Path) -> Path:
    (tmp / "empty.csv").write_text("")
    return tmp / "empty.csv"


def binary_waterbirds(tmp: Path) -> Path:
    root = tmp / "waterbirds"
    root.mkdir()
    (root / "metadata.csv").write_bytes(bytes(range(256)) * 8)
    return root


def run_without(world: Path, tmp: Path, name: str) -> Path:
    run = copy_run(world, tmp)
    (run / name).unlink()
    return run


def text_file(tmp: Path) -> Path:
    (tmp / "notes.txt").write_text("someone's notes\n")
    return tmp / "notes.txt"


def finished_pretraining(tmp: Path) -> Path:
    out = tmp / "pretrained"
    out.mkdir()
    (out / "model.pt").write_bytes(b"an earlier run's weights")
    return out


def empty_state_out(tmp: Path) -> Path:
    """A fine-tuning --out whose resume state was cut short before its first byte."""
    out = tmp / "ft"
    out.mkdir()
    (out / "state.pt").write_bytes(b"")
    return out


# issue 25 item 3: each command's own earlier output, made as the command makes it
def earlier_metrics(world: Path, tmp: Path, name: str = "m.json", **provenance) -> Path:
    """`gcctl evaluate`'s metrics (and predictions) of the world's run, its provenance changed by `provenance`."""
    import json

    from gcctl.methods.runs import evaluate_run

    evaluate_run(world / "run", "test", device="cpu", out=tmp / name)
    if provenance:
        metrics = json.loads((tmp / name).read_text())
        metrics["provenance"].update(provenance)
        (tmp / name).write_text(json.dumps(metrics))
    return tmp / name


def earlier_groups(world: Path, tmp: Path) -> Path:
    from gcctl.pseudolabel import pseudo_label

    pseudo_label(world / "store.h5", "oracle", tmp / "g.parquet", device="cpu")
    return tmp / "g.parquet"


def earlier_table(world: Path, tmp: Path) -> Path:
    from gcctl.datasets import load_dataset

    load_dataset("manifest", world / "data", file="manifest.csv", attribute_columns="place").save(tmp / "t.parquet")
    return tmp / "t.parquet"


def checkpoint_file(path: Path) -> Path:
    """A checkpoint as `gcctl models fetch` and `gcctl wise` write it (gcctl-micro, random weights)."""
    from gcctl.clip.checkpoint import save_checkpoint
    from gcctl.clip.factory import build_clip

    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(build_clip(MICRO, "none"), path)


def run_model(tmp: Path) -> Path:
    """A run's model.pt beside its summary.json (a pretraining or fine-tuning run): that run's, no one else's."""
    model = checkpoint_file(tmp / "ft" / "model.pt")
    (model.parent / "summary.json").write_text("{}\n")
    return model


def earlier_report(world: Path, tmp: Path) -> Path:
    """A report folder as `gcctl report` writes it (its figures left out: only results.md tells)."""
    from gcctl.report import markdown_table, read_json

    (tmp / "report").mkdir()
    (tmp / "report" / "results.md").write_text(markdown_table([read_json(earlier_metrics(world, tmp, "r.json"))]), encoding="utf-8")
    return tmp / "report"


def foreign_report(tmp: Path) -> Path:
    (tmp / "report").mkdir()
    (tmp / "report" / "results.md").write_text("# my results, typed by hand\n")
    return tmp / "report"


def beside(path: Path, name: str) -> Path:
    """`path` after writing someone's text file `name` beside it."""
    (path.parent / name).write_text("someone else's file\n")
    return path


def wise_args(zeroshot: Path, finetuned: Path, out: Path, *extra: str) -> list[str]:
    return ["wise", "--zeroshot", str(zeroshot), "--finetuned", str(finetuned), "--out", str(out), *extra]


def fetch_args(out: Path, *extra: str, pretrained: str = "none") -> list[str]:
    return ["models", "fetch", "--model", MICRO, "--pretrained", pretrained, "--out", str(out), *extra]


def pseudo_label_args(world: Path, out: Path, *extra: str) -> list[str]:
    return ["pseudo-label", "--features", str(world / "store.h5"), "--strategy", "oracle", "--out", str(out), *extra, *CPU]


def dfr_run(world: Path, tmp: Path) -> Path:
    """A DFR run on the world's store: a method fitted on the validation split."""
    from gcctl.methods.runs import train_run

    train_run(world / "store.h5", "dfr", tmp / "dfr", device="cpu")
    return tmp / "dfr"


def size_named_val_groups(world: Path, tmp: Path) -> Path:
    """Validation pseudo-groups that kmeans named by size, reading no validation group label."""
    from gcctl.pseudolabel import pseudo_label

    pseudo_label(world / "store.h5", "kmeans", tmp / "val-groups.parquet", split="val", device="cpu")
    return tmp / "val-groups.parquet"


def latin1_params(tmp: Path) -> Path:
    """A params file saved as Latin-1, not UTF-8 (a run named zéro)."""
    (tmp / "params.yaml").write_bytes("train:\n  runs:\n    z\xe9ro:\n      method: zeroshot\n".encode("latin-1"))
    return tmp / "params.yaml"


def params_file(tmp: Path, text: str) -> Path:
    (tmp / "params.yaml").write_text(text)
    return tmp / "params.yaml"


def empty_shard(tmp: Path) -> Path:
    """A webdataset folder holding one shard with no samples in it."""
    import tarfile

    (tmp / "shards").mkdir()
    tarfile.open(tmp / "shards" / "00000.tar", "w").close()
    return tmp / "shards"


# (id, args(world, tmp) -> CLI args, a fragment of the error line)
CASES = [
    # datasets
    ("empty-manifest", lambda w, t: ["data", "show", *dataset_args(w, empty_manifest(t))], "is empty"),
    ("binary-metadata", lambda w, t: ["data", "show", "--dataset", "waterbirds", "--root", str(binary_waterbirds(t))],
     "not a readable text table"),
    ("escape-dotdot", lambda w, t: ["data", "show", *manifest_with_path(w, t, "../escape.png")], "outside --root"),
    ("escape-etc-passwd", lambda w, t: extract_args(manifest_with_path(w, t, "../../etc/passwd"), t / "f.h5"), "outside --root"),
    ("escape-absolute", lambda w, t: ["data", "show", *manifest_with_path(w, t, "/etc/hostname")], "outside --root"),
    ("missing-root", lambda w, t: ["data", "show", "--dataset", "waterbirds", "--root", str(t / "nowhere")], "not a directory"),
    # a --table was checked against its root when `gcctl data table` wrote it
    ("table-allow-outside-root", lambda w, t: ["data", "show", "--table", str(t / "t.parquet"), "--allow-outside-root"],
     "--table already describes"),
    # --out that is a directory: refused before anything else is looked at (the other inputs are bad too)
    ("table-out-directory", lambda w, t: ["data", "table", *dataset_args(w), "--out", str(folder(t))], "is a directory"),
    ("extract-out-directory", lambda w, t: extract_args(dataset_args(w), folder(t), model="no-such-model"), "is a directory"),
    # --out that holds something else is never written over; an earlier output of the command only with --overwrite
    ("train-out-foreign-directory", lambda w, t: train_args(t / "missing.h5", folder(t)), "not the output of `gcctl train`"),
    ("train-out-earlier-run", lambda w, t: train_args(w / "store.h5", copy_run(w, t)), "pass --overwrite"),
    ("extract-out-foreign-file", lambda w, t: extract_args(dataset_args(w), text_file(t)), "not the output of `gcctl extract`"),
    ("extract-out-foreign-file-overwrite", lambda w, t: [*extract_args(dataset_args(w), text_file(t)), "--overwrite"],
     "not the output of `gcctl extract`"),
    ("extract-out-earlier-store", lambda w, t: extract_args(dataset_args(w), Path(shutil.copy(w / "store.h5", t / "f.h5"))),
     "pass --overwrite"),
    ("extract-out-dataset-metadata", lambda w, t: extract_args(dataset_args(w), w / "data" / "manifest.csv"),
     "inside the dataset root"),
    ("extract-out-new-file-in-dataset", lambda w, t: extract_args(dataset_args(w), w / "data" / "f.h5"), "inside the dataset root"),
    ("finetune-out-foreign-directory", lambda w, t: ["finetune", *dataset_args(w), "--model", MICRO, "--out", str(folder(t)),
                                                     "--epochs", "1", *CPU],
     "not the output of `gcctl finetune`"),
    ("finetune-out-in-dataset", lambda w, t: ["finetune", *dataset_args(w), "--model", MICRO, "--out", str(w / "data" / "ft"),
                                              "--epochs", "1", *CPU],
     "inside the dataset root"),
    ("pretrain-out-foreign-directory", lambda w, t: ["pretrain", "--corpus", str(t / "c.npz"), "--out", str(folder(t)), *CPU],
     "not the output of `gcctl pretrain`"),
    ("pretrain-out-finished-run", lambda w, t: ["pretrain", "--corpus", str(t / "c.npz"), "--out", str(finished_pretraining(t)),
                                                "--model", MICRO, *CPU],
     "pass --overwrite"),
    ("evaluate-out-directory", lambda w, t: evaluate_args(w / "run", folder(t)), "is a directory"),
    ("evaluate-run-missing", lambda w, t: evaluate_args(t / "no-run", t / "m.json"), "neither a run directory nor a folder of runs"),
    ("evaluate-temperature-on-val", lambda w, t: [*evaluate_args(w / "run", t / "m.json"), "--split", "val", "--temperature-scale"],
     "fits its temperature on the validation split"),
    ("evaluate-temperature-checkpoint", lambda w, t: checkpoint_args(w, t / "model.pt", t / "m.json", "--temperature-scale"),
     "applies to --run"),
    ("pseudo-label-out-directory", lambda w, t: ["pseudo-label", "--features", str(t / "missing.h5"), "--out", str(folder(t)), *CPU],
     "is a directory"),
    # feature stores
    ("store-missing", lambda w, t: ["info", str(t / "missing.h5")], "gcctl extract"),
    ("store-incomplete-info", lambda w, t: ["info", str(incomplete_store(w, t))], "is incomplete"),
    ("store-incomplete-train", lambda w, t: train_args(incomplete_store(w, t), t / "run", method="linear"), "is incomplete"),
    ("store-incomplete-evaluate", lambda w, t: [*evaluate_args(w / "run", t / "m.json"), "--features", str(incomplete_store(w, t))],
     "is incomplete"),
    ("store-incomplete-pseudo-label", lambda w, t: ["pseudo-label", "--features", str(incomplete_store(w, t)), "--strategy", "kmeans",
                                                    "--out", str(t / "g.parquet"), *CPU],
     "is incomplete"),
    ("store-incomplete-merge", lambda w, t: ["merge", str(incomplete_store(w, t)), "--out", str(t / "merged.h5")], "is incomplete"),
    ("merge-over-foreign-file", lambda w, t: ["merge", str(w / "store.h5"), "--out", str(text_file(t))], "is not the output of `gcctl merge`"),
    ("merge-over-earlier-store", lambda w, t: ["merge", str(w / "store.h5"), "--out", shutil.copy(w / "store.h5", t / "old.h5")],
     "pass --overwrite"),
    ("store-truncated", lambda w, t: ["info", str(truncate(Path(shutil.copy(w / "store.h5", t / "store.h5"))))], "not a readable HDF5"),
    ("store-damaged-header", lambda w, t: ["info", str(damaged_store(w, t, "y"))], "incomplete or corrupt"),
    ("store-damaged-features", lambda w, t: train_args(damaged_store(w, t, "features"), t / "run", method="linear"),
     "incomplete or corrupt"),
    ("store-damaged-attribute", lambda w, t: ["info", str(damaged_store(w, t, "attributes/place"))], "incomplete or corrupt"),
    ("store-uneven-lengths", lambda w, t: ["info", str(edited_store(w, t, shorten_y))], "24 feature rows but y 21"),
    ("store-dim-coop", lambda w, t: train_args(edited_store(w, t, narrow_features), t / "run", "--epochs", "1", method="coop"),
     "embeds into 32 dimensions"),
    ("store-dim-zeroshot", lambda w, t: train_args(edited_store(w, t, narrow_features), t / "run"), "embeds into 32 dimensions"),
    ("store-dim-zeroshot-attr", lambda w, t: ["pseudo-label", "--features", str(edited_store(w, t, narrow_features)),
                                              "--strategy", "zeroshot-attr", "--out", str(t / "g.parquet"), *CPU],
     "embeds into 32 dimensions"),
    # run directories and checkpoints
    ("params-empty", lambda w, t: evaluate_args(truncate(copy_run(w, t) / "params.pt", 0).parent, t / "m.json"),
     "params.pt is incomplete or corrupt"),
    ("params-truncated", lambda w, t: evaluate_args(truncate(copy_run(w, t) / "params.pt").parent, t / "m.json"),
     "params.pt is incomplete or corrupt"),
    ("params-missing", lambda w, t: evaluate_args(run_without(w, t, "params.pt"), t / "m.json"), "params.pt is missing"),
    ("config-truncated", lambda w, t: evaluate_args(truncate(copy_run(w, t) / "config.json").parent, t / "m.json"),
     "config.json is incomplete or corrupt"),
    ("config-missing", lambda w, t: evaluate_args(run_without(w, t, "config.json"), t / "m.json"), "no config.json"),
    ("model-truncated", lambda w, t: checkpoint_args(w, truncate(Path(shutil.copy(w / "run" / "params.pt", t / "model.pt"))), t / "m.json"),
     "model.pt is incomplete or corrupt"),
    ("state-empty", lambda w, t: ["finetune", *dataset_args(w), "--model", MICRO, "--out", str(empty_state_out(t)),
                                  "--epochs", "1", "--batch-size", "4", *CPU],
     "state.pt is incomplete or corrupt"),
    # options
    ("seed-negative", lambda w, t: train_args(w / "store.h5", t / "run", "--seeds", "-1"), "outside 0.."),
    ("seed-too-large", lambda w, t: train_args(w / "store.h5", t / "run", "--seeds", f"0,{2**63}"), "outside 0.."),
    ("seed-repeated", lambda w, t: train_args(w / "store.h5", t / "run", "--seeds", "0,0"), "repeats seed 0"),
    ("seed-not-a-number", lambda w, t: train_args(w / "store.h5", t / "run", "--seeds", "zero"), "list of integers"),
    ("pseudo-label-seed-negative", lambda w, t: ["pseudo-label", "--features", str(w / "store.h5"), "--strategy", "kmeans",
                                                 "--seed", "-1", "--out", str(t / "g.parquet"), *CPU],
     "outside 0.."),
    ("template-two-slots", lambda w, t: train_args(w / "store.h5", t / "run", "--template", "a {} {}"), "2 fields"),
    ("template-no-slot", lambda w, t: train_args(w / "store.h5", t / "run", "--template", "a photo"), "has no {}"),
    ("caption-two-slots", lambda w, t: checkpoint_args(w, w / "run" / "params.pt", t / "m.json", "--caption", "{} {}"), "2 fields"),
    ("extract-decode-unknown", lambda w, t: [*extract_args(dataset_args(w), t / "f.h5"), "--decode", "nvjpeg"],
     "is not a decoder"),
    ("extract-seed-negative", lambda w, t: [*extract_args(dataset_args(w), t / "f.h5"), "--seed", "-1"], "outside 0.."),
    ("synth-seed-negative", lambda w, t: ["data", "synth", "--out", str(t / "synth"), "--seed", "-1"], "outside 0.."),
    ("unknown-method", lambda w, t: train_args(w / "store.h5", t / "run", method="svm"), "unknown method"),
    # issue 25 items 5-7
    ("max-memory-inf", lambda w, t: train_args(w / "store.h5", t / "run", "--max-memory", "inf"), "larger than any memory"),
    ("max-memory-1e400", lambda w, t: ["pseudo-label", "--features", str(w / "store.h5"), "--strategy", "kmeans",
                                       "--max-memory", "1e400", "--out", str(t / "g.parquet"), *CPU],
     "larger than any memory"),
    ("config-not-utf8", lambda w, t: ["--config", f"{latin1_params(t)}:train.runs.zero", *train_args(w / "store.h5", t / "run")],
     "is not UTF-8 text"),
    ("params-check-not-utf8", lambda w, t: ["params", "check", str(latin1_params(t))], "is not UTF-8 text"),
    ("webdataset-empty-shard", lambda w, t: ["data", "show", "--dataset", "webdataset", "--root", str(empty_shard(t))],
     "hold no samples"),
    ("seeds-empty-item", lambda w, t: train_args(w / "store.h5", t / "run", "--seeds", "1,,2"), "list of integers"),
    ("params-check-type", lambda w, t: ["params", "check", str(params_file(
        t, "train:\n  runs:\n    adapter:\n      method: adapter\n      epochs: abc\n"))],
     "train.runs.adapter: Invalid value for '--epochs'"),
    ("params-check-output-collision", lambda w, t: ["params", "check", str(params_file(
        t, "train:\n  runs:\n    gc:\n      method: groupcoop\n  pseudo_runs:\n    gc:\n      method: groupcoop\n"))],
     "train.runs.gc and train.pseudo_runs.gc both write pipeline/metrics/DATASET/gc.json"),
    ("params-check-duplicate-key", lambda w, t: ["params", "check", str(params_file(
        t, "train:\n  runs:\n    zs:\n      method: zeroshot\n      method: linear\n"))],
     "the key 'method' appears twice in one mapping, line 5"),
    ("report-metrics-truncated", lambda w, t: ["report", str(truncate(Path(shutil.copy(w / "run" / "config.json", t / "m.json")))),
                                               "--out", str(t / "report")],
     "m.json is incomplete or corrupt"),
    # issue 25 item 3: never write over what is not the command's own output (--overwrite replaces only that),
    # never inside a dataset root, never over an input
    ("evaluate-out-foreign-file", lambda w, t: evaluate_args(w / "run", text_file(t)), "not the output of `gcctl evaluate`"),
    ("evaluate-out-foreign-file-overwrite", lambda w, t: [*evaluate_args(w / "run", text_file(t)), "--overwrite"],
     "not the output of `gcctl evaluate`"),
    ("evaluate-out-earlier-metrics", lambda w, t: evaluate_args(w / "run", earlier_metrics(w, t)), "pass --overwrite"),
    ("evaluate-predictions-foreign", lambda w, t: evaluate_args(w / "run", beside(t / "m.json", "m.predictions.parquet")),
     "is not the predictions of a `gcctl evaluate`"),
    ("evaluate-out-in-dataset", lambda w, t: checkpoint_args(w, w / "run" / "params.pt", w / "data" / "m.json"),
     "inside the dataset root"),
    ("pseudo-label-out-foreign-file", lambda w, t: pseudo_label_args(w, text_file(t)), "not the output of `gcctl pseudo-label`"),
    ("pseudo-label-out-earlier", lambda w, t: pseudo_label_args(w, earlier_groups(w, t)), "pass --overwrite"),
    ("pseudo-label-report-foreign", lambda w, t: pseudo_label_args(w, t / "g.parquet", "--report", str(text_file(t))),
     "is not the agreement report of a `gcctl pseudo-label`"),
    ("pseudo-label-figure-foreign", lambda w, t: pseudo_label_args(w, beside(t / "g.parquet", "g.report.png")),
     "is not the confusion-matrix figure"),
    ("pseudo-label-out-features", lambda w, t: pseudo_label_args(w, w / "store.h5", "--overwrite"), "is also the --features input"),
    ("fetch-out-foreign-file", lambda w, t: fetch_args(text_file(t)), "not the output of `gcctl models fetch`"),
    ("fetch-out-earlier", lambda w, t: fetch_args(checkpoint_file(t / "model.pt")), "pass --overwrite"),
    ("fetch-out-pretrained", lambda w, t: fetch_args(t / "model.pt", "--overwrite", pretrained=str(checkpoint_file(t / "model.pt"))),
     "is also the --pretrained input"),
    ("wise-out-foreign-file", lambda w, t: wise_args(checkpoint_file(t / "a.pt"), checkpoint_file(t / "b.pt"), text_file(t)),
     "not the output of `gcctl wise`"),
    ("wise-out-zeroshot", lambda w, t: wise_args(checkpoint_file(t / "a.pt"), checkpoint_file(t / "b.pt"), t / "a.pt", "--overwrite"),
     "is also the --zeroshot input"),
    ("wise-out-earlier", lambda w, t: wise_args(checkpoint_file(t / "a.pt"), checkpoint_file(t / "b.pt"), checkpoint_file(t / "w.pt")),
     "pass --overwrite"),
    ("wise-out-a-run-model", lambda w, t: wise_args(checkpoint_file(t / "a.pt"), checkpoint_file(t / "b.pt"), run_model(t), "--overwrite"),
     "not the output of `gcctl wise`"),
    ("report-out-foreign-results", lambda w, t: ["report", str(earlier_metrics(w, t)), "--out", str(foreign_report(t)), "--overwrite"],
     "not the output of `gcctl report`"),
    ("report-out-earlier", lambda w, t: ["report", str(earlier_metrics(w, t)), "--out", str(earlier_report(w, t))], "pass --overwrite"),
    ("report-out-file", lambda w, t: ["report", str(earlier_metrics(w, t)), "--out", str(text_file(t))], "is a file"),
    ("report-resamples-zero", lambda w, t: ["report", str(earlier_metrics(w, t)), "--out", str(t / "r"), "--resamples", "0"],
     "must be at least 1"),
    ("train-select-pseudo-without-val-groups", lambda w, t: train_args(w / "store.h5", t / "run", "--select-by", "acc_wg_pseudo",
                                                                       method="linear"), "needs --val-groups"),
    ("train-val-fraction-with-val-groups", lambda w, t: train_args(w / "store.h5", t / "run", "--val-groups", str(size_named_val_groups(w, t)),
                                                                   "--select-by", "acc_wg_pseudo", "--val-fraction", "0.5", method="linear"),
     "drop one of the two"),
    ("train-tie-size-named-val-groups", lambda w, t: train_args(w / "store.h5", t / "run", "--val-groups", str(size_named_val_groups(w, t)),
                                                                method="tie"),
     "named some class's groups by size"),
    ("evaluate-temperature-dfr", lambda w, t: [*evaluate_args(dfr_run(w, t), t / "m.json"), "--temperature-scale"],
     "which dfr was trained on"),
    ("train-val-fraction-zero", lambda w, t: train_args(w / "store.h5", t / "run", "--val-fraction", "0", method="dfr"),
     "outside (0, 1]"),
    ("pseudo-label-val-probe-on-val", lambda w, t: ["pseudo-label", "--features", str(w / "store.h5"), "--split", "val",
                                                    "--out", str(t / "g.parquet"), *CPU], "cannot infer them"),
    ("report-metrics-inside-out", lambda w, t: ["report", str(earlier_metrics(w, earlier_report(w, t))), "--out", str(t / "report"),
                                                "--overwrite"],
     "is inside --out"),
    ("report-page-input-inside-out", lambda w, t: ["report", str(earlier_metrics(w, t)), "--out", str(earlier_report(w, t)),
                                                   "--overwrite", "--html", "--table", str(text_file(t / "report"))],
     "notes.txt is inside --out"),
    ("table-out-dataset-metadata", lambda w, t: ["data", "table", *dataset_args(w), "--out", str(w / "data" / "manifest.csv")],
     "inside the dataset root"),
    ("table-out-foreign-file", lambda w, t: ["data", "table", *dataset_args(w), "--out", str(text_file(t))],
     "not the output of `gcctl data table`"),
    ("table-out-earlier", lambda w, t: ["data", "table", *dataset_args(w), "--out", str(earlier_table(w, t))], "pass --overwrite"),
    ("table-out-its-table", lambda w, t: ["data", "table", "--table", str(earlier_table(w, t)), "--out", str(t / "t.parquet"),
                                          "--overwrite"],
     "is also the --table input"),
    # issue 25 item 7: runs of different datasets share no table or chart
    ("report-two-datasets", lambda w, t: ["report", str(earlier_metrics(w, t)), str(earlier_metrics(w, t, "c.json", dataset="celeba")),
                                          "--out", str(t / "report")],
     "different datasets (celeba, manifest)"),
    ("report-two-tables", lambda w, t: ["report", str(earlier_metrics(w, t)), str(earlier_metrics(w, t, "c.json", dataset_fingerprint="0" * 64)),
                                        "--out", str(t / "report")],
     "different manifest tables"),
    # issue 25 transfer: a target's or the summary's file that transfer did not write is never replaced (not even
    # with --overwrite); a model.pt that is a folder, a split that is no split and an --out in a dataset root: one line
    ("transfer-out-foreign-target", lambda w, t: ["transfer", "--checkpoint", str(checkpoint_file(t / "ck" / "model.pt")),
                                                  "--target", f"source={earlier_table(w, t)}",
                                                  "--out", str(beside(folder(t, "suite") / "t.json", "t.json").parent), *CPU],
     "t.json exists and is not the output of `gcctl transfer`"),
    ("transfer-out-foreign-target-overwrite", lambda w, t: ["transfer", "--checkpoint", str(checkpoint_file(t / "ck" / "model.pt")),
                                                            "--target", f"source={earlier_table(w, t)}", "--overwrite",
                                                            "--out", str(beside(folder(t, "suite") / "t.json", "t.json").parent), *CPU],
     "t.json exists and is not the output of `gcctl transfer`"),
    ("transfer-out-a-runs-summary", lambda w, t: ["transfer", "--checkpoint", str(run_model(t)), "--target", f"source={earlier_table(w, t)}",
                                                  "--out", str(t / "ft"), *CPU],
     "summary.json exists and is not the output of `gcctl transfer`"),
    ("transfer-checkpoint-model-directory", lambda w, t: ["transfer", "--model", MICRO,
                                                          "--checkpoint", str((t / "run" / "model.pt").mkdir(parents=True) or t / "run"),
                                                          "--target", f"source={earlier_table(w, t)}", "--out", str(t / "suite"), *CPU],
     "model.pt is a directory, not a weights file"),
    ("transfer-target-not-a-split", lambda w, t: ["transfer", "--checkpoint", str(checkpoint_file(t / "ck" / "model.pt")),
                                                  "--target", f"source={earlier_table(w, t)}@tset", "--out", str(t / "suite"), *CPU],
     "'tset' is not a split"),
    ("transfer-out-in-dataset", lambda w, t: ["transfer", "--checkpoint", str(checkpoint_file(t / "ck" / "model.pt")),
                                              "--target", f"source={earlier_table(w, t)}", "--out", str(w / "data" / "suite"), *CPU],
     "inside the dataset root"),
]


def snapshot(*folders: Path) -> dict:
    """Every file under `folders`: size, modification time and content hash."""
    files = {}
    for top in folders:
        for path in sorted(top.rglob("*")):
            if path.is_file():
                files[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                files[str(path)] = "folder"
    return files


def assert_one_line_error(code, out, err, fragment) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert "Traceback" not in err and out == ""
    assert len(errors) == 1 and fragment in errors[0], err


pytestmark = pytest.mark.usefixtures("quiet_random_weights")  # conftest: models with random weights warn


@pytest.mark.parametrize("make_args, fragment", [pytest.param(args, fragment, id=name) for name, args, fragment in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, tmp_path, run_cli, make_args, fragment):
    args = make_args(world, tmp_path)
    before = snapshot(world, tmp_path)
    code, out, err = run_cli(*args)
    assert_one_line_error(code, out, err, fragment)
    assert snapshot(world, tmp_path) == before


# issue 25 item 3: --overwrite replaces the command's own earlier output (each written once, then again)
OWN_OUTPUTS = {  # command: (args(world, tmp), the output that is replaced)
    "evaluate": (lambda w, t: evaluate_args(w / "run", t / "m.json"), "m.json"),
    "pseudo-label": (lambda w, t: pseudo_label_args(w, t / "g.parquet"), "g.parquet"),
    "models-fetch": (lambda w, t: fetch_args(t / "model.pt"), "model.pt"),
    "wise": (lambda w, t: wise_args(checkpoint_file(t / "in" / "a.pt"), checkpoint_file(t / "in" / "b.pt"), t / "w.pt",
                                    "--alpha", "0.25"), "w.pt"),
    "report": (lambda w, t: ["report", str(earlier_metrics(w, t / "in")), "--out", str(t / "report")], "report/results.md"),
    "data-table": (lambda w, t: ["data", "table", *dataset_args(w), "--out", str(t / "t.parquet")], "t.parquet"),
}


@pytest.mark.parametrize("command", OWN_OUTPUTS)
def test_overwrite_replaces_ones_own_earlier_output(world, tmp_path, run_cli, command):
    make_args, output = OWN_OUTPUTS[command]
    (tmp_path / "in").mkdir()
    args = make_args(world, tmp_path)
    assert run_cli(*args)[0] == 0
    os.utime(tmp_path / output, ns=(0, 0))  # so a rewrite shows
    before = snapshot(tmp_path)
    code, out, err = run_cli(*args)
    assert_one_line_error(code, out, err, "pass --overwrite")
    assert snapshot(tmp_path) == before
    code, _, err = run_cli(*args, "--overwrite")
    assert code == 0, err
    assert (tmp_path / output).stat().st_mtime_ns > 0


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(world, tmp_path, run_cli):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, out, err = run_cli(*evaluate_args(world / "run", locked / "sub" / "m.json"))
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, out, err, "permission denied")
    assert not list(locked.iterdir())


def test_permission_error_while_writing_is_one_line(world, tmp_path, run_cli, monkeypatch):
    """As the test above, also where it runs as root: the folder refuses the write."""
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, out, err = run_cli(*evaluate_args(world / "run", tmp_path / "sub" / "m.json"))
    assert_one_line_error(code, out, err, f"permission denied: {tmp_path / 'sub'}")


def test_ctrl_c_prints_interrupted_and_exits_130(world, run_cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gcctl.store.FeatureStore.summary", interrupted)
    code, out, err = run_cli("info", str(world / "store.h5"))
    assert (code, out, err) == (130, "", "interrupted\n")


def test_an_eof_error_escaping_a_command_is_a_bug_not_an_interruption(world, monkeypatch):
    """Click reports an EOFError as Abort, the same as a Ctrl-C: it must surface as itself instead."""
    import sys

    from gcctl.cli import main

    def truncated(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr("gcctl.store.FeatureStore.summary", truncated)
    monkeypatch.setattr(sys, "argv", ["gcctl", "info", str(world / "store.h5")])
    with pytest.raises(EOFError, match="Ran out of input"):
        main()


def test_paths_outside_the_root_are_read_when_allowed(world, tmp_path, run_cli):
    write_rgb(world / "outside.png", (1, 2, 3))
    args = manifest_with_path(world, tmp_path, "../outside.png")
    code, _, err = run_cli("data", "show", *args)
    assert code == 1 and "outside --root" in err
    code, out, _ = run_cli("data", "show", *args, "--allow-outside-root", "--json")
    assert code == 0 and '"rows": 24' in out


def test_inside_paths_with_dots_are_not_outside(tmp_path):
    from gcctl.datasets import DatasetTable

    frame = pd.DataFrame({"id": range(4), "path": ["a/../b.png", "./c.png", "d..e.png", "f/../../g.png"], "split": "train",
                          "y": 0, "place": 0})
    table = DatasetTable.build(frame, root=tmp_path, dataset="manifest", class_names=["x"], attributes={"place": ["p"]},
                               source="test")
    assert table.paths_outside_root() == ["f/../../g.png"]


def test_seeds_at_the_ends_of_the_range_are_accepted():
    from gcctl.runtime import MAX_SEED, check_seeds, seed_everything

    check_seeds([0, MAX_SEED])
    seed_everything(MAX_SEED)


def test_a_truncated_predictions_file_is_one_line(tmp_path):
    from gcctl.errors import GcctlError
    from gcctl.metrics import read_predictions

    path = tmp_path / "m.predictions.parquet"
    path.write_bytes(b"PAR1\x00\x01")
    with pytest.raises(GcctlError, match="incomplete or corrupt"):
        read_predictions(path)


@pytest.mark.parametrize("make_args", [
    lambda w, out: train_args(w / "store.h5", out),
    lambda w, out: ["finetune", *dataset_args(w), "--model", MICRO, "--out", str(out), "--epochs", "1", *CPU],
    lambda w, out: ["pretrain", "--corpus", str(w / "corpus.npz"), "--out", str(out), *CPU],
], ids=["train", "finetune", "pretrain"])
def test_an_out_another_process_is_writing_is_refused_at_once(world, tmp_path, run_cli, make_args):
    from gcctl.files import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # as a first gcctl process writing `out` holds it
        code, stdout, err = run_cli(*make_args(world, out))
    assert_one_line_error(code, stdout, err, f"{out} is being written by another gcctl process (lock {out}.lock)")
    assert not list(tmp_path.iterdir())  # nothing written, and the first one's lock file is gone with its release


def test_a_lock_file_left_by_a_killed_writer_does_not_block(tmp_path):
    from gcctl.files import lock_path, output_lock

    out = tmp_path / "f.h5"
    lock_path(out).write_text("")  # the kernel freed the lock when its process died; the file stayed
    with output_lock(out):
        assert lock_path(out).exists()
    assert not lock_path(out).exists()
