"""Prepares a dataset in the data directory: ``python -m byol.data.prepare NAME``.

* fashion_mnist: builds it from the IDX files (`make fashion_mnist` fetches
  them); offline.
* imagenet2012: tfds manual download; ILSVRC2012_img_train.tar and
  ILSVRC2012_img_val.tar must be in ``<data_dir>/downloads/manual/``.
* cifar10, cifar100, stl10, imagenette: tfds downloads them (needs internet).

JPEG datasets (imagenet2012, imagenette) are written as ArrayRecord, which
gives the random access that exact resume and host crops use; one already
prepared as TFRecord gets ArrayRecord shards added next to its own.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import logging
import os
import sys

from byol.data import catalog


def _work_around_tfds_importlib_resources() -> None:
    # tfds 4.9.10 refers to the `importlib_resources` backport while computing
    # a builder's code path, but declares it only for Python < 3.9; the
    # standard library module has the attribute it needs (`abc.Traversable`).
    try:
        importlib.import_module("importlib_resources")
    except ImportError:
        sys.modules["importlib_resources"] = importlib.resources


def prepare_dataset(dataset: str, data_dir: str = catalog.DEFAULT_DATA_DIR) -> str:
    """Downloads (where tfds can) and prepares a dataset; returns its directory."""
    if dataset.startswith(catalog.IMAGE_FOLDER_PREFIX):
        raise ValueError("dataset image_folder:... needs no preparation")
    spec = catalog.spec(dataset)
    import tensorflow_datasets as tfds

    from byol.data import fashion_mnist

    if dataset == "fashion_mnist":
        return os.fspath(fashion_mnist.prepare(data_dir).data_dir)
    _work_around_tfds_importlib_resources()
    builder = tfds.builder(dataset, data_dir=data_dir)
    file_format = None if spec.fixed_size else "array_record"
    if builder.is_prepared():
        formats = builder.info.available_file_formats()
        if file_format and tfds.core.FileFormat.ARRAY_RECORD not in formats:
            add_array_record_shards(builder)
        return os.fspath(builder.data_dir)
    builder.download_and_prepare(
        file_format=file_format,
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.join(data_dir, "downloads", "manual")
        ),
    )
    return os.fspath(builder.data_dir)


def add_array_record_shards(builder) -> None:
    """Writes an ArrayRecord copy of each TFRecord shard next to it.

    The records are copied byte for byte, shard by shard, and the format is
    added to the dataset's ``alternative_file_formats`` (tfds's own
    ``convert_format`` needs Apache Beam). Doubles the dataset's disk use.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    adapter = tfds.core.file_adapters.ArrayRecordFileAdapter
    for split_info in builder.info.splits.values():
        template = split_info.filename_template
        num_shards = len(split_info.shard_lengths)
        for shard in range(num_shards):
            source = template.sharded_filepath(shard_index=shard, num_shards=num_shards)
            target = template.replace(
                filetype_suffix=adapter.FILE_SUFFIX
            ).sharded_filepath(shard_index=shard, num_shards=num_shards)
            if target.exists():
                continue
            logging.info("Writing %s.", target)
            records = tf.data.TFRecordDataset(os.fspath(source)).as_numpy_iterator()
            partial = target.with_name(target.name + ".incomplete")
            adapter.write_examples(partial, ((None, r) for r in records))
            partial.rename(target)
    builder.info.add_alternative_file_format(adapter.FILE_SUFFIX)
    builder.info.write_dataset_info_json(builder.data_dir)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m byol.data.prepare NAME [--data_dir DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help=", ".join(catalog.SPECS))
    parser.add_argument("--data_dir", default=catalog.DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(prepare_dataset(args.dataset, args.data_dir))


if __name__ == "__main__":
    main()
