r"""How fast the JPEG input pipeline runs here, stage by stage (`make benchmark_input`).

    .venv/bin/python -m experiments.benchmark_input [--images=2000] \
        [--folder=workdirs/benchmark_input/images] [--json_out=FILE]

Builds (once) a folder of ImageNet-sized JPEGs (500 x 375, quality 90) whose
content has the statistics of photographs (a 1/f amplitude spectrum, edges,
correlated colour), not noise, so they compress and decode like photos. Then
times each stage of `byol.data.pipeline.jpeg_dataset` in pre-training mode
(two 224 px views per image), on this process's threads:

* plan: the batch indices of each step (numpy, one call per batch);
* read: the file bytes, read by the graph;
* decode: decode fused with the random crop, bicubic resize (per core: one
  thread; per process: every thread);
* batch: the whole graph to numpy batches, and batching alone (crops already
  decoded);
* load: `byol.data.pipeline.load`, what training consumes.

It prints img/s per stage, the slowest stage, and the cores an 8-GPU node
needs to feed 1,200 img/s per GPU.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from absl import app, flags

from byol import runtime

_IMAGES = flags.DEFINE_integer("images", 2000, "JPEGs in the folder.")
_FOLDER = flags.DEFINE_string(
    "folder", "workdirs/benchmark_input/images", "Where the JPEGs are (made once)."
)
_SECONDS = flags.DEFINE_float("seconds", 6.0, "Timed seconds per stage.")
_JSON = flags.DEFINE_string("json_out", None, "Also write the figures here.")
BATCH = 256
SIZE = 224
GPU_RATE = 1200  # img/s a GPU consumes (the ResNet-50 goal on an H100)


def photo_like(rng: np.random.Generator, height=375, width=500) -> np.ndarray:
    """A uint8 RGB image with a photograph's 1/f spectrum, edges and colour."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius**1.1  # natural images: ~1/f^(1..1.2)
    base = []
    for _ in range(3):
        phase = rng.uniform(0, 2 * np.pi, radius.shape)
        field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
        base.append(field / field.std())
    mixing = rng.normal(size=(3, 3)) * 0.3 + np.eye(3)  # correlated channels
    image = np.einsum("cd,dhw->hwc", mixing, np.stack(base))
    yy, xx = np.mgrid[:height, :width]
    for _ in range(rng.integers(3, 8)):  # objects with sharp edges
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(20, 120)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image[inside] += rng.normal(0, 1.5, 3)
    image = (image - image.min()) / (image.max() - image.min())
    return (255 * image).astype(np.uint8)


def make_folder(folder: str, count: int) -> str:
    """`count` JPEGs in `folder`/train/<class>/ (reused when there)."""
    import tensorflow as tf  # noqa: PLC0415

    train = os.path.join(folder, "train")
    existing = sum(len(files) for _, _, files in os.walk(train))
    if existing >= count:
        return folder
    rng = np.random.default_rng(0)
    for i in range(count):
        directory = os.path.join(train, f"class_{i % 10}")
        os.makedirs(directory, exist_ok=True)
        encoded = tf.io.encode_jpeg(photo_like(rng), quality=90)
        tf.io.write_file(os.path.join(directory, f"{i:05d}.jpg"), encoded)
    return folder


def _rate(iterator, images_per_item: int, seconds: float) -> float:
    """Items per second times `images_per_item`, after a warm-up item."""
    next(iterator)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count * images_per_item / (time.perf_counter() - start)


def measure(folder: str, seconds: float) -> dict:
    """img/s of each stage (see the module docstring)."""
    import tensorflow as tf  # noqa: PLC0415

    from byol.data import pipeline, sampling, sources  # noqa: PLC0415

    dataset = f"image_folder:{folder}"
    source = sources.open_split(dataset, "", "train")
    threads = pipeline.default_num_threads()
    cores = threads + 1 if threads > 1 else threads
    start, end = sampling.shard_bounds(source.num_examples, 0, 1)
    plan, _ = pipeline.batch_plan(source, start, end, BATCH, True, 0, 0, 1)

    def stage(upto, num_threads, chunk=BATCH):
        """The graph up to a stage, examples regrouped `chunk` at a time.

        Python's cost per element would otherwise swamp what is measured.
        """
        ds = pipeline.jpeg_dataset(
            source,
            plan,
            0,
            None,
            batch=BATCH,
            image_size=SIZE,
            views=2,
            num_threads=num_threads,
            upto=upto,
        )
        if upto in ("read", "decode"):
            ds = ds.batch(chunk)
        return ds.as_numpy_iterator()

    rates = {
        "plan": _rate(stage("plan", threads), BATCH, seconds),
        "read": _rate(stage("read", threads), BATCH, seconds),
        "decode, one core": _rate(stage("decode", 1, 16), 16, seconds),
        "decode": _rate(stage("decode", threads, 16), 16, seconds),
        "graph to numpy batches": _rate(stage("batch", threads), BATCH, seconds),
    }
    crop = tf.zeros((SIZE, SIZE, 3), tf.uint8)
    decoded = tf.data.Dataset.from_tensors(
        {"view1": crop, "view2": crop, "labels": tf.constant(0)}
    ).repeat()
    batched = decoded.batch(BATCH, num_parallel_calls=threads, deterministic=True)
    rates["batching alone"] = _rate(
        iter(batched.prefetch(2).as_numpy_iterator()), BATCH, seconds
    )
    loaded = pipeline.load(
        dataset,
        "train",
        is_training=True,
        batch_dims=(1, BATCH),
        image_size=SIZE,
        num_threads=threads,
        process_index=0,
        process_count=1,
    )
    rates["load (what training reads)"] = _rate(loaded, BATCH, seconds)
    return {"threads": threads, "cores": cores, "images": source.num_examples, **rates}


def report(figures: dict) -> str:
    """The table and the arithmetic for an 8-GPU node."""
    per_core = figures["decode, one core"]
    rows = [
        f"{figures['images']} JPEGs (500x375, q90), two {SIZE} px views each; "
        f"{figures['threads']} threads on {os.cpu_count()} cores"
    ]
    stages = [k for k in figures if k not in ("threads", "cores", "images")]
    for name in stages:
        rows.append(f"  {name:<28} {figures[name]:>10,.0f} img/s")
    # The stages that do not decode (the others include it).
    others = {k: figures[k] for k in ("plan", "read", "batching alone")}
    slowest = min(others, key=others.get)
    rows.append(
        f"slowest stage but decoding: {slowest} ({others[slowest]:,.0f} img/s per "
        f"process); decode+crop {per_core:,.0f} img/s per core"
    )
    node = 8 * GPU_RATE
    rows.append(
        f"8-GPU node at {GPU_RATE:,} img/s/GPU: {node:,} img/s = "
        f"{math.ceil(node / per_core)} cores of this speed decoding "
        f"({math.ceil(GPU_RATE / per_core)} per GPU)"
    )
    return "\n".join(rows)


def main(argv) -> None:
    """Builds the folder (once), measures, prints."""
    del argv
    runtime.quiet_logs()
    folder = make_folder(_FOLDER.value, _IMAGES.value)
    figures = measure(folder, _SECONDS.value)
    print(report(figures))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    app.run(main)
