"""Run directories: train a method on a feature store over several seeds, save it, and evaluate it later.

A run directory holds
- `config.json`: the method, its resolved options, the seeds, the store's model reference (its weights path
  relative to the run directory) and other provenance, its group vocabulary, the source of the train groups and
  the splits whose true group labels the run used (`group_supervision`);
- `params.pt`: per seed, the kept classifier and the learned parameters (e.g. prompt contexts);
- `dvclive/`: the curves as DVCLive logs (gcctl.curves), metric `seed-S/<name>` per seed: per epoch the loss,
  validation accuracy and worst-group accuracy (none for a method without training);
- `curve.png`: that curve drawn by the `plot` given to `train_run` (the CLI gives `gcctl.report.plot_run_curve`);
- `selection.json`: per seed, the kept epoch and its validation metrics (and GroupCoOp's prompts).

Each epoch's seconds go beside the folder, in `<run>.timings.json` (gcctl.files.timings_path): the folder itself
is a pure function of its inputs.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from gcctl import __version__
from gcctl.clip.reference import ModelRef
from gcctl.curves import CURVE_DIR, write_seeded_curve
from gcctl.datasets.groups import GroupVocabulary, check_val_fraction
from gcctl.errors import GcctlError
from gcctl.files import (
    atomic_directory,
    check_output,
    identity_differences,
    load_torch_file,
    output_lock,
    read_json,
    sha256_file,
    write_json,
    write_timings,
)
from gcctl.methods import get_method, group_supervision, make_config, split_groups_read
from gcctl.methods.base import Classifier, FitResult
from gcctl.methods.data import check_split_groups, load_split, load_training_data
from gcctl.metrics import (
    PSEUDO_SELECTION,
    check_evaluation_out,
    fit_temperature,
    metrics_from_predictions,
    predictions_frame,
    seed_key,
    write_evaluation,
)
from gcctl.runtime import check_seeds, resolve_device, seed_everything
from gcctl.store import FeatureStore, check_memory_budget


def train_run(
    features: str | os.PathLike,
    method: str,
    out: str | os.PathLike,
    *,
    options: dict | None = None,
    groups: str | os.PathLike | None = None,
    seeds: Sequence[int] = (0,),
    device: str = "auto",
    pretrained: str | None = None,
    plot: Callable[[list[dict], Path], None] | None = None,
    overwrite: bool = False,
    max_memory: int | None = None,
    minority_per_group: int | None = None,
    val_groups: str | os.PathLike | None = None,
    val_fraction: float = 1.0,
    val_seed: int = 0,
) -> dict:
    """Train `method` on the store `features` once per seed and write the run directory `out`, with
    `curve.png` drawn by `plot(curve records, path)` when given. An earlier run in `out` is replaced only
    with `overwrite`, and only once the new one is complete; anything else there never.

    A method with the text tower rebuilds the store's model, from `pretrained` when given (its weights moved).
    A split larger than `max_memory` bytes (None: no limit) is read from the store batch by batch, with the
    same results. `minority_per_group` keeps at most that many training samples of each minority group, drawn
    per seed (`cut_minority_groups`). `val_groups` (a group file of the validation split) replaces the validation
    groups wherever the method reads them: `--select-by acc_wg_pseudo`, DFR's balancing, TIE's translation.
    `val_fraction` < 1 cuts the validation split to that share of each group, drawn with `val_seed` (a
    validation-label budget, `load_training_data`). Returns a summary: per seed, the kept epoch and its validation accuracy and worst-group accuracy.
    """
    config = make_config(method, options or {})  # an unknown method is refused here
    if not seeds:
        raise GcctlError("--seeds is empty; give at least one seed, e.g. --seeds 0")
    check_seeds(seeds)
    out = Path(out)
    with output_lock(out):
        check_output(out, "train", is_own=lambda path: (path / "config.json").is_file(), replace_own=overwrite)
        return _train_seeds(features, method, config, out, (groups, val_groups), seeds, resolve_device(device), pretrained,
                            plot, max_memory, minority_per_group, (val_fraction, val_seed))


def fit(
    features: str | os.PathLike,
    method: str,
    *,
    options: dict | None = None,
    groups: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    pretrained: str | None = None,
    max_memory: int | None = None,
    minority_per_group: int | None = None,
    val_groups: str | os.PathLike | None = None,
    val_fraction: float = 1.0,
    val_seed: int = 0,
) -> FitResult:
    """Train `method` on the store `features` with one seed, in memory, writing nothing: the result's
    `classifier` scores a store's features (`classifier.predict`, `classifier.scores`), its `selection` says
    which epoch it kept. Options, groups, val_groups, val_fraction, val_seed, pretrained, max_memory and
    minority_per_group are those of `train_run`."""
    config = make_config(method, options or {})
    check_seeds([seed])
    torch_device = resolve_device(device)
    with FeatureStore(features) as store:
        data, _, bundle = _prepare(store, method, config, (groups, val_groups), torch_device, pretrained, max_memory,
                                   (val_fraction, val_seed))
        seed_everything(seed)
        return get_method(method).fit(data.with_minority_cut(minority_per_group, seed), config, seed=seed,
                                      bundle=bundle, device=torch_device)


def _check_val_groups(method: str, config, val_groups) -> None:
    """A selection rule must read the validation groups the run has: pseudo ones under acc_wg_pseudo only."""
    select_by = getattr(config, "select_by", None)
    if select_by == PSEUDO_SELECTION and val_groups is None:
        raise GcctlError("--select-by acc_wg_pseudo keeps the epoch of best worst pseudo-group accuracy and needs "
                         "--val-groups (`gcctl pseudo-label --split val` writes one); or choose acc_worst_class")
    if val_groups is None:
        return
    if select_by == "acc_wg":
        raise GcctlError("with --val-groups the validation groups are pseudo-groups; say --select-by acc_wg_pseudo "
                         "(or drop --val-groups to select on the true validation groups)")
    if "val" not in split_groups_read(method, config):
        raise GcctlError(f"method {method} with these options reads no validation group, so --val-groups would "
                         "change nothing; drop it or add --select-by acc_wg_pseudo")


def _check_val_budget(method: str, config, val_fraction: float, val_groups) -> None:
    """A validation-label budget cuts true validation groups that the run reads."""
    check_val_fraction(val_fraction, budget=True)
    if val_fraction == 1.0:
        return
    if val_groups is not None:
        raise GcctlError("--val-fraction budgets the true validation group labels, and --val-groups replaces them with "
                         "pseudo-groups that read none; drop one of the two")
    if "val" not in split_groups_read(method, config):
        raise GcctlError(f"method {method} with these options reads no validation group, so --val-fraction would "
                         "change nothing; drop it")


def _prepare(store: FeatureStore, method: str, config, groups, device, pretrained, max_memory, val_budget=(1.0, 0)):
    """The training data, the store's model reference, and the model itself for methods with a text tower;
    `groups` is the (train, validation) group files, each None for the store's own groups; `val_budget` the
    validation cut's (fraction, seed)."""
    if pretrained and not get_method(method).uses_clip:
        raise GcctlError(f"--pretrained applies to methods with the text tower, not to {method}; drop it")
    train_groups, val_groups = groups
    _check_val_groups(method, config, val_groups)
    if max_memory is not None and hasattr(config, "batch_size"):  # a training-free method has no batch
        check_memory_budget(max_memory, config.batch_size, store.embed_dim)
    _check_val_budget(method, config, val_budget[0], val_groups)
    data = load_training_data(store, device, train_groups, max_memory, val_groups, *val_budget)
    if getattr(config, "select_by", None) == "acc_worst_class" and len(torch.unique(data.val.y)) < 2:
        raise GcctlError("--select-by acc_worst_class compares classes and the validation split holds one; "
                         "choose acc_avg, or a store whose validation split has every class")
    reference = store.model_ref()
    bundle = None
    if get_method(method).uses_clip:
        from gcctl.clip.factory import (
            build_from_reference,  # here: only methods with a text tower build one
        )

        bundle = build_from_reference(reference, recorded_in=f"feature store {store.path}", pretrained=pretrained,
                                      embed_dim=store.embed_dim, device=device)
    return data, reference, bundle


def _train_seeds(features, method: str, config, out: Path, groups, seeds, device, pretrained, plot, max_memory,
                 minority_per_group, val_budget) -> dict:
    """`train_run` once its --out is this process's; the store stays open while a split may be read from it."""
    spec = get_method(method)
    with FeatureStore(features) as store:
        data, reference, bundle = _prepare(store, method, config, groups, device, pretrained, max_memory, val_budget)
        # A training-free method gives one model whatever the seed: fit once and recorded without a seed, so
        # reports show "-" rather than a spread of zero over identical copies.
        fitted_seeds = list(seeds) if spec.trains else [None]
        results = {}
        for seed in fitted_seeds:
            draw_seed = 0 if seed is None else seed
            seed_everything(draw_seed)
            results[seed] = spec.fit(data.with_minority_cut(minority_per_group, draw_seed), config, seed=seed,
                                     bundle=bundle, device=device)
    run_config = {
        "method": method,
        "config": asdict(config),
        "seeds": fitted_seeds,
        "device": str(device),
        "model_ref": reference.recorded_for(out).to_dict(),
        "features": {"path": str(features), "provenance": {k: v for k, v in data.provenance.items() if k != "model_ref"}},
        "groups": _group_source(groups[0]),
        "val_groups": _group_source(groups[1]),
        "group_supervision": group_supervision(method, config, data.train_group_splits, data.val_group_splits),
        "minority_per_group": minority_per_group,
        "val_fraction": val_budget[0],
        "val_seed": val_budget[1],
        "vocabulary": data.vocabulary.to_dict(),
        "gcctl_version": __version__,
    }
    _write_run(out, run_config, results, plot)
    return {
        "run": str(out),
        "method": method,
        "seeds": {
            seed_key(seed): {"best_epoch": r.selection.get("best_epoch"), "val_acc_avg": r.selection["val_metrics"]["acc_avg"], "val_acc_wg": r.selection["val_metrics"]["acc_wg"]}
            for seed, r in results.items()
        },
    }


def _group_source(path) -> dict:
    return {"source": "file", "path": str(path), "sha256": sha256_file(path)} if path else {"source": "store"}


def _write_run(out: Path, run_config: dict, results: dict, plot: Callable[[list[dict], Path], None] | None) -> None:
    """Write everything into a sibling `.partial` directory, then swap it in: a failure leaves `out` untouched."""
    with atomic_directory(out) as tmp:
        params = {
            seed: {"classifier": r.classifier.state(), "learned": {k: v.detach().cpu() for k, v in r.learned.items()}}
            for seed, r in results.items()
        }
        torch.save(params, tmp / "params.pt")
        write_json(tmp / "config.json", run_config)
        if any(r.curve for r in results.values()):  # a method without training (zeroshot) has no curve
            write_seeded_curve(tmp / CURVE_DIR, {seed: r.curve for seed, r in results.items()}, step_key="epoch")
            if plot is not None:
                plot([{"seed": seed, **record} for seed, r in results.items() for record in r.curve], tmp / "curve.png")
        write_json(tmp / "selection.json", {seed_key(seed): r.selection for seed, r in results.items()})
    if any(r.epoch_seconds for r in results.values()):
        write_timings(out, {"epoch_seconds": {seed_key(seed): r.epoch_seconds for seed, r in results.items()}})


def run_directories(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The runs `paths` name: each a run directory, or a folder whose run directories (sorted by name) it stands for;
    two runs of one name would write one metrics file, so they are refused."""
    runs = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            runs.append(path)
            continue
        inside = sorted(child for child in path.iterdir() if (child / "config.json").is_file()) if path.is_dir() else []
        if not inside:
            raise GcctlError(f"{path} is neither a run directory nor a folder of runs (no config.json); "
                             "create runs with `gcctl train`")
        runs += inside
    names = [run.name for run in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise GcctlError(f"two runs are named {repeated[0]} ({', '.join(str(r) for r in runs if r.name == repeated[0])}); "
                         "their metrics would share one file: evaluate them into different --out folders")
    return runs


def evaluate_runs(runs: Sequence[str | os.PathLike], split: str, out_dir: str | os.PathLike, *, device: str = "auto",
                  overwrite: bool = False, temperature_scale: bool = False) -> dict[str, dict]:
    """`evaluate_run` of every run `runs` name (`run_directories`) in one process, each written to
    `out_dir/<run>.json` with its predictions beside it; every output is checked before the first is written."""
    runs, out_dir = run_directories(runs), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GcctlError(f"--out {out_dir} is a file; with several runs --out is the folder their metrics go to")
    outs = {run: out_dir / f"{run.name}.json" for run in runs}
    for out in outs.values():
        check_evaluation_out(out, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {run.name: evaluate_run(run, split, device=device, out=out, overwrite=overwrite, temperature_scale=temperature_scale)
            for run, out in outs.items()}


def read_run_config(run: str | os.PathLike) -> dict:
    path = Path(run) / "config.json"
    if not path.is_file():
        raise GcctlError(f"{run} is not a run directory (no config.json); create one with `gcctl train`")
    return read_json(path)


def _check_same_features(run: Path, trained: ModelRef, store: FeatureStore, vocabulary: GroupVocabulary) -> None:
    differing = identity_differences(trained.identity(), store.model_ref().identity())
    if differing:
        raise GcctlError(f"run {run} was trained on other features than {store.path} ({differing}); evaluate it on a store of the same model and weights")
    if store.class_names != vocabulary.class_names:
        raise GcctlError(f"run {run} predicts classes {vocabulary.class_names} but {store.path} has {store.class_names}; use a store of the same dataset")


def evaluate_run(
    run: str | os.PathLike,
    split: str = "test",
    *,
    features: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    temperature_scale: bool = False,
) -> dict:
    """Metrics of every seed of a run on `split` of its store (or of `features`), aggregated as mean and std;
    with `out`, also written there, with the per-sample predictions beside it (`gcctl.metrics.write_evaluation`):
    over an earlier evaluation only with `overwrite`, over anything else never. With `temperature_scale`, each
    seed's scores are divided by a temperature fitted on the store's validation split first (the predictions
    keep their class; the recorded scores are the scaled ones, so the Parquet alone recomputes the calibration)."""
    if out is not None:
        check_evaluation_out(out, overwrite)
    run = Path(run)
    run_config = read_run_config(run)
    if temperature_scale:
        _check_temperature_scaling(run_config["method"], split)
    params = load_torch_file(run / "params.pt")
    features = features or run_config["features"]["path"]
    device = resolve_device(device)
    trained = ModelRef.from_dict(run_config["model_ref"], anchor=run)
    with FeatureStore(features) as store:
        # Runs written before the vocabulary was recorded name their classes at the top level.
        trained_vocabulary = GroupVocabulary.from_dict(run_config.get("vocabulary", run_config), str(run / "config.json"))
        _check_same_features(run, trained, store, trained_vocabulary)
        check_split_groups(store, split)
        vocabulary = store.vocabulary
        data = load_split(store, split, device)
        ids = store.ids[store.split_index(split)]
        provenance = store.provenance
        classifiers = {seed: Classifier.from_state(state["classifier"], device) for seed, state in sorted(params.items())}
        scores = {seed: classifier.scores(data.features) for seed, classifier in classifiers.items()}
        temperatures = _fit_temperatures(store, classifiers, device) if temperature_scale else None
    if temperatures is not None:
        scores = {seed: seed_scores / temperatures[seed_key(seed)] for seed, seed_scores in scores.items()}
    predictions = predictions_frame(ids, data.y.cpu().numpy(), data.group.cpu().numpy(), split, scores, vocabulary)
    where = {"run": run, "split": split, "seeds": sorted(params), "features": features, "temperature": temperatures}
    metrics = {**metrics_from_predictions(predictions, vocabulary), "provenance": _evaluation_provenance(run_config, provenance, where)}
    if out is not None:
        write_evaluation(out, metrics, predictions, vocabulary)
    return metrics


def _evaluation_provenance(run_config: dict, store_provenance: dict, where: dict) -> dict:
    """What an evaluation records of the run (`run_config`), its store, and itself (`where`)."""
    return {
        "run": where["run"].name,
        "run_dir": str(where["run"]),
        "method": run_config["method"],
        "split": where["split"],
        "seeds": where["seeds"],
        "features": str(where["features"]),
        "model_ref": run_config["model_ref"],  # its weights path relative to run_dir
        "embed_dim": store_provenance.get("embed_dim"),
        "dataset": store_provenance.get("dataset"),
        "dataset_fingerprint": store_provenance.get("dataset_fingerprint"),
        "train_groups": run_config["groups"],
        "val_groups": run_config.get("val_groups", {"source": "store"}),
        "group_supervision": run_config.get("group_supervision"),  # None: a run from before it was recorded
        "select_by": run_config["config"].get("select_by"),  # None: a training-free method, nothing selected
        "minority_per_group": run_config.get("minority_per_group"),  # None: every training image
        "val_fraction": run_config.get("val_fraction", 1.0),  # the validation-label budget
        "temperature": where["temperature"],  # None: the scores as the classifier gives them
    }


def _check_temperature_scaling(method: str, split: str) -> None:
    """The temperature is fitted on the validation split, so neither that split nor a model fitted on it is scored."""
    if split == "val":
        raise GcctlError("--temperature-scale fits its temperature on the validation split; evaluate --split test "
                         "(or train), or drop --temperature-scale")
    if get_method(method).trains_on == "val":
        raise GcctlError(f"--temperature-scale fits its temperature on the validation split, which {method} was trained "
                         "on, so it would be fitted in-sample; drop --temperature-scale for this run")


def _fit_temperatures(store: FeatureStore, classifiers: dict, device: torch.device) -> dict[str, float]:
    """Each seed's temperature, fitted on the class labels of the store's validation split."""
    if len(store.split_index("val")) == 0:
        raise GcctlError(f"--temperature-scale fits on the validation split and {store.path} has none; drop --temperature-scale")
    val = load_split(store, "val", device)
    y = val.y.cpu().numpy()
    return {seed_key(seed): fit_temperature(classifier.scores(val.features), y) for seed, classifier in classifiers.items()}
