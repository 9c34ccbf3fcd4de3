"""BYOL's per-example, per-view image augmentations, on the device.

One view of one image goes through, in the recipe's order (recipe.md section 3):
random resized crop, horizontal flip, colour jitter (brightness, contrast,
saturation, hue in a random order, clipped to [0, 1] after each op), grayscale,
gaussian blur and solarize. Two configurations, ``VIEW1`` and ``VIEW2``, differ
only in the blur and solarize probabilities.

Randomness is split in two pure steps: ``sample_augmentation_params`` draws every
decision and factor of one example from a key, and ``apply_augmentation_params``
applies a batch of them. ``augment`` composes the two with ``jax.vmap``; there is
no Python control flow per example, so a batch traces once per shape.

Decisions worth knowing:

* Resize: Keys bicubic (a = -0.5, the recipe's "bicubic") through
  ``jax.image.scale_and_translate`` without antialiasing, like the reference's
  ``tf.image.resize(..., BICUBIC)``; the overshoot is clipped to [0, 1] as the
  reference does. Bilinear is one config field away (``resize_method``). The box
  is resampled from the full image, so the 2-pixel kernel support at the box
  edges sees the real neighbours (the reference crops first; border-only
  difference).
* Crop box: torchvision's ``RandomResizedCrop.get_params`` rule, vectorised: up
  to ``crop_max_attempts`` (area, aspect) pairs are drawn at once and the first
  whose rounded box fits is used; if none fits, the central crop of the whole
  image with its aspect ratio clamped to the allowed range. (The reference's
  host crop draws once and clamps the sides to the image instead.)
* Randomness: each example draws one vector of uniforms from its own key
  (``jax.random.split(rng, B)``); one threefry call instead of one per decision
  cuts the compile time of a view about 5x on CPU.
* Colour jitter costs two HSV round trips and three means per image, not one
  round trip per op and position (vmapped ``lax.cond``/``switch`` computes every
  branch): any order of the four ops fits the fixed pattern
  ``(B C B) hsv (B C B) hsv (B C B)``, the unused slots being exact identities.
* Layout: one image is channel-major ``[C, H, W]`` while it is augmented;
  per-channel means over contiguous planes are ~8x faster on CPU.
* Blur: hand-written separable shift-and-add; it computes what
  ``dm_pix.gaussian_blur`` does (zero 'SAME' padding, truncated normalised
  kernel, size ``2 * (H // 20) + 1``: 23 at 224, 3 at 28, like the reference's
  ``H / 10``), but vmapping dm_pix's depthwise convolution over per-example
  kernels is 25-35x slower on CPU.
* Grayscale images (1 channel): grayscale, saturation and hue are identities;
  ``normalize`` defaults to the luma-weighted ImageNet statistics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ITU-R BT.601 luma, as in the recipe, tf.image.rgb_to_grayscale and dm_pix.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
# For 1-channel images: the luma of the ImageNet mean, and the luma-weighted
# std (exact if the channels were perfectly correlated, close for natural images).
GRAYSCALE_MEAN = (float(np.dot(LUMA_WEIGHTS, IMAGENET_MEAN)),)
GRAYSCALE_STD = (float(np.dot(LUMA_WEIGHTS, IMAGENET_STD)),)

RESIZE_METHODS = ("linear", "cubic", "lanczos3", "lanczos5")

# Colour-jitter op ids, as used in ``AugmentationParams.jitter_order``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of one view's augmentations (hashable, static).

    Defaults are the recipe's view 1; ``VIEW1`` and ``VIEW2`` are the two views.

    Attributes:
        crop_area_range: Box area as a fraction of the image area, ``U[lo, hi]``.
        crop_aspect_range: Box width/height, log-uniform in ``[lo, hi]``.
        crop_max_attempts: Box draws before the central-crop fallback.
        resize_method: Crop resize kernel, one of ``RESIZE_METHODS``.
        antialias: Widen the resize kernel when downscaling (the reference's
            bicubic resize does not).
        flip_prob: Probability of a horizontal flip.
        color_jitter_prob: Probability of applying the four jitter ops.
        brightness: Additive brightness delta ``U[-b, b]``.
        contrast: Contrast factor ``U[1 - c, 1 + c]`` around the channel mean.
        saturation: Saturation factor ``U[1 - s, 1 + s]``.
        hue: Hue delta ``U[-h, h]`` (in turns, so at most 0.5).
        grayscale_prob: Probability of the luma grayscale conversion.
        blur_prob: Probability of the gaussian blur.
        blur_sigma: Blur standard deviation in pixels, ``U[lo, hi]``.
        blur_kernel_size: Odd kernel side; ``None`` derives it from the output
            height as ``2 * (height // 20) + 1`` (23 at 224, 9 at 96, 3 at 28).
        solarize_prob: Probability of solarization.
        solarize_threshold: Values ``>=`` this are inverted (``x -> 1 - x``).

    Raises:
        ValueError: if a probability is outside [0, 1], a range is unordered or
            out of its domain, or a name or size is invalid; the message names
            the field.

    Example:
        >>> cfg = dataclasses.replace(VIEW2, solarize_prob=0.0)
        >>> cfg.blur_prob
        0.1
    """

    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_max_attempts: int = 10
    resize_method: str = "cubic"
    antialias: bool = False
    flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int | None = None
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        # Lists (e.g. from an ml_collections ConfigDict) become tuples, so the
        # config stays hashable and can be a static jit argument.
        for name in ("crop_area_range", "crop_aspect_range", "blur_sigma"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} {value!r} invalid; expected (low, high) numbers"
                ) from None
            object.__setattr__(self, name, (low, high))
        for name in (
            "flip_prob",
            "color_jitter_prob",
            "grayscale_prob",
            "blur_prob",
            "solarize_prob",
        ):
            _check_in(name, getattr(self, name), 0.0, 1.0)
        _check_range("crop_area_range", self.crop_area_range, 0.0, 1.0, open_low=True)
        _check_range(
            "crop_aspect_range", self.crop_aspect_range, 0.0, math.inf, open_low=True
        )
        _check_range("blur_sigma", self.blur_sigma, 0.0, math.inf, open_low=True)
        _check_in("brightness", self.brightness, 0.0, math.inf)
        _check_in("contrast", self.contrast, 0.0, 1.0)
        _check_in("saturation", self.saturation, 0.0, 1.0)
        _check_in("hue", self.hue, 0.0, 0.5)
        _check_in("solarize_threshold", self.solarize_threshold, 0.0, 1.0)
        if not isinstance(self.crop_max_attempts, int) or self.crop_max_attempts < 1:
            raise ValueError(
                f"crop_max_attempts {self.crop_max_attempts!r} invalid; "
                "expected an int >= 1"
            )
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(
                f"resize_method {self.resize_method!r} unknown; expected one of: "
                + ", ".join(RESIZE_METHODS)
            )
        k = self.blur_kernel_size
        if k is not None and (not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise ValueError(
                f"blur_kernel_size {k!r} invalid; expected None or an odd int >= 1"
            )


def _check_in(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(
            f"{name} {value!r} invalid; expected a number in [{low}, {high}]"
        )


def _check_range(
    name: str,
    value: tuple[float, float],
    low: float,
    high: float,
    open_low: bool = False,
) -> None:
    lo, hi = value
    lower_ok = lo > low if open_low else lo >= low
    if not (lower_ok and lo <= hi <= high):
        bracket = "(" if open_low else "["
        raise ValueError(
            f"{name} {value!r} invalid; expected low <= high within "
            f"{bracket}{low}, {high}]"
        )


VIEW1 = AugmentationConfig(blur_prob=1.0, solarize_prob=0.0)
VIEW2 = AugmentationConfig(blur_prob=0.1, solarize_prob=0.2)


class AugmentationParams(NamedTuple):
    """Every random decision and factor of one view of one image.

    ``sample_augmentation_params`` returns unbatched fields; ``augment`` vmaps it,
    so each field gains a leading batch axis.

    Attributes:
        crop_box: int32 ``[4]``: top, left, height, width in input pixels.
        flip: bool, horizontal flip.
        color_jitter: bool, apply the four jitter ops.
        jitter_order: int32 ``[4]``, a permutation of
            ``(BRIGHTNESS, CONTRAST, SATURATION, HUE)``; ops run in this order.
        brightness: float32, additive delta.
        contrast: float32, factor around the per-channel mean.
        saturation: float32, saturation factor.
        hue: float32, hue delta in turns.
        grayscale: bool, luma grayscale.
        blur: bool, gaussian blur.
        blur_sigma: float32, blur standard deviation in pixels.
        solarize: bool, solarization.
    """

    crop_box: jax.Array
    flip: jax.Array
    color_jitter: jax.Array
    jitter_order: jax.Array
    brightness: jax.Array
    contrast: jax.Array
    saturation: jax.Array
    hue: jax.Array
    grayscale: jax.Array
    blur: jax.Array
    blur_sigma: jax.Array
    solarize: jax.Array


# ---------------------------------------------------------------------- sampling
# Each example draws all its randomness as one vector of uniforms: one threefry
# call instead of one per decision, which is what dominates compile time on CPU.
def _crop_box_from_uniforms(
    u: jax.Array,
    height: int,
    width: int,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
) -> jax.Array:
    """``sample_crop_box`` given ``2 * attempts + 2`` uniforms in [0, 1)."""
    attempts = (u.shape[0] - 2) // 2
    u_area, u_ratio, u_top, u_left = (
        u[:attempts],
        u[attempts : 2 * attempts],
        u[-2],
        u[-1],
    )
    area = (height * width) * (area_range[0] + (area_range[1] - area_range[0]) * u_area)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    ratio = jnp.exp(log_lo + (log_hi - log_lo) * u_ratio)
    box_w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
    box_h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = jnp.argmax(fits)  # index of the first fitting attempt (0 if none)

    # The fallback is static: it depends only on the image shape.
    in_ratio = width / height
    if in_ratio < aspect_range[0]:
        fallback_w, fallback_h = width, round(width / aspect_range[0])
    elif in_ratio > aspect_range[1]:
        fallback_w, fallback_h = round(height * aspect_range[1]), height
    else:
        fallback_w, fallback_h = width, height
    found = jnp.any(fits)
    box_h = jnp.where(found, box_h[first], fallback_h)
    box_w = jnp.where(found, box_w[first], fallback_w)

    def offset(u_pos, free):  # uniform integer in [0, free]
        return jnp.minimum(jnp.floor(u_pos * (free + 1)).astype(jnp.int32), free)

    top = jnp.where(found, offset(u_top, height - box_h), (height - fallback_h) // 2)
    left = jnp.where(found, offset(u_left, width - box_w), (width - fallback_w) // 2)
    return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)


def sample_crop_box(
    rng: jax.Array,
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    max_attempts: int = 10,
) -> jax.Array:
    """Draws one random-resized-crop box, as torchvision's ``RandomResizedCrop``.

    Each attempt draws an area fraction ``U[area_range]`` and an aspect ratio
    (width / height) log-uniform in ``aspect_range``, and rounds the box side
    lengths to integers; the first attempt whose box fits in the image is used,
    at a uniformly random integer position. All attempts are drawn at once (no
    loop). If none fits, the fallback is the centred box of the whole image
    with its aspect ratio clamped to ``aspect_range``.

    Args:
        rng: A JAX PRNG key.
        height: Image height in pixels (static).
        width: Image width in pixels (static).
        area_range: ``(low, high)`` box area as a fraction of the image area.
        aspect_range: ``(low, high)`` box aspect ratio, width / height.
        max_attempts: Number of draws before the fallback.

    Returns:
        int32 ``[4]`` array ``(top, left, box_height, box_width)``, with
        ``0 <= top``, ``top + box_height <= height`` and likewise for width.

    Example:
        >>> top, left, h, w = sample_crop_box(jax.random.key(0), 224, 224)
    """
    u = jax.random.uniform(rng, (2 * max_attempts + 2,))
    return _crop_box_from_uniforms(u, height, width, area_range, aspect_range)


def sample_augmentation_params(
    rng: jax.Array, config: AugmentationConfig, height: int, width: int
) -> AugmentationParams:
    """Draws every decision and factor of one view of one image.

    Args:
        rng: A JAX PRNG key (one example).
        config: The view's probabilities and ranges.
        height: Input image height (for the crop box).
        width: Input image width.

    Returns:
        Unbatched ``AugmentationParams``.

    Example:
        >>> keys = jax.random.split(jax.random.key(0), 256)
        >>> p = jax.vmap(lambda k: sample_augmentation_params(k, VIEW2, 28, 28))(keys)
        >>> p.solarize.mean()  # about 0.2
    """
    num_crop = 2 * config.crop_max_attempts + 2
    u = jax.random.uniform(rng, (num_crop + 14,))
    crop_u, u = u[:num_crop], u[num_crop:]

    def uniform(i, low, high):
        return low + (high - low) * u[i]

    return AugmentationParams(
        crop_box=_crop_box_from_uniforms(
            crop_u, height, width, config.crop_area_range, config.crop_aspect_range
        ),
        flip=u[0] < config.flip_prob,
        color_jitter=u[1] < config.color_jitter_prob,
        # argsort of i.i.d. uniforms is a uniformly random permutation.
        jitter_order=jnp.argsort(u[2:6]).astype(jnp.int32),
        brightness=uniform(6, -config.brightness, config.brightness),
        contrast=uniform(7, 1.0 - config.contrast, 1.0 + config.contrast),
        saturation=uniform(8, 1.0 - config.saturation, 1.0 + config.saturation),
        hue=uniform(9, -config.hue, config.hue),
        grayscale=u[10] < config.grayscale_prob,
        blur=u[11] < config.blur_prob,
        blur_sigma=uniform(12, *config.blur_sigma),
        solarize=u[13] < config.solarize_prob,
    )


# ---------------------------------------------------------------------- the ops
# Inside ``apply_augmentation_params`` one image is channel-major ``[C, H, W]``:
# per-channel means and colour conversions then read contiguous planes (the
# means are 5-10x faster than over [H, W, C] on CPU; not measured on GPU/TPU).
def _resized_crop(
    image: jax.Array,
    box: jax.Array,
    out_h: int,
    out_w: int,
    method: str,
    antialias: bool,
) -> jax.Array:
    """Resamples the box ``(top, left, h, w)`` of a ``[C, H, W]`` image."""
    box = box.astype(jnp.float32)
    scale = jnp.stack([out_h / box[2], out_w / box[3]])
    # Output edge 0 must map to the box's top-left edge: in = (out - t) / scale.
    translation = -box[:2] * scale
    out = jax.image.scale_and_translate(
        image,
        (image.shape[0], out_h, out_w),
        (1, 2),
        scale,
        translation,
        method=method,
        antialias=antialias,
    )
    return jnp.clip(out, 0.0, 1.0)


def adjust_saturation_and_hue(
    image: jax.Array,
    saturation: jax.Array,
    hue: jax.Array,
    *,
    channel_axis: int = -1,
) -> jax.Array:
    """Saturation factor and hue delta in one HSV round trip, clipped to [0, 1].

    With ``hue = 0`` this is ``dm_pix.adjust_saturation``; with
    ``saturation = 1`` it is ``dm_pix.adjust_hue`` (same conversions), so either
    op alone costs one round trip and the pair costs one instead of two.

    Args:
        image: RGB float image in [0, 1].
        saturation: Multiplies the HSV saturation (then clipped to [0, 1]).
        hue: Added to the hue, in turns (wraps around).
        channel_axis: The index of the channel axis.

    Returns:
        The adjusted image, same shape.

    Example:
        >>> adjust_saturation_and_hue(jnp.full((2, 2, 3), 0.5), 1.2, 0.0)
    """
    hsv = pix.rgb_to_hsv(image, channel_axis=channel_axis)
    h, s, v = (jnp.take(hsv, i, axis=channel_axis) for i in range(3))
    hsv = jnp.stack(
        [(h + hue) % 1.0, jnp.clip(s * saturation, 0.0, 1.0), v], axis=channel_axis
    )
    return jnp.clip(pix.hsv_to_rgb(hsv, channel_axis=channel_axis), 0.0, 1.0)


def _color_jitter(image: jax.Array, p: AugmentationParams) -> jax.Array:
    """The four jitter ops of a ``[C, H, W]`` image in ``p.jitter_order``.

    Each op's output is clipped to [0, 1]. The two HSV ops (saturation, hue)
    split the order into three regions; in each region brightness can come
    before or after contrast, so the fixed pattern
    ``(B C B) hsv (B C B) hsv (B C B)`` holds every order with two HSV round
    trips and three means. Unused slots are exact identities (``x + 0``) or
    selected away.
    """
    rgb = image.shape[0] == 3
    position = jnp.argsort(p.jitter_order)  # position[op] = when op runs
    pos_b, pos_c, pos_s, pos_h = (position[i] for i in range(4))
    if rgb:
        region_b = (pos_s < pos_b).astype(jnp.int32) + (pos_h < pos_b)
        region_c = (pos_s < pos_c).astype(jnp.int32) + (pos_h < pos_c)
    else:  # saturation and hue are identities: only brightness/contrast order
        region_b = region_c = jnp.int32(0)
    b_after_c = (region_b == region_c) & (pos_c < pos_b)
    sat_first = pos_s < pos_h

    def brightness(x, use):
        delta = jnp.where(use, p.brightness, 0.0)
        return jnp.clip(pix.adjust_brightness(x, delta), 0.0, 1.0)

    for region in range(3 if rgb else 1):
        in_region = region_b == region
        image = brightness(image, in_region & ~b_after_c)
        contrasted = pix.adjust_contrast(image, p.contrast, channel_axis=0)
        image = jnp.where(region_c == region, jnp.clip(contrasted, 0.0, 1.0), image)
        image = brightness(image, in_region & b_after_c)
        if rgb and region < 2:
            is_sat = sat_first if region == 0 else ~sat_first
            image = adjust_saturation_and_hue(
                image,
                jnp.where(is_sat, p.saturation, 1.0),
                jnp.where(is_sat, 0.0, p.hue),
                channel_axis=0,
            )
    return image


def _blur_1d(image: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
    """Zero-padded 'SAME' correlation of ``image`` with ``weights`` along ``axis``."""
    size = image.shape[axis]
    radius = (weights.shape[0] - 1) // 2
    padding = [(0, 0)] * image.ndim
    padding[axis] = (radius, radius)
    padded = jnp.pad(image, padding)
    terms = [
        weights[i] * jax.lax.slice_in_dim(padded, i, i + size, axis=axis)
        for i in range(weights.shape[0])
    ]
    return sum(terms[1:], terms[0])


def gaussian_blur(
    image: jax.Array,
    sigma: jax.Array,
    kernel_size: int,
    *,
    channel_axis: int = -1,
) -> jax.Array:
    """Separable gaussian blur of one image, as ``dm_pix.gaussian_blur``.

    The kernel ``exp(-t^2 / (2 sigma^2))``, ``|t| <= kernel_size // 2``, is
    normalised to sum 1; borders are zero-padded (as dm_pix and the reference).
    Written as shift-and-add rather than dm_pix's depthwise convolution because
    ``jax.vmap`` with a per-example ``sigma`` turns that convolution into a
    grouped one with a per-example kernel, 25-35x slower on CPU.

    Args:
        image: Float image, ``[H, W, C]`` (or ``[C, H, W]`` with
            ``channel_axis=0``).
        sigma: Standard deviation in pixels (may be traced).
        kernel_size: Odd kernel side (static).
        channel_axis: ``-1`` or ``0``.

    Returns:
        The blurred image, same shape (not clipped: a normalised kernel keeps
        [0, 1] up to rounding).

    Example:
        >>> gaussian_blur(jnp.ones((28, 28, 1)), 1.0, 3)
    """
    radius = kernel_size // 2
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-jnp.square(t) / (2.0 * jnp.square(sigma)))
    weights = weights / jnp.sum(weights)
    h_axis = 1 if channel_axis == 0 else 0
    return _blur_1d(_blur_1d(image, weights, h_axis), weights, h_axis + 1)


# -------------------------------------------------------------------- applying
def _output_hw(images: jax.Array, output_size) -> tuple[int, int]:
    if output_size is None:
        return images.shape[1], images.shape[2]
    size = output_size
    if isinstance(output_size, int | np.integer):
        size = (output_size, output_size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, int | np.integer) for s in size)
        or min(size) < 1
    ):
        raise ValueError(
            f"output_size {output_size!r} invalid; expected None, an int >= 1 or "
            "(height, width) ints >= 1"
        )
    return int(size[0]), int(size[1])


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"images rank {images.ndim} (shape {images.shape}) invalid; "
            "expected 4: [batch, height, width, channels]"
        )
    if images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images channels {images.shape[-1]} invalid; expected one of: 1, 3"
        )
    if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images dtype {images.dtype} invalid; expected uint8 or a float dtype"
        )


def to_unit_float(images: jax.Array) -> jax.Array:
    """Checks a batch ``[B, H, W, C]`` and converts it to float32 in [0, 1].

    Args:
        images: uint8 (0..255) or float (already in [0, 1]) array ``[B, H, W, C]``
            with ``C`` in {1, 3}.

    Returns:
        float32 array of the same shape (uint8 is divided by 255).

    Raises:
        ValueError: wrong rank, channel count or dtype.

    Example:
        >>> to_unit_float(jnp.zeros((2, 28, 28, 1), jnp.uint8)).dtype
        dtype('float32')
    """
    _check_images(images)
    return _unit_float(images)


def _unit_float(images: jax.Array) -> jax.Array:
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def _blur_kernel_size(config: AugmentationConfig, out_h: int) -> int:
    if config.blur_kernel_size is not None:
        return config.blur_kernel_size
    return 2 * (out_h // 20) + 1


def apply_augmentation_params(
    images: jax.Array,
    params: AugmentationParams,
    config: AugmentationConfig,
    *,
    crop: bool = True,
    output_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """Applies a batch of sampled augmentations (pure; no randomness).

    Args:
        images: uint8 or float-in-[0, 1] array ``[B, H, W, C]``, ``C`` in {1, 3}.
        params: ``AugmentationParams`` with a leading batch axis ``B``.
        config: The view's config; only its static choices (resize method,
            antialias, blur kernel size, solarize threshold) and its 0/1
            probabilities (ops skipped or applied unconditionally at trace time)
            are read here.
        crop: Resample ``params.crop_box``; if False, the whole image is used
            (resized only if ``output_size`` differs from the input size).
        output_size: Output ``(height, width)`` or side; default the input's.

    Returns:
        float32 array ``[B, H', W', C]`` in [0, 1].

    Raises:
        ValueError: bad images (rank, channels, dtype) or ``output_size``.

    Example:
        >>> keys = jax.random.split(jax.random.key(0), 8)
        >>> p = jax.vmap(lambda k: sample_augmentation_params(k, VIEW1, 32, 32))(keys)
        >>> apply_augmentation_params(jnp.zeros((8, 32, 32, 3)), p, VIEW1).shape
        (8, 32, 32, 3)
    """
    _check_images(images)
    out_h, out_w = _output_hw(images, output_size)
    kernel_size = _blur_kernel_size(config, out_h)
    channels = images.shape[-1]
    # Channel-major while augmenting; transposing uint8 moves 4x fewer bytes.
    x = _unit_float(jnp.transpose(images, (0, 3, 1, 2)))

    def maybe(prob: float, decision: jax.Array, op, image: jax.Array) -> jax.Array:
        # Static skip for never/always; otherwise the op runs and is selected
        # (a vmapped branch would compute both sides anyway).
        if prob == 0.0:
            return image
        if prob == 1.0:
            return op(image)
        return jnp.where(decision, op(image), image)

    def one(image: jax.Array, p: AugmentationParams) -> jax.Array:
        if crop:
            image = _resized_crop(
                image, p.crop_box, out_h, out_w, config.resize_method, config.antialias
            )
        elif image.shape[1:] != (out_h, out_w):
            image = jax.image.resize(
                image,
                (channels, out_h, out_w),
                config.resize_method,
                antialias=config.antialias,
            )
            image = jnp.clip(image, 0.0, 1.0)
        image = maybe(
            config.flip_prob,
            p.flip,
            lambda im: pix.flip_left_right(im, channel_axis=0),
            image,
        )
        image = maybe(
            config.color_jitter_prob,
            p.color_jitter,
            lambda im: _color_jitter(im, p),
            image,
        )
        if channels == 3:
            image = maybe(
                config.grayscale_prob,
                p.grayscale,
                lambda im: pix.rgb_to_grayscale(im, keep_dims=True, channel_axis=0),
                image,
            )
        image = maybe(
            config.blur_prob,
            p.blur,
            lambda im: jnp.clip(
                gaussian_blur(im, p.blur_sigma, kernel_size, channel_axis=0), 0.0, 1.0
            ),
            image,
        )
        return maybe(
            config.solarize_prob,
            p.solarize,
            lambda im: pix.solarize(im, config.solarize_threshold),
            image,
        )

    return jnp.transpose(jax.vmap(one)(x, params), (0, 2, 3, 1))


def augment(
    rng: jax.Array,
    images: jax.Array,
    config: AugmentationConfig,
    *,
    crop: bool = True,
    output_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """One augmented view of every image in a batch (per example, jittable).

    Each example gets its own key (``jax.random.split(rng, B)``), so the result
    is deterministic for a given ``rng`` and independent across examples.

    Args:
        rng: A JAX PRNG key.
        images: uint8 (0..255) or float (in [0, 1]) array ``[B, H, W, C]``,
            ``C`` in {1, 3}. For ``C = 1``, grayscale, saturation and hue are
            identities.
        config: The view's ``AugmentationConfig`` (e.g. ``VIEW1``).
        crop: Apply the random resized crop. False when the host already cropped
            (as the reference's tf.data pipeline does).
        output_size: Output side or ``(height, width)``; default the input's.

    Returns:
        float32 array ``[B, H', W', C]`` in [0, 1].

    Raises:
        ValueError: wrong rank, channel count not 1 or 3, non-uint8 integer
            dtype, or ``output_size`` < 1.

    Example:
        >>> images = jnp.zeros((256, 28, 28, 1), jnp.uint8)
        >>> augment(jax.random.key(0), images, VIEW1).shape
        (256, 28, 28, 1)
    """
    _check_images(images)
    _output_hw(images, output_size)  # fail before tracing the sampler
    batch, height, width, _ = images.shape
    keys = jax.random.split(rng, batch)
    params = jax.vmap(
        lambda key: sample_augmentation_params(key, config, height, width)
    )(keys)
    return apply_augmentation_params(
        images, params, config, crop=crop, output_size=output_size
    )


def augment_views(
    rng: jax.Array,
    images: jax.Array,
    *,
    crop: bool = True,
    output_size: int | tuple[int, int] | None = None,
    view1: AugmentationConfig = VIEW1,
    view2: AugmentationConfig = VIEW2,
) -> tuple[jax.Array, jax.Array]:
    """BYOL's two views of a batch, with independent keys.

    Args:
        rng: A JAX PRNG key.
        images: uint8 or float-in-[0, 1] array ``[B, H, W, C]``, ``C`` in {1, 3}.
        crop: Apply the random resized crop (see ``augment``).
        output_size: Output side or ``(height, width)``; default the input's.
        view1: Config of the first view.
        view2: Config of the second view.

    Returns:
        ``(view1, view2)``, each float32 ``[B, H', W', C]`` in [0, 1].

    Raises:
        ValueError: as ``augment``.

    Example:
        >>> v1, v2 = augment_views(jax.random.key(0), jnp.zeros((8, 96, 96, 3)))
    """
    rng1, rng2 = jax.random.split(rng)
    kwargs = dict(crop=crop, output_size=output_size)
    return augment(rng1, images, view1, **kwargs), augment(
        rng2, images, view2, **kwargs
    )


# ---------------------------------------------------------------- normalising
def normalize(
    images: jax.Array,
    mean: Sequence[float] | jax.Array | None = None,
    std: Sequence[float] | jax.Array | None = None,
) -> jax.Array:
    """Channel-wise ``(x - mean) / std`` of images in [0, 1] (or uint8).

    Args:
        images: Array ``[..., C]``, float in [0, 1] or uint8 (divided by 255).
        mean: Per-channel mean, length ``C`` (or 1). Default: ``IMAGENET_MEAN``
            for 3 channels, ``GRAYSCALE_MEAN`` (luma of the ImageNet mean,
            0.4589) for 1 channel.
        std: Per-channel std, as ``mean``. Default: ``IMAGENET_STD``, or
            ``GRAYSCALE_STD`` (luma-weighted ImageNet std, 0.2256).

    Returns:
        float32 array, same shape.

    Raises:
        ValueError: if ``mean``/``std`` length is neither ``C`` nor 1, or there
            is no default for the channel count.

    Example:
        >>> normalize(jnp.full((1, 2, 2, 3), 0.485))[..., 0]  # zeros
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    channels = x.shape[-1]
    defaults = {3: (IMAGENET_MEAN, IMAGENET_STD), 1: (GRAYSCALE_MEAN, GRAYSCALE_STD)}
    if mean is None or std is None:
        if channels not in defaults:
            raise ValueError(
                f"images channels {channels} have no default mean/std; expected "
                "1 or 3, or pass mean and std"
            )
        mean = defaults[channels][0] if mean is None else mean
        std = defaults[channels][1] if std is None else std
    mean = jnp.asarray(mean, jnp.float32).reshape(-1)
    std = jnp.asarray(std, jnp.float32).reshape(-1)
    for name, value in (("mean", mean), ("std", std)):
        if value.shape[0] not in (1, channels):
            raise ValueError(
                f"{name} length {value.shape[0]} invalid; expected {channels} "
                "(the channel count) or 1"
            )
    return (x - mean) / std


def center_crop_and_resize(
    images: jax.Array,
    output_size: int,
    crop_fraction: float = 224.0 / 256.0,
    method: str = "cubic",
    antialias: bool = False,
) -> jax.Array:
    """Evaluation preprocessing: central square crop, then resize (reference rule).

    The crop side is ``int(crop_fraction * min(H, W))`` at offset
    ``((H - side) + 1) // 2`` (likewise for width), as the reference's
    ``_decode_and_center_crop``; the crop is resized to ``output_size``.

    Args:
        images: uint8 or float-in-[0, 1] array ``[B, H, W, C]``, ``C`` in {1, 3}.
        output_size: Output side (int >= 1).
        crop_fraction: Crop side as a fraction of the short side, in (0, 1].
        method: Resize kernel, one of ``RESIZE_METHODS``.
        antialias: Widen the kernel when downscaling.

    Returns:
        float32 array ``[B, output_size, output_size, C]`` in [0, 1].

    Raises:
        ValueError: bad images, ``output_size``, ``crop_fraction`` or ``method``.

    Example:
        >>> center_crop_and_resize(jnp.zeros((2, 256, 320, 3)), 224).shape
        (2, 224, 224, 3)
    """
    x = to_unit_float(images)
    out_h, out_w = _output_hw(x, output_size)
    _check_in("crop_fraction", crop_fraction, 0.0, 1.0)
    if method not in RESIZE_METHODS:
        raise ValueError(
            f"method {method!r} unknown; expected one of: " + ", ".join(RESIZE_METHODS)
        )
    batch, height, width, channels = x.shape
    side = max(1, int(crop_fraction * min(height, width)))
    top, left = (height - side + 1) // 2, (width - side + 1) // 2
    x = x[:, top : top + side, left : left + side]
    if (side, side) != (out_h, out_w):
        x = jax.image.resize(
            x, (batch, out_h, out_w, channels), method, antialias=antialias
        )
    return jnp.clip(x, 0.0, 1.0)
