"""Does `gcctl discover` find each benchmark's spurious attribute with no attribute label, and what do the
methods that need it as text score with the discovered words instead of the given ones? (issue 23, item 4)

Reads what `dvc repro` wrote (the stores, the ERM and zero-shot runs, the training-free fits' metrics) and, in
a scratch folder, per benchmark:
- discovers with the synthetic world's vocabulary (35 candidates), flagged three ways: each class's smaller
  k-means cluster on train (no prediction), the errors of the ERM run (`linear`) on val, those of the zero-shot
  classifier on val (class labels only, never test's);
- counts a class as found when one of its top 3 words is a value of the benchmark's spurious attribute;
- fits orthproj, tie-star (`--attribute-prompt`) and roboshot (`--insights`) with the ERM-errors discovery (the
  k-means one where the ERM makes no validation error in a class to explain; the rule fixed before any run) and
  evaluates them on test, beside the pipeline's runs of the same methods on the given attribute text.

    python bench/discovery.py --readme docs/results.md    # after `dvc repro`; the results:discovery block
    python bench/discovery.py --pipeline /elsewhere/pipeline   # print it for another run's outputs
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml

from gcctl.discovery import OPTIONS_FILE, discover
from gcctl.errors import GcctlError
from gcctl.methods.runs import evaluate_run, train_run
from gcctl.store import FeatureStore

BENCHMARKS = ("waterbirds", "scattered", "multiceleba")
TOP = 3
CLUSTER_SOURCE, ERM_SOURCE = "k-means minority cluster (train)", "ERM errors (val)"
METHODS = {"orthproj": "attribute_prompts", "tie-star": "attribute_prompts", "roboshot": "insights"}


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _found(result: dict, spurious: set[str]) -> str:
    """'k/C' classes with a spurious value among their top words, and each class's top words."""
    found = sum(any(item["word"] in spurious for item in entry["ranked"][:TOP]) for entry in result["classes"].values())
    words = "; ".join(f"{name}: {', '.join(item['word'] for item in entry['ranked'][:TOP])}"
                      for name, entry in result["classes"].items())
    return f"{found}/{len(result['classes'])} ({words})"


def _val_predictions(run: Path, scratch: Path) -> Path:
    out = scratch / f"{run.parent.name}-{run.name}-val.json"
    evaluate_run(run, "val", out=out, device="cpu")
    return out.with_name(out.stem + ".predictions.parquet")


def _discoveries(pipeline: Path, name: str, scratch: Path) -> dict:
    store = pipeline / "features" / f"{name}.h5"
    sources = {CLUSTER_SOURCE: None,
               ERM_SOURCE: _val_predictions(pipeline / "runs" / name / "linear", scratch),
               "zero-shot errors (val)": _val_predictions(pipeline / "fits" / name / "zeroshot", scratch)}
    found = {}
    for label, predictions in sources.items():
        out = scratch / f"{name}-{len(found)}"
        try:
            found[label] = (discover(store, out, predictions=predictions, device="cpu", top=10), out)
        except GcctlError as error:  # a source without errors in a class: said in the table
            found[label] = (str(error), None)
    return found


def _with_discovered(pipeline: Path, name: str, folder: Path, scratch: Path) -> dict[str, float]:
    """Test worst-group accuracy of each method fitted with the discovered attribute text."""
    options = yaml.safe_load((folder / OPTIONS_FILE).read_text())
    scores = {}
    for method, key in METHODS.items():
        if key not in options:
            continue
        given = {option.replace("attribute_prompt", "attribute_prompts"): value for option, value in options[key].items()}
        run = scratch / f"{name}-{method}"
        train_run(pipeline / "features" / f"{name}.h5", method, run, options=given, device="cpu")
        scores[method] = evaluate_run(run, "test", device="cpu")["acc_wg"]["mean"]
    return scores


def _given(pipeline: Path, name: str, method: str) -> str:
    path = pipeline / "metrics" / name / f"{method}.json"
    return _percent(json.loads(path.read_text())["acc_wg"]["mean"]) if path.is_file() else "–"


def discovery_markdown(pipeline: Path) -> str:
    found_lines = ["| benchmark | spurious attribute's values | flagged by | classes found in top 3 (their top words) |",
                   "|---|---|---|---|"]
    method_lines = ["| benchmark | method | worst-group, given attribute text | worst-group, discovered | discovered from |",
                    "|---|---|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for name in BENCHMARKS:
            with FeatureStore(pipeline / "features" / f"{name}.h5") as store:
                attributes = store.vocabulary.attributes
            spurious = {value for values in attributes.values() for value in values}
            shown = "; ".join(f"{attribute}: {', '.join(values)}" for attribute, values in attributes.items())
            discoveries = _discoveries(pipeline, name, scratch)
            for label, (result, _) in discoveries.items():
                cell = _found(result, spurious) if isinstance(result, dict) else f"– ({result.split(';')[0]})"
                found_lines.append(f"| {name} | {shown} | {label} | {cell} |")
            source = next(label for label in (ERM_SOURCE, CLUSTER_SOURCE) if discoveries[label][1] is not None)
            scores = _with_discovered(pipeline, name, discoveries[source][1], scratch)
            for method in METHODS:
                discovered = _percent(scores[method]) if method in scores else "–"
                method_lines.append(f"| {name} | {method} | {_given(pipeline, name, method)} | {discovered} | {source} |")
    return ("Spurious-attribute discovery with the synthetic world's vocabulary (`gcctl discover`, no attribute "
            "label read; `python bench/discovery.py`):\n\n" + "\n".join(found_lines)
            + "\n\nTest worst-group accuracy (%) of the methods that need the attribute as text, with the words "
            "discovered instead of the dataset's names:\n\n" + "\n".join(method_lines) + "\n")


if __name__ == "__main__":
    from blocks import block_main  # bench/ is on the path when this runs as a script

    block_main(__doc__.split("\n\n")[0], "discovery", discovery_markdown)
