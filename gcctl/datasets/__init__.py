"""Every dataset read into one canonical table (see `table.DatasetTable`).

Adapters read a source layout as it ships; `load_dataset` picks one by name. This package knows nothing
of CLIP, and imports torch only to read a dataset through torchvision (image folders, CIFAR, STL10):
`gcctl.datasets.images` holds the torch Dataset over a table.
"""

from gcctl.runtime import lazy_exports

_LAZY = {
    "DATASETS": "registry",
    "LAYOUTS": "registry",
    "adapter_options": "registry",
    "load_dataset": "registry",
    "NAMES_SIDECAR": "table",
    "SPLITS": "table",
    "DatasetTable": "table",
    "GroupVocabulary": "groups",
    "ClassSubset": "subset",
}
__getattr__ = lazy_exports(__name__, _LAZY)
__all__ = sorted(_LAZY)
