"""BYOL pre-training: the training state, its initialisation and the pmapped step.

`ByolExperiment` holds no arrays: it resolves a config into a network, an
optimiser and schedules once, and exposes pure pmapped functions of the
training state. The loop (`byol.train`) owns the state, data and checkpoints.

One step, as data:

    uint8 images ─ augment view 1 / view 2 (per example, on device) ─ normalise
      online forward (both views) ─┐
      target forward (both views) ─┴→ 2 − 2cos, symmetrised + online classifier
      grads ─pmean→ LARS → online params;  τ(step) ─EMA→ target params
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
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
    metrics,
    model,
    optimizers,
    precision,
    schedules,
)
from byol.parallel import AXIS
from byol.target import update_target


class TrainState(NamedTuple):
    """Everything a BYOL step reads and writes (one replica)."""

    online_params: hk.Params
    online_state: hk.State
    target_params: hk.Params
    target_state: hk.State
    opt_state: optax.OptState


class PretrainExperiment:
    """What BYOL and SimCLR share: network, LARS and its schedule, views, pmaps.

    Subclasses define `_init(rng, batch)` and `_update(state, step, batch)` for
    one replica; they are pmapped here as `init` and `update`.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None,
        norms,
        with_predictor: bool,
    ):
        self.config = config
        training = config.training
        self.norms = norms
        self.forward = model.make_forward(
            config.model, norms, num_classes, with_predictor
        )
        self.compute_dtype = jnp.dtype(config.model.compute_dtype)
        self.image_size = config.data.image_size
        self.skip_nonfinite = training.skip_nonfinite_updates
        self.lr_schedule = schedules.learning_rate_schedule(
            training.base_learning_rate,
            training.batch_size,
            training.max_steps,
            training.warmup_steps,
        )
        self.optimizer = optimizers.lars(
            self.lr_schedule, weight_decay=training.weight_decay
        )
        crop = dict(
            crop_area_range=(config.data.min_crop_area, 1.0),
            crop_rule=config.data.crop_rule,
        )
        self.view_configs = tuple(
            dataclasses.replace(view, **crop)
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

    def views(self, rng: jax.Array, batch: dict[str, jax.Array]):
        """Two augmented, normalised views of a batch (on the device).

        Fixed-size datasets send raw ``images``, cropped here; JPEG datasets
        send two host-cropped views, ``view1`` and ``view2``.
        """
        view1, view2 = self.view_configs
        if "images" in batch:
            view1, view2 = augmentations.augment_views(
                rng,
                batch["images"],
                output_size=self.image_size,
                view1=view1,
                view2=view2,
            )
        else:
            rng1, rng2 = jax.random.split(rng)
            view1 = augmentations.augment(rng1, batch["view1"], view1, crop=False)
            view2 = augmentations.augment(rng2, batch["view2"], view2, crop=False)
        return augmentations.normalize(view1), augmentations.normalize(view2)

    def _step_views(self, step: jax.Array, batch: dict[str, jax.Array]):
        # A function of (seed, step, device): a resumed run draws what an
        # uninterrupted one would.
        rng = jax.random.fold_in(self._base_key, step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
        return self.views(rng, batch)

    def _apply(self, params, state, images, is_training=True):
        return precision.apply(
            self.forward, self.compute_dtype, params, state, images, is_training
        )

    def _optimizer_step(self, grads, params, opt_state, step, scalars):
        """pmean-ed grads → LARS → new params; the scalars, averaged over devices."""
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

    def _scalars(self, out1, labels, repr_loss):
        return dict(
            metrics.classifier_scalars(out1["logits"], labels),
            repr_loss=repr_loss,
            # Over the global batch: a per-device std would depend on the
            # device count.
            collapse=metrics.collapse_indicator(
                jax.lax.all_gather(out1["projection"], AXIS, tiled=True)
            ),
        )

    @functools.partial(jax.jit, static_argnums=0)
    def represent(self, params: hk.Params, state: hk.State, images: jax.Array):
        """Embedding and projection of uint8 images (inference mode, no crop)."""
        out, _ = self._apply(
            params, state, augmentations.normalize(images), is_training=False
        )
        return {"embedding": out["embedding"], "projection": out["projection"]}

    def embed(self, params: hk.Params, state: hk.State, images: jax.Array):
        """Frozen-encoder features of uint8 images (inference mode, no crop)."""
        return self.represent(params, state, images)["embedding"]


class ByolExperiment(PretrainExperiment):
    """BYOL (or BYOL without batch statistics) as pure, pmapped functions."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None = None,
    ):
        """Builds the network, optimiser and schedules from a full config.

        Args:
            config: a full config (configs/common.py), already checked.
            num_classes: classes of the online linear classifier.
            devices: the devices `init` and `update` run on (default: every
                local one); the leading axis of their inputs is this long.
        """
        training = config.training
        norms = model.network_norms(config.model)
        self.bn_init = config.model.bn_init
        if self.bn_init:
            self._bn_forward = model.make_forward(config.model, norms, num_classes)
            norms = bn_init.to_affine(norms)
        super().__init__(config, num_classes, devices, norms, with_predictor=True)
        # Without batch statistics an example's output does not depend on the
        # rest of its batch, so both views can share one forward pass.
        self.batch_independent = all(n.kind != "bn" for n in self.norms)
        self.accumulation_steps = training.accumulation_steps
        self.tau_schedule = schedules.target_ema_schedule(
            training.base_target_ema, training.max_steps
        )
        if training.predictor_lr_multiplier != 1.0:
            # Tian et al. (2021): a faster predictor prevents collapse without
            # batch statistics.
            self.optimizer = optax.chain(
                self.optimizer,
                optax.masked(
                    optax.scale(training.predictor_lr_multiplier), _predictor_mask
                ),
            )

    def _init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        online_rng, target_rng, view_rng = jax.random.split(rng, 3)
        view1, _ = self.views(view_rng, batch)
        if self.bn_init:
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

    def _two_view_forward(self, params, state, view1, view2):
        if self.batch_independent:
            both, state = self._apply(params, state, jnp.concatenate([view1, view2]))
            n = len(view1)
            out1 = jax.tree.map(lambda x: x[:n], both)
            out2 = jax.tree.map(lambda x: x[n:], both)
            return out1, out2, state
        out1, state = self._apply(params, state, view1)
        out2, state = self._apply(params, state, view2)
        return out1, out2, state

    def _loss(self, online_params, online_state, targets, view1, view2, labels):
        out1, out2, online_state = self._two_view_forward(
            online_params, online_state, view1, view2
        )
        repr_loss = losses.byol_loss(out1["prediction"], out2["prediction"], *targets)
        scalars = self._scalars(out1, labels, repr_loss)
        return repr_loss + scalars["classifier_loss"], (online_state, scalars)

    def _grads(self, params: TrainState, states, micro_batch):
        """One micro-batch's gradients and scalars; the new network states."""
        online_state, target_state = states
        view1, view2, labels = micro_batch
        target1, target2, target_state = self._two_view_forward(
            params.target_params, target_state, view1, view2
        )
        targets = (target1["projection"], target2["projection"])
        grads, (online_state, scalars) = jax.grad(self._loss, has_aux=True)(
            params.online_params, online_state, targets, view1, view2, labels
        )
        return grads, (online_state, target_state), scalars

    def _update(self, state: TrainState, step: jax.Array, batch: dict[str, jax.Array]):
        # Augmented before any split into micro-batches, so every example gets
        # the same views whatever their number.
        view1, view2 = self._step_views(step, batch)
        grads, (online_state, target_state), scalars = accumulate_gradients(
            functools.partial(self._grads, state),
            self.accumulation_steps,
            (state.online_state, state.target_state),
            (view1, view2, batch["labels"]),
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
        return guard_nonfinite(new_state, state, scalars, self.skip_nonfinite)


def _predictor_mask(params: hk.Params):
    return {
        module: {name: module.startswith("predictor") for name in leaves}
        for module, leaves in params.items()
    }


def accumulate_gradients(grad_fn: Callable, k: int, carry: Any, batch: Any):
    """`grad_fn(carry, batch)`'s gradients averaged over `k` micro-batches.

    ``grad_fn`` returns ``(grads, carry, scalars)``; the micro-batches run one
    after the other in a `lax.scan` (the activation memory of one), threading
    the network states through ``carry``; scalars are averaged. Without batch
    statistics this is the gradient of the whole batch up to float rounding;
    with BN each micro-batch is normalised by its own statistics. With k = 1
    there is no scan: XLA:CPU ran the step inside a one-trip loop 8x slower.
    """
    if k == 1:
        return grad_fn(carry, batch)
    micro_batches = jax.tree.map(lambda x: x.reshape((k, -1) + x.shape[1:]), batch)

    def body(sums_and_carry, micro_batch):
        grad_sum, carry = sums_and_carry
        grads, carry, scalars = grad_fn(carry, micro_batch)
        return (jax.tree.map(jnp.add, grad_sum, grads), carry), scalars

    first = jax.tree.map(lambda x: x[0], micro_batches)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, carry, first)[0])
    (grads, carry), scalars = jax.lax.scan(body, (zeros, carry), micro_batches)
    grads = jax.tree.map(lambda g: g / k, grads)
    return grads, carry, jax.tree.map(lambda s: jnp.mean(s, axis=0), scalars)


def guard_nonfinite(new_state, state, scalars: dict, skip: bool):
    """Adds ``scalars["finite"]``; with `skip`, keeps `state` on a non-finite step.

    The flag is computed from pmean-ed scalars, so every device agrees;
    ``param_norm`` catches an update that overflows from finite gradients.
    """
    finite = jnp.isfinite(scalars["loss"])
    finite &= jnp.isfinite(scalars["grad_norm"])
    finite &= jnp.isfinite(scalars["param_norm"])
    if skip:
        new_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), new_state, state
        )
    return new_state, {**scalars, "finite": finite}
