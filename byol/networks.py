"""ResNet v1 encoders and MLP heads, with the normalisation chosen by config.

With ``bn`` norms, module and parameter names and shapes are those of Haiku's
`hk.nets.ResNet50` (minus its logits) and of DeepMind's BYOL code, so the
released checkpoints load without renaming: ``res_net50/~/initial_conv``,
``.../block_group_0/~/block_0/~/conv_0``, ``.../batchnorm_0``,
``.../shortcut_conv``; heads ``projector/linear``, ``projector/batch_norm``,
``projector/linear_1``. Unlike `hk.nets.ResNet`: every norm's scale starts at
1 (the paper's γ = 1), the norm and WS come from a `NormConfig`, there is no
logits layer, ``width_multiplier`` scales the stem too (as DeepMind's
``ResNetTorso``), and ``small_image=True`` swaps the stem for a 3x3/1 conv
without max-pool.

Each image side must be at least the total stride (32 for the standard stem,
8 for the small-image one), so that the last stage sees real pixels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from byol.normalization import NormConfig, WSConv2D, WSLinear, make_norm

_STAGE_STRIDES = (1, 2, 2, 2)


def min_image_size(small_image: bool) -> int:
    """Smallest image side an encoder accepts: its total stride.

    >>> min_image_size(False), min_image_size(True)
    (32, 8)
    """
    stride = 1
    for s in _STAGE_STRIDES:
        stride *= s
    return stride if small_image else 4 * stride


def _stores_conv_inputs() -> bool:
    """Whether conv inputs pass through an optimisation barrier (CPU only).

    On XLA:CPU the barrier stops the filter gradient's layout transposes from
    recomputing the norm and ReLU that made the input: the demo's step ran
    1.12x faster (docs/speed.md). XLA:GPU and TPU would see it as a constraint
    on every fusion pass, so their programs carry none. Decided when traced.
    """
    return jax.default_backend() == "cpu"


def _stored(x: jax.Array) -> jax.Array:
    return jax.lax.optimization_barrier(x) if _stores_conv_inputs() else x


def _conv(norm: NormConfig, channels: int, kernel: int, stride: int, name: str):
    conv = WSConv2D if norm.ws else hk.Conv2D
    extra = dict(ws_eps=norm.ws_eps) if norm.ws else {}
    return conv(
        output_channels=channels,
        kernel_shape=kernel,
        stride=stride,
        with_bias=False,
        padding="SAME",
        name=name,
        **extra,
    )


def _linear(norm: NormConfig, size: int, with_bias: bool, name: str):
    if norm.ws:
        return WSLinear(size, with_bias=with_bias, ws_eps=norm.ws_eps, name=name)
    return hk.Linear(size, with_bias=with_bias, name=name)


class BlockV1(hk.Module):
    """ResNet v1 (post-activation) block, basic or bottleneck (Haiku's names)."""

    def __init__(self, channels, stride, use_projection, bottleneck, norm, name=None):
        super().__init__(name=name)
        self.use_projection = use_projection
        if use_projection:
            self.proj_conv = _conv(norm, channels, 1, stride, "shortcut_conv")
            self.proj_norm = make_norm(norm, "shortcut_batchnorm")
        if bottleneck:
            inner = channels // 4
            specs = ((inner, 1, 1), (inner, 3, stride), (channels, 1, 1))
        else:
            specs = ((channels, 3, stride), (channels, 3, 1))
        self.layers = tuple(
            (_conv(norm, c, k, s, f"conv_{i}"), make_norm(norm, f"batchnorm_{i}"))
            for i, (c, k, s) in enumerate(specs)
        )

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        out = shortcut = inputs = _stored(inputs)
        if self.use_projection:
            shortcut = self.proj_norm(self.proj_conv(inputs), is_training)
        for i, (conv, norm) in enumerate(self.layers):
            out = norm(conv(out), is_training)
            if i < len(self.layers) - 1:
                out = _stored(jax.nn.relu(out))
        return jax.nn.relu(out + shortcut)


class BlockGroup(hk.Module):
    """A stage: ``num_blocks`` blocks, the first strided (and projected)."""

    def __init__(
        self, channels, num_blocks, stride, bottleneck, use_projection, norm, name=None
    ):
        super().__init__(name=name)
        self.blocks = [
            BlockV1(
                channels,
                stride if i == 0 else 1,
                use_projection and i == 0,
                bottleneck,
                norm,
                name=f"block_{i}",
            )
            for i in range(num_blocks)
        ]

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        for block in self.blocks:
            inputs = block(inputs, is_training)
        return inputs


class ResNet(hk.Module):
    """ResNet v1 torso returning the global-average-pooled embedding [B, D].

    Example (inside `hk.transform_with_state`)::

        embedding = ResNet50(norm=NormConfig("gn", ws=True))(images, is_training)
    """

    def __init__(
        self,
        blocks_per_group: Sequence[int],
        *,
        bottleneck: bool,
        channels_per_group: Sequence[int],
        use_projection: Sequence[bool],
        width_multiplier: int = 1,
        norm: NormConfig = NormConfig(),  # noqa: B008 (frozen dataclass)
        small_image: bool = False,
        stem_channels: int = 64,
        name: str | None = None,
    ):
        """Constructs the torso; the sequences give the 4 stages' settings.

        Raises:
          ValueError: a sequence not of length 4, or a width < 1 (either would
            build another network than asked for).
        """
        super().__init__(name=name)
        for field, value in (
            ("blocks_per_group", blocks_per_group),
            ("channels_per_group", channels_per_group),
            ("use_projection", use_projection),
        ):
            if len(value) != 4:
                raise ValueError(f"{field} must have length 4, got {len(value)}")
        if width_multiplier < 1:
            raise ValueError(
                f"width_multiplier {width_multiplier!r} invalid; expected >= 1"
            )
        self.small_image = small_image
        stem_kernel, stem_stride = (3, 1) if small_image else (7, 2)
        self.initial_conv = _conv(
            norm,
            stem_channels * width_multiplier,
            stem_kernel,
            stem_stride,
            "initial_conv",
        )
        self.initial_norm = make_norm(norm, "initial_batchnorm")
        self.block_groups = [
            BlockGroup(
                channels_per_group[i] * width_multiplier,
                blocks_per_group[i],
                _STAGE_STRIDES[i],
                bottleneck,
                use_projection[i],
                norm,
                name=f"block_group_{i}",
            )
            for i in range(4)
        ]

    def _check_inputs(self, inputs: jax.Array) -> None:
        if inputs.ndim != 4:
            raise ValueError(
                f"inputs shape {tuple(inputs.shape)} invalid; expected NHWC "
                "[batch, height, width, channels]"
            )
        min_size = min_image_size(self.small_image)
        if min(inputs.shape[1:3]) < min_size:
            if inputs.shape[-1] >= min_size and inputs.shape[1] <= 4:
                raise ValueError(
                    f"inputs shape {tuple(inputs.shape)} looks like NCHW; "
                    "expected NHWC [batch, height, width, channels]"
                )
            stem = "small-image" if self.small_image else "standard"
            hint = "" if self.small_image else "; use small_image=True for 8-31 px"
            raise ValueError(
                f"image size {min(inputs.shape[1:3])} too small for the {stem} "
                f"stem (min {min_size}){hint}"
            )

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        """Embeds images [B, H, W, C]; BN uses batch statistics when training."""
        self._check_inputs(inputs)
        out = self.initial_conv(_stored(inputs))
        out = jax.nn.relu(self.initial_norm(out, is_training))
        if not self.small_image:
            out = hk.max_pool(
                out, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME"
            )
        for group in self.block_groups:
            out = group(out, is_training)
        return jnp.mean(out, axis=(1, 2))


class Depth(NamedTuple):
    """An encoder of the table: Haiku module name and `ResNet` arguments."""

    module: str
    blocks_per_group: tuple[int, ...]
    bottleneck: bool
    channels_per_group: tuple[int, ...]
    use_projection: tuple[bool, ...]
    stem_channels: int = 64


_BASIC = (False, (64, 128, 256, 512), (False, True, True, True))
_BOTTLENECK = (True, (256, 512, 1024, 2048), (True, True, True, True))
DEPTHS: dict[str, Depth] = {
    "resnet18": Depth("res_net18", (2, 2, 2, 2), *_BASIC),
    "resnet34": Depth("res_net34", (3, 4, 6, 3), *_BASIC),
    "resnet50": Depth("res_net50", (3, 4, 6, 3), *_BOTTLENECK),
    "resnet101": Depth("res_net101", (3, 4, 23, 3), *_BOTTLENECK),
    "resnet152": Depth("res_net152", (3, 8, 36, 3), *_BOTTLENECK),
    "resnet200": Depth("res_net200", (3, 24, 36, 3), *_BOTTLENECK),
    # One basic block per stage, channels 8-64 and an 8-channel stem (times the
    # width): for tests and CPU demos. GN with 16 groups needs width >= 2.
    "tiny": Depth("tiny_res_net", (1, 1, 1, 1), False, (8, 16, 32, 64), _BASIC[2], 8),
}


def make_encoder(name: str, **kwargs) -> ResNet:
    """The encoder `name` of `DEPTHS` (inside `hk.transform`).

    Args:
      name: a key of `DEPTHS`, e.g. ``resnet50``.
      **kwargs: ``width_multiplier``, ``norm``, ``small_image``, ``name``.
    """
    if name not in DEPTHS:
        raise ValueError(
            f"encoder {name!r} unknown; expected one of: {', '.join(DEPTHS)}"
        )
    module, *architecture = DEPTHS[name]
    fields = dict(zip(Depth._fields[1:], architecture, strict=True))
    kwargs.setdefault("name", module)
    return ResNet(**fields, **kwargs)


def normalised_widths(encoder: str, width_multiplier: int) -> set[int]:
    """The channel counts an encoder normalises (what GN's groups must divide)."""
    depth = DEPTHS[encoder]
    stages = [c * width_multiplier for c in depth.channels_per_group]
    widths = {depth.stem_channels * width_multiplier, *stages}
    return widths | ({c // 4 for c in stages} if depth.bottleneck else set())


def ResNet18(**kwargs) -> ResNet:  # noqa: N802 (named as Haiku's)
    """ResNet-18: basic blocks (2, 2, 2, 2), channels 64-512."""
    return make_encoder("resnet18", **kwargs)


def ResNet34(**kwargs) -> ResNet:  # noqa: N802
    """ResNet-34: basic blocks (3, 4, 6, 3), channels 64-512."""
    return make_encoder("resnet34", **kwargs)


def ResNet50(**kwargs) -> ResNet:  # noqa: N802
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), channels 256-2048."""
    return make_encoder("resnet50", **kwargs)


def ResNet101(**kwargs) -> ResNet:  # noqa: N802
    """ResNet-101: bottleneck blocks (3, 4, 23, 3), channels 256-2048."""
    return make_encoder("resnet101", **kwargs)


def ResNet152(**kwargs) -> ResNet:  # noqa: N802
    """ResNet-152: bottleneck blocks (3, 8, 36, 3), channels 256-2048."""
    return make_encoder("resnet152", **kwargs)


def ResNet200(**kwargs) -> ResNet:  # noqa: N802
    """ResNet-200: bottleneck blocks (3, 24, 36, 3), channels 256-2048."""
    return make_encoder("resnet200", **kwargs)


def TinyResNet(**kwargs) -> ResNet:  # noqa: N802
    """One basic block per stage, channels 8-64 (times the width), 8-channel stem."""
    return make_encoder("tiny", **kwargs)


ENCODERS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnet200": ResNet200,
    "tiny": TinyResNet,
}


class MLP(hk.Module):
    """Projector / predictor head: Linear -> norm -> ReLU -> Linear.

    Named as DeepMind's BYOL MLP (``linear``, ``batch_norm`` whatever the
    norm's kind, ``linear_1`` without bias); ``norm.ws`` standardises both
    linear layers. The output is not normalised.
    """

    def __init__(
        self,
        hidden_size: int,
        output_size: int,
        *,
        norm: NormConfig = NormConfig(),  # noqa: B008 (frozen dataclass)
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.norm = norm

    def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
        # Built here, not in __init__, so Haiku names them "projector/linear"
        # (no "~"), as the released checkpoints do.
        out = _linear(self.norm, self.hidden_size, True, "linear")(x)
        out = jax.nn.relu(make_norm(self.norm, "batch_norm")(out, is_training))
        return _linear(self.norm, self.output_size, False, "linear_1")(out)


class NetworkNorms(NamedTuple):
    """The normalisation of each BYOL network component."""

    encoder: NormConfig
    projector: NormConfig
    predictor: NormConfig


_BN = NormConfig(kind="bn")
_GN = NormConfig(kind="gn", num_groups=16)
_NONE = NormConfig(kind="none")
NORM_PRESETS: dict[str, NetworkNorms] = {
    "bn": NetworkNorms(_BN, _BN, _BN),  # vanilla BYOL
    # Richemond et al. 2020: GN (16 groups) everywhere, WS on the encoder convs.
    "gn_ws": NetworkNorms(dataclasses.replace(_GN, ws=True), _GN, _GN),
    "none": NetworkNorms(_NONE, _NONE, _NONE),  # collapses (0.1% in the report)
    "bn_encoder": NetworkNorms(_BN, _NONE, _NONE),  # 72.1% in the report
}


def norm_preset(name: str, **overrides) -> NetworkNorms:
    """A named set of per-component norms, with overrides.

    Args:
      name: a key of `NORM_PRESETS`.
      **overrides: `NormConfig` fields applied to every component (e.g.
        ``num_groups=8``), or component names (``encoder``, ``projector``,
        ``predictor``) with a whole `NormConfig`, applied after them.

    >>> norm_preset("gn_ws", num_groups=8).projector.num_groups
    8
    """
    if name not in NORM_PRESETS:
        raise ValueError(
            f"norm preset {name!r} unknown; expected one of: {', '.join(NORM_PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(NormConfig)}
    unknown = sorted(set(overrides) - fields - set(NetworkNorms._fields))
    if unknown:
        allowed = ", ".join(sorted(fields) + list(NetworkNorms._fields))
        raise ValueError(
            f"norm_preset override {unknown[0]!r} unknown; expected one of: {allowed}"
        )
    common = {k: v for k, v in overrides.items() if k in fields}
    norms = NetworkNorms(
        *(dataclasses.replace(c, **common) for c in NORM_PRESETS[name])
    )
    return norms._replace(
        **{k: v for k, v in overrides.items() if k in NetworkNorms._fields}
    )
