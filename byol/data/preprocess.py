"""Host-side image ops (TensorFlow): decode fused with crop, then resize to uint8.

Only the crops run here; flips, colour, blur and solarisation run on the
device. The random-resized-crop window follows the released BYOL code
(deepmind-research/byol/utils/dataset.py, `_decode_and_random_crop`): area
fraction U[0.08, 1], aspect ratio log-uniform in [3/4, 4/3], width and height
clipped to the image, uniform offset; it is drawn with stateless RNG from a
per-example seed so the stream is reproducible. JPEGs are decoded only inside
the window (`tf.io.decode_and_crop_jpeg`); PNG/GIF/BMP are decoded whole and
sliced.
"""

from __future__ import annotations

import math

import tensorflow as tf

MIN_AREA = 0.08
LOG_ASPECT_RANGE = (math.log(3 / 4), math.log(4 / 3))
EVAL_CROP_FRACTION = 224 / 256


def random_crop_window(
    shape: tf.Tensor, seed: tf.Tensor, min_area: float = MIN_AREA
) -> tf.Tensor:
    """A random-resized-crop window ``[top, left, height, width]`` in the image."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    height, width = shape[0], shape[1]
    area = tf.cast(height * width, tf.float32)
    target_area = tf.random.stateless_uniform([], seeds[0], min_area, 1.0) * area
    aspect = tf.exp(tf.random.stateless_uniform([], seeds[1], *LOG_ASPECT_RANGE))
    crop_w = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    crop_w = tf.clip_by_value(crop_w, 1, width)
    crop_h = tf.clip_by_value(crop_h, 1, height)
    offset_x = tf.random.stateless_uniform(
        [], seeds[2], 0, width - crop_w + 1, dtype=tf.int32
    )
    offset_y = tf.random.stateless_uniform(
        [], seeds[3], 0, height - crop_h + 1, dtype=tf.int32
    )
    return tf.stack([offset_y, offset_x, crop_h, crop_w])


def center_crop_window(
    shape: tf.Tensor, fraction: float = EVAL_CROP_FRACTION
) -> tf.Tensor:
    """The centred square window of side `fraction` x the short side."""
    height, width = shape[0], shape[1]
    side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def decode_and_crop(encoded: tf.Tensor, window_fn) -> tf.Tensor:
    """Image bytes decoded inside the window `window_fn` picks from their shape."""

    def jpeg():
        window = window_fn(tf.io.extract_jpeg_shape(encoded))
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        y, x, h, w = tf.unstack(window_fn(tf.shape(image)))
        return image[y : y + h, x : x + w]

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bicubic resize to ``size x size``, rounded and clipped back to uint8.

    The device then sees the reference's ``clip(resize(x) / 255, 0, 1)`` up to
    1/510.
    """
    resized = tf.image.resize(image, [size, size], tf.image.ResizeMethod.BICUBIC)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def random_views(encoded, seed, size: int, num_views: int, min_area=MIN_AREA):
    """`num_views` independent random-resized crops ``[size, size, 3]`` of an image."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num_views)
    return [
        resize(
            decode_and_crop(
                encoded,
                lambda shape, s=seeds[i]: random_crop_window(shape, s, min_area),
            ),
            size,
        )
        for i in range(num_views)
    ]


def center_view(encoded: tf.Tensor, size: int, fraction: float = EVAL_CROP_FRACTION):
    """The evaluation view: the centre crop, resized to ``size``.

    The whole image is decoded (not only the window, as for training crops),
    so that a corrupt body raises (naming the file) instead of being used as
    libjpeg fills it in, grey.
    """
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(center_crop_window(tf.shape(image), fraction))
    return resize(image[y : y + h, x : x + w], size)
