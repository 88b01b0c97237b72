"""Pseudo group labelling: infer the training samples' groups when only class labels (and perhaps a
group-annotated validation split) are known, and measure how well the inferred groups agree with the truth."""

from gcctl.runtime import lazy_exports

_LAZY = {"GROUP_FILE_COLUMNS": "labeling", "STRATEGIES": "labeling", "pseudo_label": "labeling"}
__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
