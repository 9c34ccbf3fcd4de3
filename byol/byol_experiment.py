"""BYOL pre-training: the training state, its initialisation and the pmapped step.

`ByolExperiment` holds no arrays: it builds the Haiku forward once from a
config and exposes pure functions of the training state. The training loop
(`byol.train`) owns the state, the data and the checkpoints.

One step, as data:

    uint8 images ─ augment view 1 / view 2 (per example, on device) ─ normalise
      online forward (both views) ─┐
      target forward (both views) ─┴→ 2 − 2cos, symmetrised + online classifier
      grads ─pmean→ LARS → online params;  τ(step) ─EMA→ target params

With `training.accumulation_steps` k > 1 the device's batch is augmented as a
whole, then split into k micro-batches; a `lax.scan` runs the forward and
backward passes one micro-batch at a time (activation memory of one
micro-batch) and sums their gradients; their mean takes one optimiser step
and one target update. Without batch statistics (GN + WS) this is the update
of the whole batch, up to float rounding; with BN each micro-batch is
normalised by its own statistics (over b, not k·b examples per device, and the
moving averages move k times per step), so it only approximates the large
batch. `model.compute_dtype = "bfloat16"` runs the networks in bfloat16
(`byol.precision`): parameters, optimiser state, normalisation statistics and
the loss stay float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

from byol import (
    augmentations,
    bn_init,
    losses,
    networks,
    optimizers,
    precision,
    schedules,
)
from byol.normalization import NormConfig
from byol.target import update_target

AXIS = "i"  # the pmap axis: every device of every process


class TrainState(NamedTuple):
    """Everything a BYOL step reads and writes (one replica)."""

    online_params: hk.Params
    online_state: hk.State
    target_params: hk.Params
    target_state: hk.State
    opt_state: optax.OptState


def network_norms(model: ml_collections.ConfigDict) -> networks.NetworkNorms:
    """The per-component normalisation a model config asks for.

    Args:
        model: the `model` section of a config (norm preset, overrides, groups).

    Returns:
        The encoder/projector/predictor `NormConfig`s, BN synchronised over AXIS.
    """
    preset = networks.norm_preset(model.norm)

    def component(norm: NormConfig, kind: str, ws: bool) -> NormConfig:
        kind = kind or norm.kind
        return dataclasses.replace(
            norm,
            kind=kind,
            num_groups=model.num_groups,
            ws=ws,
            ws_eps=model.ws_eps,
            cross_replica_axis=AXIS if kind == "bn" else None,
        )

    encoder_ws = preset.encoder.ws if model.encoder_ws < 0 else bool(model.encoder_ws)
    return networks.NetworkNorms(
        encoder=component(preset.encoder, model.encoder_norm, encoder_ws),
        projector=component(preset.projector, model.projector_norm, bool(model.mlp_ws)),
        predictor=component(preset.predictor, model.predictor_norm, bool(model.mlp_ws)),
    )


def make_forward(
    model: ml_collections.ConfigDict,
    norms: networks.NetworkNorms,
    num_classes: int,
    with_predictor: bool = True,
) -> hk.TransformedWithState:
    """The BYOL network: encoder → projector → predictor, plus a linear probe.

    The classifier sees `stop_gradient(embedding)`, so it monitors the
    representation without shaping it. With `with_predictor=False` (SimCLR)
    there is no predictor module and no ``prediction`` output.
    """

    def forward(images: jax.Array, is_training: bool) -> dict[str, jax.Array]:
        encoder = networks.make_encoder(
            model.encoder,
            width_multiplier=model.width_multiplier,
            norm=norms.encoder,
            small_image=model.small_image,
        )
        projector = networks.MLP(
            model.projector_hidden_size,
            model.projection_size,
            norm=norms.projector,
            name="projector",
        )
        predictor = networks.MLP(
            model.predictor_hidden_size,
            model.projection_size,
            norm=norms.predictor,
            name="predictor",
        )
        classifier = hk.Linear(num_classes, name="classifier")
        embedding = encoder(images, is_training)
        projection = projector(embedding, is_training)
        outputs = dict(
            embedding=embedding,
            projection=projection,
            logits=classifier(jax.lax.stop_gradient(embedding)),
        )
        if with_predictor:
            outputs["prediction"] = predictor(projection, is_training)
        return outputs

    return hk.transform_with_state(forward)


def _predictor_mask(params: hk.Params):
    return {
        module: {name: module.startswith("predictor") for name in leaves}
        for module, leaves in params.items()
    }


def collapse_indicator(projection: jax.Array) -> jax.Array:
    """Mean over dimensions of the batch std of l2-normalised outputs, times √d.

    About 1 for well-spread outputs, 0 when every example maps to one direction.
    """
    z = losses.l2_normalize(projection)
    return jnp.mean(jnp.std(z, axis=0)) * jnp.sqrt(z.shape[-1])


def _top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    k = min(k, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    hits = jnp.any(top_k == labels[:, None], axis=-1)
    valid = labels >= 0
    return jnp.sum(hits & valid) / jnp.maximum(jnp.sum(valid), 1)


def classifier_scalars(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The online classifier's loss, top-1 and top-5 (unlabelled examples skipped).

    Unlabelled examples (label -1, e.g. STL-10's unlabelled split) count in
    neither the loss nor the accuracies.
    """
    valid = labels >= 0
    xent = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(valid, labels, 0)
    )
    return dict(
        classifier_loss=jnp.sum(xent * valid) / jnp.maximum(jnp.sum(valid), 1),
        top1=_top_k_accuracy(logits, labels, 1),
        top5=_top_k_accuracy(logits, labels, 5),
    )


class PretrainExperiment:
    """What BYOL and SimCLR share: network, LARS and its schedule, views, pmaps.

    Subclasses define `_init(rng, batch)` and `_update(state, step, batch)`
    (one replica's functions); this class pmaps them as `init` and `update`.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None,
        norms: networks.NetworkNorms,
        with_predictor: bool,
    ):
        self.config = config
        model, training = config.model, config.training
        self.norms = norms
        self.forward = make_forward(model, norms, num_classes, with_predictor)
        # float32 | bfloat16 (`byol.precision`).
        self.compute_dtype = jnp.dtype(model.get("compute_dtype", "float32"))
        self.lr_schedule = schedules.learning_rate_schedule(
            training.base_learning_rate,
            training.batch_size,
            training.max_steps,
            training.warmup_steps,
        )
        self.optimizer = optimizers.lars(
            self.lr_schedule, weight_decay=training.weight_decay
        )
        crop_area = (config.data.get("min_crop_area", 0.08), 1.0)
        self.view_configs = tuple(
            dataclasses.replace(view, crop_area_range=crop_area)
            for view in (augmentations.VIEW1, augmentations.VIEW2)
        )
        self._base_key = jax.random.key(config.seed)
        self.init = jax.pmap(
            self._init, axis_name=AXIS, in_axes=(None, 0), devices=devices
        )
        self.update = jax.pmap(
            self._update,
            axis_name=AXIS,
            in_axes=(0, None, 0),
            donate_argnums=(0,),
            devices=devices,
        )

    # ------------------------------------------------------------------ views
    def views(self, rng: jax.Array, batch: dict[str, jax.Array]):
        """Two augmented, normalised views of a batch (on the device).

        Fixed-size datasets send raw images (`images`) and are cropped here;
        JPEG datasets send two host-cropped views (`view1`, `view2`).
        """
        size = self.config.data.image_size
        if "images" in batch:
            view1, view2 = augmentations.augment_views(
                rng,
                batch["images"],
                crop=True,
                output_size=size,
                view1=self.view_configs[0],
                view2=self.view_configs[1],
            )
        else:
            rng1, rng2 = jax.random.split(rng)
            view1 = augmentations.augment(
                rng1, batch["view1"], augmentations.VIEW1, crop=False
            )
            view2 = augmentations.augment(
                rng2, batch["view2"], augmentations.VIEW2, crop=False
            )
        return augmentations.normalize(view1), augmentations.normalize(view2)

    def _step_views(self, step: jax.Array, batch: dict[str, jax.Array]):
        # The key is a function of (seed, step, device): resuming at a step
        # replays exactly the augmentations an uninterrupted run would draw.
        rng = jax.random.fold_in(self._base_key, step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
        return self.views(rng, batch)

    # ----------------------------------------------------------------- update
    def _apply(self, params, state, images, is_training=True):
        return precision.apply(
            self.forward, self.compute_dtype, params, state, images, is_training
        )

    def _optimizer_step(self, grads, params, opt_state, step, scalars):
        """pmean-ed grads → LARS → new params and optimiser state; the scalars.

        ``scalars`` (this device's loss terms and accuracies) gain the total
        loss, learning rate and norms, and are averaged over devices.
        """
        grads = jax.lax.pmean(grads, axis_name=AXIS)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        scalars = dict(
            scalars,
            loss=scalars["repr_loss"] + scalars["classifier_loss"],
            learning_rate=self.lr_schedule(step),
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            update_norm=optax.tree.norm(updates),
        )
        return params, opt_state, jax.lax.pmean(scalars, axis_name=AXIS)

    def _guard(self, new_state, state, scalars):
        return guard_nonfinite(
            new_state,
            state,
            scalars,
            self.config.training.get("skip_nonfinite_updates", False),
        )

    # --------------------------------------------------------------- features
    @functools.partial(jax.jit, static_argnums=0)
    def embed(self, params: hk.Params, state: hk.State, images: jax.Array):
        """Frozen-encoder features of uint8 images (inference mode, no crop)."""
        x = augmentations.normalize(images)
        out, _ = self._apply(params, state, x, is_training=False)
        return out["embedding"]


class ByolExperiment(PretrainExperiment):
    """BYOL (or BYOL without batch statistics) as pure, pmapped functions.

    Example:
        >>> exp = ByolExperiment(config, num_classes=10)            # doctest: +SKIP
        >>> state = exp.init(jax.random.key(0), first_batch)        # doctest: +SKIP
        >>> state, scalars = exp.update(state, step, batch)         # doctest: +SKIP
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None = None,
    ):
        """Builds the network, optimiser and schedules from a config.

        Args:
            config: a full config (see configs/common.py).
            num_classes: classes of the online linear classifier.
            devices: the devices `init` and `update` run on (default: every
                local device); the leading axis of their inputs is this long.
        """
        model, training = config.model, config.training
        norms = network_norms(model)
        if model.bn_init:
            if any(n.kind != "bn" for n in norms):
                raise ValueError(
                    "model.bn_init needs BN in every component (model.norm='bn' "
                    "and no per-component override)"
                )
            self._bn_forward = make_forward(model, norms, num_classes)
            norms = bn_init.to_affine(norms)
        super().__init__(config, num_classes, devices, norms, with_predictor=True)
        # Without batch statistics an example's output does not depend on the
        # rest of its batch, so both views can share one forward pass.
        self.batch_independent = all(n.kind != "bn" for n in self.norms)
        self.accumulation_steps = training.get("accumulation_steps", 1)
        self.tau_schedule = schedules.target_ema_schedule(
            training.base_target_ema, training.max_steps
        )
        if training.predictor_lr_multiplier != 1.0:
            # A faster predictor keeps it near its optimum for the current
            # projector, which Tian et al. (2021) found prevents collapse in
            # BYOL without batch statistics.
            self.optimizer = optax.chain(
                self.optimizer,
                optax.masked(
                    optax.scale(training.predictor_lr_multiplier), _predictor_mask
                ),
            )

    # ------------------------------------------------------------------- init
    def _init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        online_rng, target_rng, view_rng = jax.random.split(rng, 3)
        view1, _ = self.views(view_rng, batch)
        if self.config.model.bn_init:
            online_params = self._bn_statistics_params(online_rng, view1)
            target_params = self._bn_statistics_params(target_rng, view1)
            _, online_state = self.forward.init(online_rng, view1, is_training=True)
            target_state = online_state
        else:
            online_params, online_state = self.forward.init(
                online_rng, view1, is_training=True
            )
            target_params, target_state = self.forward.init(
                target_rng, view1, is_training=True
            )
        return TrainState(
            online_params=online_params,
            online_state=online_state,
            target_params=target_params,
            target_state=target_state,
            opt_state=self.optimizer.init(online_params),
        )

    def _bn_statistics_params(self, rng: jax.Array, images: jax.Array) -> hk.Params:
        params, state = self._bn_forward.init(rng, images, is_training=True)
        return bn_init.bn_statistics_init(
            self._bn_forward.apply, params, state, None, images, is_training=True
        )

    # ----------------------------------------------------------------- update
    def _two_view_forward(self, params, state, view1, view2):
        if self.batch_independent:
            both, state = self._apply(params, state, jnp.concatenate([view1, view2]))
            out1 = jax.tree.map(lambda x: x[: len(view1)], both)
            out2 = jax.tree.map(lambda x: x[len(view1) :], both)
            return out1, out2, state
        out1, state = self._apply(params, state, view1)
        out2, state = self._apply(params, state, view2)
        return out1, out2, state

    def _loss(
        self, online_params, online_state, target1, target2, view1, view2, labels
    ):
        out1, out2, online_state = self._two_view_forward(
            online_params, online_state, view1, view2
        )
        repr_loss = losses.byol_loss(
            out1["prediction"], out2["prediction"], target1, target2
        )
        scalars = dict(
            classifier_scalars(out1["logits"], labels),
            repr_loss=repr_loss,
            # Over the global batch: a per-device std would shrink with the
            # per-device batch, so the value would depend on the device count.
            collapse=collapse_indicator(
                jax.lax.all_gather(out1["projection"], AXIS, tiled=True)
            ),
        )
        return repr_loss + scalars["classifier_loss"], (online_state, scalars)

    def _grads(self, state: TrainState, online_state, target_state, micro_batch):
        """Gradients and scalars of one micro-batch; the new network states."""
        view1, view2, labels = micro_batch
        target1, target2, target_state = self._two_view_forward(
            state.target_params, target_state, view1, view2
        )
        grad_fn = jax.grad(self._loss, has_aux=True)
        grads, (online_state, scalars) = grad_fn(
            state.online_params,
            online_state,
            target1["projection"],
            target2["projection"],
            view1,
            view2,
            labels,
        )
        return grads, online_state, target_state, scalars

    def _accumulated_grads(self, state: TrainState, views_and_labels):
        """`_grads` averaged over `accumulation_steps` micro-batches, in a scan."""
        k = self.accumulation_steps
        micro_batches = jax.tree.map(
            lambda x: x.reshape((k, -1) + x.shape[1:]), views_and_labels
        )

        def accumulate(carry, micro_batch):
            grad_sum, online_state, target_state = carry
            grads, online_state, target_state, scalars = self._grads(
                state, online_state, target_state, micro_batch
            )
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, online_state, target_state), scalars

        zeros = jax.tree.map(jnp.zeros_like, state.online_params)
        (grads, online_state, target_state), scalars = jax.lax.scan(
            accumulate, (zeros, state.online_state, state.target_state), micro_batches
        )
        grads = jax.tree.map(lambda g: g / k, grads)
        scalars = jax.tree.map(lambda s: jnp.mean(s, axis=0), scalars)
        return grads, online_state, target_state, scalars

    def _update(self, state: TrainState, step: jax.Array, batch: dict[str, jax.Array]):
        # Augmented before the split, so every example gets the same views
        # whatever the number of micro-batches.
        view1, view2 = self._step_views(step, batch)
        k = self.accumulation_steps
        if k == 1:
            # No scan: XLA:CPU ran the step inside a one-trip loop 8x slower.
            grads, online_state, target_state, scalars = self._grads(
                state,
                state.online_state,
                state.target_state,
                (view1, view2, batch["labels"]),
            )
        else:
            grads, online_state, target_state, scalars = self._accumulated_grads(
                state, (view1, view2, batch["labels"])
            )
        tau = self.tau_schedule(step)
        online_params, opt_state, scalars = self._optimizer_step(
            grads, state.online_params, state.opt_state, step, dict(scalars, tau=tau)
        )
        new_state = TrainState(
            online_params=online_params,
            online_state=online_state,
            target_params=update_target(online_params, state.target_params, tau),
            target_state=target_state,
            opt_state=opt_state,
        )
        return self._guard(new_state, state, scalars)


def guard_nonfinite(new_state, state, scalars: dict, skip: bool):
    """Flags a non-finite step in ``scalars["finite"]``; with `skip`, undoes it.

    The flag is for the loop to read (`byol.train.NonFiniteGuard`); it is the
    same on every device, as it is computed from pmean-ed scalars.
    ``param_norm`` catches an update that overflows from finite gradients.

    Args:
        new_state: the state after the step.
        state: the state before it.
        scalars: the step's pmean-ed scalars (``loss``, ``grad_norm``,
            ``param_norm``); ``finite`` is added.
        skip: keep `state` when the step is not finite.

    Returns:
        ``(state to keep, scalars)``.
    """
    finite = jnp.isfinite(scalars["loss"])
    finite &= jnp.isfinite(scalars["grad_norm"])
    finite &= jnp.isfinite(scalars["param_norm"])
    if skip:
        new_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_state, state
        )
    return new_state, {**scalars, "finite": finite}


def local_replica(tree: Any) -> Any:
    """This process's first device's copy of a pmapped (replicated) pytree.

    Read from that device's shard, so no other process takes part: in a
    multi-process run `x[0]` would be a computation every process must join.
    """
    return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)


def unreplicate(tree: Any) -> Any:
    """This process's first device's copy of a replicated pytree, on the host."""
    return jax.device_get(local_replica(tree))
