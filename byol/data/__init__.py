"""Input pipeline: tfds datasets and image folders, batched for pmap.

Importing this package imports neither TensorFlow nor tfds; the names below
are loaded on first use (`load`, `dataset_info`, `DatasetInfo` and
`DatasetNotFoundError` bring in TensorFlow, `prefetch_to_device` only JAX).

Example:
  >>> from byol import data
  >>> batches = data.prefetch_to_device(data.load(
  ...     'fashion_mnist', 'train', is_training=True,
  ...     batch_dims=[jax.local_device_count(), 128]))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from byol.data.catalog import DATASETS, DEFAULT_DATA_DIR, SPLITS

_LAZY = {
    "DatasetInfo": "byol.data.pipeline",
    "dataset_info": "byol.data.pipeline",
    "default_num_threads": "byol.data.pipeline",
    "load": "byol.data.pipeline",
    "DatasetNotFoundError": "byol.data.sources",
    "prepare_dataset": "byol.data.prepare",
    "device_sharding": "byol.data.device",
    "prefetch_to_device": "byol.data.device",
}

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "SPLITS", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
