"""BYOL's per-example, per-view image augmentations, on the device.

One view of one image goes through, in the recipe's order (recipe.md §3):
random resized crop, horizontal flip, colour jitter (brightness, contrast,
saturation, hue in a random order, clipped to [0, 1] after each), grayscale,
gaussian blur, solarize. ``VIEW1`` and ``VIEW2`` differ in the blur and
solarize probabilities. `sample_augmentation_params` draws every decision of
one example from its key; `apply_augmentation_params` applies a batch of them;
`augment` composes the two under `jax.vmap`, without Python control flow per
example.

Choices worth knowing:

* Resize: bicubic (Keys, a = -0.5) without antialiasing, like the reference's
  ``tf.image.resize(..., BICUBIC)``, clipped to [0, 1]; the box is resampled
  from the whole image, so the kernel at its edges sees real neighbours.
* Crop box (`CROP_RULES`): ``reference`` draws one (area, aspect) pair and
  clamps the box's sides to the image, as DeepMind's ImageNet host crop does;
  ``torchvision`` retries up to ``crop_max_attempts`` draws for a box that
  fits, then falls back to the central crop of the whole image.
* Each example draws one vector of uniforms from its own key: one threefry
  call instead of one per decision (5x faster to compile on CPU).
* Colour jitter: any order of the four ops fits the pattern
  ``(B C B) hsv (B C B) hsv (B C B)``, unused slots being identities, so it
  costs two HSV round trips and three means instead of a vmapped switch that
  computes every branch. An image is channel-major ``[C, H, W]`` meanwhile.
* Blur: separable shift-and-add computing what ``dm_pix.gaussian_blur`` does
  (zero padding, kernel ``2 * (H // 20) + 1``: 23 at 224, 3 at 28); vmapping
  dm_pix's per-example depthwise convolution is 25-35x slower on CPU.
* One-channel images: grayscale, saturation and hue are identities.
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
CROP_RULES = ("reference", "torchvision")

# Colour-jitter op ids, as used in ``AugmentationParams.jitter_order``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of one view's augmentations (hashable, static).

    Defaults are the recipe's view 1. Ranges are ``(low, high)``: crop area
    as a fraction of the image, U; aspect (width / height), log-U; blur sigma
    in pixels, U. Brightness adds U[-b, b]; contrast and saturation multiply
    by U[1 - c, 1 + c]; hue adds U[-h, h] turns. ``blur_kernel_size`` None
    derives it from the output height. Values out of their domain raise a
    ValueError naming the field (a probability of 1.5 would silently mean 1).

    >>> dataclasses.replace(VIEW2, solarize_prob=0.0).blur_prob
    0.1
    """

    crop_area_range: tuple[float, float] = (0.08, 1.0)
    crop_aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_max_attempts: int = 10
    crop_rule: str = "reference"
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
        for name, (ok, expected) in _DOMAINS.items():
            if not ok(getattr(self, name)):
                raise ValueError(
                    f"{name} {getattr(self, name)!r} invalid; expected {expected}"
                )


def _number_in(low: float, high: float):
    ok = lambda v: isinstance(v, int | float) and low <= v <= high  # noqa: E731
    return ok, f"a number in [{low}, {high}]"


def _range_in(high: float):
    return (lambda v: 0 < v[0] <= v[1] <= high), f"low <= high within (0, {high}]"


# Each field's domain: a value outside would silently mean another one.
_DOMAINS = {
    **dict.fromkeys(
        (
            "flip_prob",
            "color_jitter_prob",
            "grayscale_prob",
            "blur_prob",
            "solarize_prob",
            "contrast",
            "saturation",
            "solarize_threshold",
        ),
        _number_in(0.0, 1.0),
    ),
    "brightness": _number_in(0.0, math.inf),
    "hue": _number_in(0.0, 0.5),
    "crop_area_range": _range_in(1.0),
    "crop_aspect_range": _range_in(math.inf),
    "blur_sigma": _range_in(math.inf),
    "crop_max_attempts": (lambda v: isinstance(v, int) and v >= 1, "an int >= 1"),
    "crop_rule": (lambda v: v in CROP_RULES, "one of: " + ", ".join(CROP_RULES)),
    "resize_method": (
        lambda v: v in RESIZE_METHODS,
        "one of: " + ", ".join(RESIZE_METHODS),
    ),
    "blur_kernel_size": (
        lambda k: k is None or (isinstance(k, int) and k >= 1 and k % 2 == 1),
        "None or an odd int >= 1",
    ),
}


VIEW1 = AugmentationConfig(blur_prob=1.0, solarize_prob=0.0)
VIEW2 = AugmentationConfig(blur_prob=0.1, solarize_prob=0.2)


class AugmentationParams(NamedTuple):
    """Every random decision and factor of one view of one image.

    ``crop_box`` is int32 (top, left, height, width); ``jitter_order`` a
    permutation of (BRIGHTNESS, CONTRAST, SATURATION, HUE); the factors are
    float32, the decisions bool. `augment` vmaps the sampler, so each field
    gains a leading batch axis.
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
def _crop_box_from_uniforms(
    u: jax.Array,
    height: int,
    width: int,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
    rule: str = "reference",
) -> jax.Array:
    """`sample_crop_box` given ``2 * attempts + 2`` uniforms in [0, 1)."""
    attempts = (u.shape[0] - 2) // 2
    u_area, u_ratio = u[:attempts], u[attempts : 2 * attempts]
    area = (height * width) * (area_range[0] + (area_range[1] - area_range[0]) * u_area)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    ratio = jnp.exp(log_lo + (log_hi - log_lo) * u_ratio)
    box_w = jnp.round(jnp.sqrt(area * ratio)).astype(jnp.int32)
    box_h = jnp.round(jnp.sqrt(area / ratio)).astype(jnp.int32)

    def offset(u_pos, free):  # uniform integer in [0, free]
        return jnp.minimum(jnp.floor(u_pos * (free + 1)).astype(jnp.int32), free)

    if rule == "reference":  # the first draw, its sides clamped to the image
        box_h, box_w = jnp.clip(box_h[0], 1, height), jnp.clip(box_w[0], 1, width)
        top, left = offset(u[-2], height - box_h), offset(u[-1], width - box_w)
        return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = jnp.argmax(fits)  # the first fitting attempt (0 if none)
    # The fallback depends only on the (static) image shape.
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
    top = jnp.where(found, offset(u[-2], height - box_h), (height - fallback_h) // 2)
    left = jnp.where(found, offset(u[-1], width - box_w), (width - fallback_w) // 2)
    return jnp.stack([top, left, box_h, box_w]).astype(jnp.int32)


def sample_crop_box(
    rng: jax.Array,
    height: int,
    width: int,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    max_attempts: int = 10,
    rule: str = "reference",
) -> jax.Array:
    """One random-resized-crop box (top, left, height, width), int32, in the image.

    An area fraction ``U[area_range]`` and an aspect ratio log-uniform in
    ``aspect_range`` give the box's sides, rounded; its position is uniform.
    ``rule`` picks what happens to a box that does not fit (`CROP_RULES`):
    ``reference`` clamps its sides to the image; ``torchvision`` draws up to
    `max_attempts` boxes and takes the first that fits, else the central
    crop of the whole image with its aspect clamped to ``aspect_range``.

    >>> box = sample_crop_box(jax.random.key(0), 8, 8, (1.0, 1.0), (1.0, 1.0))
    >>> [int(x) for x in box]
    [0, 0, 8, 8]
    """
    u = jax.random.uniform(rng, (2 * max_attempts + 2,))
    return _crop_box_from_uniforms(u, height, width, area_range, aspect_range, rule)


def sample_augmentation_params(
    rng: jax.Array, config: AugmentationConfig, height: int, width: int
) -> AugmentationParams:
    """Every decision and factor of one view of one image (unbatched)."""
    num_crop = 2 * config.crop_max_attempts + 2
    u = jax.random.uniform(rng, (num_crop + 14,))
    crop_u, u = u[:num_crop], u[num_crop:]

    def uniform(i, low, high):
        return low + (high - low) * u[i]

    return AugmentationParams(
        crop_box=_crop_box_from_uniforms(
            crop_u,
            height,
            width,
            config.crop_area_range,
            config.crop_aspect_range,
            config.crop_rule,
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
    """Saturation factor and hue delta (turns) in one HSV round trip, clipped.

    With ``hue = 0`` this is ``dm_pix.adjust_saturation``, with ``saturation =
    1`` ``dm_pix.adjust_hue``: the pair costs one round trip instead of two.
    """
    hsv = pix.rgb_to_hsv(image, channel_axis=channel_axis)
    h, s, v = (jnp.take(hsv, i, axis=channel_axis) for i in range(3))
    hsv = jnp.stack(
        [(h + hue) % 1.0, jnp.clip(s * saturation, 0.0, 1.0), v], axis=channel_axis
    )
    return jnp.clip(pix.hsv_to_rgb(hsv, channel_axis=channel_axis), 0.0, 1.0)


def _color_jitter(image: jax.Array, p: AugmentationParams) -> jax.Array:
    """The four jitter ops of a ``[C, H, W]`` image in ``p.jitter_order``.

    The two HSV ops split the order into three regions, in each of which
    brightness comes before or after contrast: ``(B C B) hsv (B C B) hsv (B C B)``
    holds every order; unused slots are identities or selected away.
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
    """Separable gaussian blur of one image, as ``dm_pix.gaussian_blur`` computes.

    The kernel ``exp(-t^2 / (2 sigma^2))``, ``|t| <= kernel_size // 2``, sums to
    1; borders are zero-padded. ``sigma`` may be traced; the output is not
    clipped. ``channel_axis`` is -1 or 0.
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
    """Applies a batch of sampled augmentations (pure: no randomness).

    Args:
        images: uint8 or float-in-[0, 1] ``[B, H, W, C]``, ``C`` in {1, 3}.
        params: `AugmentationParams` with a leading batch axis.
        config: the view's static choices (resize, blur kernel, threshold);
            probabilities of 0 or 1 skip or apply an op at trace time.
        crop: resample ``params.crop_box``; if False the whole image is used
            (resized only if `output_size` differs).
        output_size: output side or (height, width); default the input's.

    Returns:
        float32 ``[B, H', W', C]`` in [0, 1].
    """
    _check_images(images)
    out_h, out_w = _output_hw(images, output_size)
    kernel_size = _blur_kernel_size(config, out_h)
    channels = images.shape[-1]
    # Channel-major while augmenting; transposing uint8 moves 4x fewer bytes.
    x = _unit_float(jnp.transpose(images, (0, 3, 1, 2)))

    def flip(im):
        return pix.flip_left_right(im, channel_axis=0)

    def gray(im):
        return pix.rgb_to_grayscale(im, keep_dims=True, channel_axis=0)

    def blur(im, sigma):
        return jnp.clip(gaussian_blur(im, sigma, kernel_size, channel_axis=0), 0.0, 1.0)

    def solarize(im):
        return pix.solarize(im, config.solarize_threshold)

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
        ops = [
            (config.flip_prob, p.flip, flip),
            (config.color_jitter_prob, p.color_jitter, lambda im: _color_jitter(im, p)),
            (config.grayscale_prob if channels == 3 else 0.0, p.grayscale, gray),
            (config.blur_prob, p.blur, lambda im: blur(im, p.blur_sigma)),
            (config.solarize_prob, p.solarize, solarize),
        ]
        for prob, decision, op in ops:
            # Static skip for never/always; otherwise the op runs and is
            # selected (a vmapped branch would compute both sides anyway).
            if prob == 1.0:
                image = op(image)
            elif prob > 0.0:
                image = jnp.where(decision, op(image), image)
        return image

    return jnp.transpose(jax.vmap(one)(x, params), (0, 2, 3, 1))


def augment(
    rng: jax.Array,
    images: jax.Array,
    config: AugmentationConfig,
    *,
    crop: bool = True,
    output_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    """One augmented view of every image of a batch, each example from its own key.

    Args:
        rng: a PRNG key (split into one per example).
        images: uint8 (0..255) or float (in [0, 1]) ``[B, H, W, C]``, C 1 or 3.
        config: the view's `AugmentationConfig` (e.g. ``VIEW1``).
        crop: apply the random resized crop (False when the host cropped).
        output_size: output side or (height, width); default the input's.

    >>> images = jnp.zeros((4, 28, 28, 1), jnp.uint8)
    >>> augment(jax.random.key(0), images, VIEW1).shape
    (4, 28, 28, 1)
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
    """BYOL's two views of a batch: `augment` with ``view1`` and ``view2``."""
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
    """Channel-wise ``(x - mean) / std`` of images in [0, 1] (uint8: divided by 255).

    The default mean and std are ImageNet's for 3 channels, and for 1 channel
    their luma-weighted values (0.4589, 0.2256).

    >>> float(normalize(jnp.full((1, 2, 2, 3), 0.485))[0, 0, 0, 0])
    0.0
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
