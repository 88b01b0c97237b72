"""Pseudo group labelling: infer the training samples' groups when only class labels (and perhaps a
group-annotated validation split) are known, and measure how well the inferred groups agree with the truth."""

from gcctl.groups.labeling import GROUP_FILE_COLUMNS, STRATEGIES, pseudo_label

__all__ = ["GROUP_FILE_COLUMNS", "STRATEGIES", "pseudo_label"]
