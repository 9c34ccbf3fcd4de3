"""ResNet v1 encoders and MLP heads, with the normalisation chosen by config.

With ``bn`` norms, module and parameter names and shapes are identical to
Haiku's `hk.nets.ResNet50` (minus its logits layer) and to DeepMind's BYOL
code, so the released BYOL checkpoints load without renaming:
``res_net50/~/initial_conv``, ``res_net50/~/initial_batchnorm``,
``res_net50/~/block_group_0/~/block_0/~/conv_0``, ``.../batchnorm_0``,
``.../shortcut_conv``, ``.../shortcut_batchnorm``. The heads are named like
DeepMind's BYOL ``MLP``, which builds its layers inside ``__call__``, so Haiku
names them without ``~``: ``projector/linear``, ``projector/batch_norm``,
``projector/linear_1`` (same for ``predictor``).

Deliberate differences from `hk.nets.ResNet`:
- every norm's scale (gamma) is initialised to 1, as in the BYOL paper (Haiku
  zero-initialises the last BN of each bottleneck block);
- the norm (and WS convolutions) come from a `NormConfig`;
- no logits layer: the network returns the global-average-pooled embedding;
- ``width_multiplier`` scales every conv, the stem included (as DeepMind's
  BYOL ``ResNetTorso``);
- ``small_image=True`` swaps the stem for a 3x3/1 conv without max-pool.

Minimum image size: each spatial side must be at least the network's total
stride, 32 for the standard stem (7x7/2 conv, 3x3/2 max-pool, stages strided
1, 2, 2, 2) and 8 for the small-image stem (stages only), so that the last
stage sees at least one full stride cell of real pixels. ('SAME' padding would
let smaller images run, but the last stages would then mostly convolve
padding.)
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
    """Smallest image side a ResNet encoder accepts (its total stride).

    Args:
      small_image: Whether the small-image stem (3x3/1 conv, no max-pool) is
        used.

    Returns:
      32 for the standard stem, 8 for the small-image stem.

    Example:
      >>> min_image_size(False), min_image_size(True)
      (32, 8)
    """
    stages = 1
    for stride in _STAGE_STRIDES:
        stages *= stride
    return stages if small_image else 4 * stages


def _conv(norm: NormConfig, channels: int, kernel: int, stride: int, name: str):
    """A bias-free 'SAME' conv, weight-standardised when ``norm.ws``."""
    kwargs = dict(
        output_channels=channels,
        kernel_shape=kernel,
        stride=stride,
        with_bias=False,
        padding="SAME",
        name=name,
    )
    if norm.ws:
        return WSConv2D(ws_eps=norm.ws_eps, **kwargs)
    return hk.Conv2D(**kwargs)


def _stored(x: jax.Array) -> jax.Array:
    """`x`, kept as the buffer it is in; a conv's input, for its backward pass.

    Without the barrier XLA:CPU recomputes the normalisation and ReLU that
    made `x` inside the layout transposes of the conv's filter gradient, which
    ran the demo's step 1.12x slower than transposing the stored `x`. XLA:CPU
    keeps the barrier only when its `cse_barrier_expander` pass is disabled
    (`byol.xla_flags` does so on CPU), and removes it otherwise. On GPU/TPU
    a conv's input is stored anyway; the barrier's effect there is unmeasured.
    """
    return jax.lax.optimization_barrier(x)


def _linear(norm: NormConfig, size: int, with_bias: bool, name: str):
    """A linear layer, weight-standardised when ``norm.ws``."""
    if norm.ws:
        return WSLinear(size, with_bias=with_bias, ws_eps=norm.ws_eps, name=name)
    return hk.Linear(size, with_bias=with_bias, name=name)


class BlockV1(hk.Module):
    """ResNet v1 (post-activation) block, basic or bottleneck."""

    def __init__(
        self,
        channels: int,
        stride: int,
        use_projection: bool,
        bottleneck: bool,
        norm: NormConfig,
        name: str | None = None,
    ):
        """Constructs the block (names as `hk.nets.ResNet.BlockV1`).

        Args:
          channels: Output channels (the bottleneck's inner width is 1/4).
          stride: Spatial stride of the block.
          use_projection: Whether the shortcut is a 1x1 conv + norm.
          bottleneck: 1x1-3x3-1x1 bottleneck, else 3x3-3x3 basic block.
          norm: The normalisation.
          name: Module name.
        """
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
        """Applies the block."""
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
        self,
        channels: int,
        num_blocks: int,
        stride: int,
        bottleneck: bool,
        use_projection: bool,
        norm: NormConfig,
        name: str | None = None,
    ):
        """Constructs the stage (names ``block_0``, ``block_1``, ...).

        Args:
          channels: Output channels of every block.
          num_blocks: Number of blocks.
          stride: Stride of the first block.
          bottleneck: Block type.
          use_projection: Whether the first block has a projection shortcut.
          norm: The normalisation.
          name: Module name.
        """
        super().__init__(name=name)
        self.blocks = [
            BlockV1(
                channels=channels,
                stride=stride if i == 0 else 1,
                use_projection=use_projection and i == 0,
                bottleneck=bottleneck,
                norm=norm,
                name=f"block_{i}",
            )
            for i in range(num_blocks)
        ]

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        """Applies the blocks in order."""
        out = inputs
        for block in self.blocks:
            out = block(out, is_training)
        return out


def _check_length(value: Sequence, field: str) -> None:
    if len(value) != 4:
        raise ValueError(f"{field} must have length 4, got {len(value)}")


class ResNet(hk.Module):
    """ResNet v1 torso returning the global-average-pooled embedding.

    Example:
      >>> def f(x, is_training):
      ...     return ResNet50(norm=NormConfig("gn", ws=True))(x, is_training)
      >>> net = hk.transform_with_state(f)
      >>> # params, state = net.init(rng, images, True)
      >>> # emb, state = net.apply(params, state, rng, images, True)  # [B, 2048]
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
        """Constructs the torso.

        Args:
          blocks_per_group: Blocks in each of the 4 stages.
          bottleneck: Bottleneck blocks (ResNet-50+) or basic blocks.
          channels_per_group: Output channels of each stage (before width).
          use_projection: Whether each stage's first block has a projection
            shortcut.
          width_multiplier: Multiplies every conv's channels, the stem's too.
          norm: Normalisation of every norm slot, and whether convs use WS.
          small_image: 3x3/1 stem conv without max-pool (28-64 px images).
          stem_channels: Stem conv channels before ``width_multiplier``.
          name: Module name (default from the class: ``res_net50`` ...).

        Raises:
          ValueError: On sequences not of length 4 or a width < 1.
        """
        super().__init__(name=name)
        _check_length(blocks_per_group, "blocks_per_group")
        _check_length(channels_per_group, "channels_per_group")
        _check_length(use_projection, "use_projection")
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
                channels=channels_per_group[i] * width_multiplier,
                num_blocks=blocks_per_group[i],
                stride=_STAGE_STRIDES[i],
                bottleneck=bottleneck,
                use_projection=use_projection[i],
                norm=norm,
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
        height, width = inputs.shape[1:3]
        if min(height, width) < min_size:
            if inputs.shape[-1] >= min_size and inputs.shape[1] <= 4:
                raise ValueError(
                    f"inputs shape {tuple(inputs.shape)} looks like NCHW; "
                    "expected NHWC [batch, height, width, channels]"
                )
            stem = "small-image" if self.small_image else "standard"
            hint = "" if self.small_image else "; use small_image=True for 8-31 px"
            raise ValueError(
                f"image size {min(height, width)} too small for the {stem} stem "
                f"(min {min_size}){hint}"
            )

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        """Embeds a batch of images.

        Args:
          inputs: Images [B, H, W, C], H and W >= `min_image_size`.
          is_training: Training mode (BN uses batch statistics and updates
            its moving averages).

        Returns:
          Embeddings [B, D], D the last stage's channels.

        Raises:
          ValueError: On non-NHWC or too-small inputs.
        """
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


_BASIC = dict(
    bottleneck=False,
    channels_per_group=(64, 128, 256, 512),
    use_projection=(False, True, True, True),
)
_BOTTLENECK = dict(
    bottleneck=True,
    channels_per_group=(256, 512, 1024, 2048),
    use_projection=(True, True, True, True),
)


class _FixedDepthResNet(ResNet):
    """A `ResNet` whose architecture is fixed by class attributes."""

    BLOCKS: tuple[int, ...] = ()
    CONFIG: dict = {}
    STEM_CHANNELS = 64

    def __init__(
        self,
        *,
        width_multiplier: int = 1,
        norm: NormConfig = NormConfig(),  # noqa: B008 (frozen dataclass)
        small_image: bool = False,
        name: str | None = None,
    ):
        """Constructs the network.

        Args:
          width_multiplier: Multiplies every conv's channels, the stem's too.
          norm: Normalisation of every norm slot, and whether convs use WS.
          small_image: 3x3/1 stem conv without max-pool (28-64 px images).
          name: Module name (default from the class, e.g. ``res_net50``).
        """
        super().__init__(
            self.BLOCKS,
            width_multiplier=width_multiplier,
            norm=norm,
            small_image=small_image,
            stem_channels=self.STEM_CHANNELS,
            name=name,
            **self.CONFIG,
        )


class ResNet18(_FixedDepthResNet):
    """ResNet-18: basic blocks (2, 2, 2, 2), channels (64, 128, 256, 512)."""

    BLOCKS = (2, 2, 2, 2)
    CONFIG = _BASIC


class ResNet34(_FixedDepthResNet):
    """ResNet-34: basic blocks (3, 4, 6, 3), channels (64, 128, 256, 512)."""

    BLOCKS = (3, 4, 6, 3)
    CONFIG = _BASIC


class ResNet50(_FixedDepthResNet):
    """ResNet-50: bottleneck blocks (3, 4, 6, 3), channels (256, ..., 2048)."""

    BLOCKS = (3, 4, 6, 3)
    CONFIG = _BOTTLENECK


class ResNet101(_FixedDepthResNet):
    """ResNet-101: bottleneck blocks (3, 4, 23, 3), channels (256, ..., 2048)."""

    BLOCKS = (3, 4, 23, 3)
    CONFIG = _BOTTLENECK


class ResNet152(_FixedDepthResNet):
    """ResNet-152: bottleneck blocks (3, 8, 36, 3), channels (256, ..., 2048)."""

    BLOCKS = (3, 8, 36, 3)
    CONFIG = _BOTTLENECK


class ResNet200(_FixedDepthResNet):
    """ResNet-200: bottleneck blocks (3, 24, 36, 3), channels (256, ..., 2048)."""

    BLOCKS = (3, 24, 36, 3)
    CONFIG = _BOTTLENECK


class TinyResNet(_FixedDepthResNet):
    """A 1-basic-block-per-stage ResNet for tests and CPU demos.

    Channels (8, 16, 32, 64) and an 8-channel stem, all times
    ``width_multiplier``; projection shortcuts as ResNet-18. With ``gn`` and
    16 groups use width_multiplier >= 2 (or fewer groups), since the
    group count must divide every channel count.

    Example:
      >>> emb = TinyResNet(small_image=True)(images, True)  # doctest: +SKIP
    """

    BLOCKS = (1, 1, 1, 1)
    CONFIG = dict(
        bottleneck=False,
        channels_per_group=(8, 16, 32, 64),
        use_projection=(False, True, True, True),
    )
    STEM_CHANNELS = 8


ENCODERS: dict[str, type] = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet152": ResNet152,
    "resnet200": ResNet200,
    "tiny": TinyResNet,
}


def make_encoder(name: str, **kwargs) -> ResNet:
    """Constructs an encoder by name (inside `hk.transform`).

    Args:
      name: A key of `ENCODERS`.
      **kwargs: ``width_multiplier``, ``norm``, ``small_image``, ``name``.

    Returns:
      The encoder module.

    Raises:
      ValueError: On an unknown name.

    Example:
      >>> def f(images):  # [B, 32, 32, 3] -> [B, 512]
      ...     enc = make_encoder("resnet18", norm=NormConfig("gn"), small_image=True)
      ...     return enc(images, is_training=True)
    """
    if name not in ENCODERS:
        raise ValueError(
            f"encoder {name!r} unknown; expected one of: {', '.join(ENCODERS)}"
        )
    return ENCODERS[name](**kwargs)


class MLP(hk.Module):
    """Projector / predictor head: Linear -> norm -> ReLU -> Linear.

    Names as DeepMind's BYOL: ``linear`` (with bias), ``batch_norm`` (the norm
    slot, whatever its kind), ``linear_1`` (no bias). The output is not
    normalised.

    Example:
      >>> def project(embedding):  # inside hk.transform: [B, D] -> [B, 256]
      ...     proj = MLP(4096, 256, norm=NormConfig("gn"), name="projector")
      ...     return proj(embedding, is_training=True)
    """

    def __init__(
        self,
        hidden_size: int,
        output_size: int,
        *,
        norm: NormConfig = NormConfig(),  # noqa: B008 (frozen dataclass)
        name: str | None = None,
    ):
        """Constructs the head.

        Args:
          hidden_size: Width of the hidden layer.
          output_size: Output width.
          norm: Normalisation of the hidden layer; ``norm.ws`` makes both
            linear layers weight-standardised.
          name: Module name (``projector`` / ``predictor`` in BYOL).
        """
        super().__init__(name=name)
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.norm = norm

    def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
        """Applies the head to [B, D] inputs, returns [B, output_size]."""
        # Built here, not in __init__, so Haiku names them "projector/linear"
        # (no "~"), as in DeepMind's BYOL MLP and its released checkpoints.
        out = _linear(self.norm, self.hidden_size, True, "linear")(x)
        out = make_norm(self.norm, "batch_norm")(out, is_training)
        out = jax.nn.relu(out)
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
    # Vanilla BYOL: BN everywhere.
    "bn": NetworkNorms(_BN, _BN, _BN),
    # Richemond et al. 2020: GN (16 groups) everywhere, WS on the encoder convs.
    "gn_ws": NetworkNorms(dataclasses.replace(_GN, ws=True), _GN, _GN),
    # No normalisation anywhere (collapses: 0.1% top-1 in the report).
    "none": NetworkNorms(_NONE, _NONE, _NONE),
    # BN in the encoder only (72.1% at 300 epochs in the report).
    "bn_encoder": NetworkNorms(_BN, _NONE, _NONE),
}


def norm_preset(name: str, **overrides) -> NetworkNorms:
    """Returns a named set of per-component norms, optionally overridden.

    Args:
      name: A key of `NORM_PRESETS`.
      **overrides: Either `NormConfig` fields (e.g. ``num_groups=8``,
        ``cross_replica_axis="i"``, ``ws_eps=1e-5``), applied to every
        component; or component names (``encoder``, ``projector``,
        ``predictor``) with a whole `NormConfig`, applied after the field
        overrides.

    Returns:
      The `NetworkNorms`.

    Raises:
      ValueError: On an unknown preset or override name, or invalid values.

    Example:
      >>> norms = norm_preset("bn", cross_replica_axis="i")
      >>> norms = norm_preset("gn_ws", projector=NormConfig("bn"))
    """
    if name not in NORM_PRESETS:
        raise ValueError(
            f"norm preset {name!r} unknown; expected one of: {', '.join(NORM_PRESETS)}"
        )
    fields = {f.name for f in dataclasses.fields(NormConfig)}
    components = set(NetworkNorms._fields)
    unknown = sorted(set(overrides) - fields - components)
    if unknown:
        allowed = ", ".join(sorted(fields) + list(NetworkNorms._fields))
        raise ValueError(
            f"norm_preset override {unknown[0]!r} unknown; expected one of: {allowed}"
        )
    field_overrides = {k: v for k, v in overrides.items() if k in fields}
    norms = NORM_PRESETS[name]
    norms = NetworkNorms(*(dataclasses.replace(c, **field_overrides) for c in norms))
    for component in NetworkNorms._fields:
        if component in overrides:
            value = overrides[component]
            if not isinstance(value, NormConfig):
                raise ValueError(
                    f"{component} {value!r} invalid; expected a NormConfig"
                )
            norms = norms._replace(**{component: value})
    return norms
