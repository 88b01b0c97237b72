"""gcctl: make CLIP classifiers robust to spurious correlations.

The Python API; each name imports its own module on first use, so `import gcctl` is cheap:

- datasets: `load_dataset(layout, root, **options)` -> `DatasetTable`, the canonical table;
- models: `build_clip(model, pretrained)` -> `ClipBundle`, `save_checkpoint`, `ModelRef`;
- features: `extract(table, bundle, out)` -> an HDF5 store, read with `FeatureStore`;
- groups: `pseudo_label(features, strategy, out)`, the train split's inferred groups;
- methods on features: `fit(features, method, options=...)` -> a classifier in memory; `train_run`, `evaluate_run`
  for run directories (what `gcctl train` and `gcctl evaluate` write);
- whole models: `gcctl.finetune.finetune(table, out, model_name=..., pretrained=..., config=FinetuneConfig(...))`,
  `wise_ft`, `evaluate_checkpoints`, `evaluate_suite` (StarFT's transfer protocol);
- metrics: `compute_metrics(pred, y, group, vocabulary)`, `metrics_from_predictions`;
- `GcctlError`: every error a user can cause, with a one-line message.
"""

from gcctl.runtime import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "GcctlError": "errors",
    "DatasetTable": "datasets.table",
    "GroupVocabulary": "datasets.groups",
    "load_dataset": "datasets.registry",
    "ClipBundle": "clip.factory",
    "build_clip": "clip.factory",
    "ModelRef": "clip.reference",
    "save_checkpoint": "clip.checkpoint",
    "FeatureStore": "store.format",
    "extract": "store.extraction",
    "pseudo_label": "pseudolabel.labeling",
    "fit": "methods.runs",
    "train_run": "methods.runs",
    "evaluate_run": "methods.runs",
    "FinetuneConfig": "finetune.config",
    "wise_ft": "finetune.wise",
    "evaluate_checkpoints": "evaluation.checkpoints",
    "evaluate_suite": "evaluation.transfer",
    "compute_metrics": "metrics",
    "metrics_from_predictions": "metrics",
}
__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = ["__version__", *sorted(_LAZY)]
