"""`gcctl train`, `gcctl evaluate`, `gcctl report`: methods on cached features, their metrics and comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from gcctl.cli.data import reads_dataset
from gcctl.clip.captions import DEFAULT_CAPTION
from gcctl.datasets import DatasetTable
from gcctl.errors import GcctlError

AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, mps.")]
MaxMemory = Annotated[Optional[str], typer.Option(
    "--max-memory", help="Keep a split's features in memory up to this size (e.g. 512M, 2G); a larger split is read "
                         "from the store in chunks, with the same results. Default: half the memory available.")]


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GcctlError(f"{option} '{text}' is not a comma-separated list of integers, e.g. 0,1,2") from None


def train(
    features: Annotated[Path, typer.Option("--features", help="The HDF5 feature store to train on.")],
    method: Annotated[str, typer.Option("--method", help=(
        "zeroshot, linear, dfr, coop, groupcoop; adapter (contrastive adapter, class labels only); training-free "
        "debiasing: orthproj, roboshot (attribute names only), tie (attribute names and val groups) or tie-star "
        "(attribute names only); see above."))],
    out: Annotated[Path, typer.Option("--out", help="The run directory to write (appears only when complete).")],
    groups: Annotated[Optional[Path], typer.Option(
        "--groups", help="Parquet group labels (id, group: the store's group ids or names, e.g. waterbird/water) for the train split; default: the store's true groups.")] = None,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, one trained model each, e.g. 0,1,2.")] = "0",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Training epochs (method default).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Samples per step.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="SGD learning rate (cosine schedule).")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="SGD weight decay.")] = None,
    balance: Annotated[Optional[str], typer.Option(
        "--balance", help="Group balancing over (class, group): none, weights (inverse frequency) or sampling.")] = None,
    select_by: Annotated[Optional[str], typer.Option(
        "--select-by", help="Validation metric that picks the kept epoch: acc_wg or acc_avg.")] = None,
    class_names: Annotated[Optional[str], typer.Option(
        "--class-names", help="Comma-separated words naming the classes in prompts (default: the store's names).")] = None,
    template: Annotated[Optional[list[str]], typer.Option(
        "--template", help="zeroshot, adapter, orthproj, roboshot, tie, tie-star: class prompt template with {} for the class; repeat for an ensemble.")] = None,
    ctx_init: Annotated[Optional[str], typer.Option(
        "--ctx-init", help="Words initialising the prompt context (their count sets its length); '' for random.")] = None,
    n_ctx: Annotated[Optional[int], typer.Option("--n-ctx", help="Context length of a random initialisation.")] = None,
    class_position: Annotated[Optional[str], typer.Option(
        "--class-position", help="Where the class name sits in the prompt: end, middle or front.")] = None,
    class_specific: Annotated[Optional[bool], typer.Option(
        "--class-specific/--shared-context", help="CoOp: one context per class, or one shared.")] = None,
    aggregation: Annotated[Optional[str], typer.Option(
        "--aggregation", help="groupcoop: a class's score from its group prompts: max, logsumexp or mean.")] = None,
    target: Annotated[Optional[str], typer.Option(
        "--target", help="groupcoop loss: prompt (the sample's group prompt among all) or class (aggregated scores).")] = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", help="groupcoop contexts start from: coop (a CoOp trained first) or words (--ctx-init).")] = None,
    attribute_prompt: Annotated[Optional[list[str]], typer.Option(
        "--attribute-prompt",
        help="orthproj, roboshot, tie, tie-star: the spurious attribute's prompts, ATTR=TEMPLATE with {value} (and "
             "optionally {class}), or ATTR:VALUE=TEXT; repeatable. Default: the dataset's own (gcctl-names.json), else "
             "'a photo of a {class} on {value}.' with the store's value names.")] = None,
    calibrate: Annotated[Optional[bool], typer.Option(
        "--calibrate/--no-calibrate", help="orthproj: Orth-Cali, the projection calibrated (closed form) so that prompts "
        "differing only in the spurious value agree; default: the plain orthogonal projection.")] = None,
    calibration_lambda: Annotated[Optional[float], typer.Option(
        "--calibration-lambda", help="orthproj --calibrate: λ, the calibration loss's weight (default 1000, the authors' code).")] = None,
    insights: Annotated[Optional[Path], typer.Option(
        "--insights", help="roboshot: a text file of insight pairs, one 'harmful|helpful<TAB>text a<TAB>text b' per line "
        "(# comments); default: harmful = a class's prompts for two values of an attribute, helpful = two classes' "
        "prompts for one value.")] = None,
    hidden_dim: Annotated[Optional[int], typer.Option(
        "--hidden-dim", help="adapter (contrastive adapter; trains a residual MLP on the image features from class "
        "labels, no train groups): bottleneck width (128).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", help="adapter: temperature of the contrastive loss (0.1).")] = None,
    num_positives: Annotated[Optional[int], typer.Option(
        "--num-positives", help="adapter: hard positives per anchor: same class, other zero-shot prediction (2048).")] = None,
    num_negatives: Annotated[Optional[int], typer.Option(
        "--num-negatives", help="adapter: hard negatives per anchor, from its nearest neighbours of other classes (2048).")] = None,
    num_neighbors_for_negatives: Annotated[Optional[int], typer.Option(
        "--num-neighbors-for-negatives", help="adapter: nearest neighbours the hard negatives come from (4096).")] = None,
    classification_weight: Annotated[Optional[float], typer.Option(
        "--classification-weight", help="adapter: weight of the cross-entropy to the class prompts; 0 = contrastive only (1).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        "--pretrained", help="methods with the text tower (all but linear and dfr): the store's model weights, if they "
        "moved since extraction "
        "(checked against the store's sha256).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a run an earlier `gcctl train` wrote at --out (once the new one is complete).")] = False,
    device: Device = "auto",
    max_memory: MaxMemory = None,
    as_json: AsJson = False,
) -> None:
    """Train a method on cached image features (one model per seed) and write a run directory.

    orthproj and roboshot train nothing and use no group labels. orthproj projects the spurious attribute's prompt directions out of the class prompts (--calibrate: calibrated);
    roboshot removes harmful insight directions from the image embeddings and boosts helpful ones.

    Both need the spurious attribute's value names (the store's, or --attribute-prompt); roboshot can take an --insights file instead.

    Example: gcctl train --features pipeline/features/waterbirds.h5 --method groupcoop --seeds 0,1,2 --out pipeline/runs/groupcoop
    """
    from gcctl.methods.runs import train_run
    from gcctl.report import plot_run_curve
    from gcctl.store import memory_budget

    options = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
        "balance": balance, "select_by": select_by, "ctx_init": ctx_init, "n_ctx": n_ctx,
        "class_position": class_position, "class_specific": class_specific, "aggregation": aggregation,
        "target": target, "init": init, "templates": template or None,
        "class_names": [name.strip() for name in class_names.split(",")] if class_names else None,
        "attribute_prompts": attribute_prompt or None, "calibrate": calibrate, "calibration_lambda": calibration_lambda,
        "insights": None if insights is None else str(insights),
        "hidden_dim": hidden_dim, "temperature": temperature, "num_positives": num_positives,
        "num_negatives": num_negatives, "num_neighbors_for_negatives": num_neighbors_for_negatives,
        "classification_weight": classification_weight,
    }
    summary = train_run(features, method, out, options=options, groups=groups, seeds=_int_list(seeds, "--seeds"),
                        device=device, pretrained=pretrained, plot=plot_run_curve, overwrite=overwrite,
                        max_memory=memory_budget(max_memory))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{method} → {out} (validation, kept epoch)")
    for column in ("seed", "epoch", "val avg %", "val worst-group %"):
        table.add_column(column, justify="right")
    for seed, row in summary["seeds"].items():
        epoch = "-" if row["best_epoch"] is None else str(row["best_epoch"])
        table.add_row(str(seed), epoch, f"{100 * row['val_acc_avg']:.1f}", f"{100 * row['val_acc_wg']:.1f}")
    Console().print(table)


@reads_dataset(optional=True)
def evaluate(
    out: Annotated[Path, typer.Option(
        "--out", help="The metrics JSON to write; X.json gets its per-sample predictions in X.predictions.parquet.")],
    run: Annotated[Optional[Path], typer.Option("--run", help="A run directory written by `gcctl train`.")] = None,
    checkpoint: Annotated[Optional[list[Path]], typer.Option(
        "--checkpoint", help="Instead of --run: weights to evaluate zero-shot on --dataset's images; a folder stands for "
        "every model.pt in it (e.g. a `gcctl finetune` run). Repeat for seeds: the metrics are their mean and std; "
        "each checkpoint's seed is read from its run's summary.json, else from a seed-N folder.")] = None,
    table: DatasetTable = None,
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    features: Annotated[Optional[Path], typer.Option(
        "--features", help="--run: evaluate on this store instead of the one the run was trained on (same model and weights).")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="--checkpoint: the architecture (default: the one the checkpoint records).")] = None,
    caption: Annotated[str, typer.Option("--caption", help="--checkpoint: each class's prompt; {} is the class name.")] = DEFAULT_CAPTION,
    name: Annotated[Optional[str], typer.Option(
        "--name", help="--checkpoint: the label in reports (default: the folder the checkpoints share).")] = None,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Evaluate every seed of a run on a split, or fine-tuned checkpoints zero-shot on a dataset's images:
    per-group table, a metrics JSON (mean and std over seeds) and the per-sample predictions (Parquet).

    Example: gcctl evaluate --run pipeline/runs/groupcoop --split test --out pipeline/metrics/groupcoop.json

    Example: gcctl evaluate --checkpoint pipeline/runs/starft --dataset waterbirds --root pipeline/data/waterbirds --out starft.json
    """
    from gcctl.runtime import refuse_directory

    refuse_directory(out)
    if (run is None) == (not checkpoint):
        raise GcctlError("give either --run (a `gcctl train` run) or --checkpoint (weights to evaluate on --dataset)")
    if run is not None:
        from gcctl.methods.runs import evaluate_run

        if table is not None:
            raise GcctlError("--run evaluates on its feature store; --dataset and --root go with --checkpoint")
        metrics = evaluate_run(run, split, features=features, device=device, out=out)
    else:
        from gcctl.methods.finetune.evaluate import evaluate_checkpoints

        if table is None:
            raise GcctlError("--checkpoint needs the images to evaluate on: --dataset and --root")
        metrics = evaluate_checkpoints(checkpoint, table, split, model_name=model, caption=caption, name=name,
                                       device=device, out=out)
    if as_json:
        typer.echo(json.dumps(metrics, indent=2))
        return
    from rich.console import Console

    from gcctl.report import group_table

    Console().print(group_table(metrics))


def report(
    metrics: Annotated[list[Path], typer.Argument(
        help="Metrics JSON files written by `gcctl evaluate`, one per run; or transfer suites' summary.json (`gcctl transfer`).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for per_group.png, curves.png and results.md.")],
    readme: Annotated[Optional[Path], typer.Option(
        "--readme", help="Also put the table into this file between <!-- results:NAME:start/end --> markers, NAME = the --out folder's name.")] = None,
    as_json: AsJson = False,
) -> None:
    """Compare evaluated runs: per-group accuracy chart, training curves (PNG) and a Markdown table; or transfer
    suites (their summary.json): the suite summaries side by side (Markdown) and as bars (suites.png).

    Example: gcctl report pipeline/metrics/zeroshot.json pipeline/metrics/coop.json pipeline/metrics/groupcoop.json --out pipeline/report

    Example: gcctl report pipeline/transfer/*/summary.json --out pipeline/report/transfer --readme README.md
    """
    from gcctl.report import comparison_table, markdown_table, suite_table, update_readme, write_report

    written = write_report(metrics, out)
    if readme is not None:
        update_readme(readme, out.name, written["markdown"] if "suites" in written else markdown_table(written["runs"]))
    if as_json:
        typer.echo(json.dumps(written["paths"], indent=2))
        return
    from rich.console import Console

    console = Console()
    for table in [suite_table(summary) for summary in written["suites"]] if "suites" in written else [comparison_table(written["runs"])]:
        console.print(table)
    for path in written["paths"].values():
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(evaluate)
    app.command()(report)
