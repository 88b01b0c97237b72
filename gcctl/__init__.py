"""gcctl: make CLIP classifiers robust to spurious correlations."""

__version__ = "0.1.0"
