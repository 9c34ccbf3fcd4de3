"""Input pipeline: tfds datasets and image folders, batched for pmap.

This package's own names are pure Python; TensorFlow comes with its modules:
`byol.data.pipeline` (`load`, `dataset_info`), `byol.data.prepare`; JAX with
`byol.data.device` (`prefetch_to_device`).
"""

from byol.data.catalog import DATASETS, DEFAULT_DATA_DIR, SPLITS, DatasetNotFoundError

__all__ = ["DATASETS", "DEFAULT_DATA_DIR", "SPLITS", "DatasetNotFoundError"]
