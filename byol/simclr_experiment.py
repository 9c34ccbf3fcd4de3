"""SimCLR pre-training (Chen et al., 2020) as pure, pmapped functions.

The contrastive baseline of "BYOL works even without batch statistics": the
same encoder, projector, augmentations, optimiser and schedule as BYOL, but
no predictor, no target network and no moving average. Its loss is NT-Xent
(`byol.losses.nt_xent_loss`): each view's positive is the other view of the
same image, and its negatives are every other view of the *global* batch,
gathered from all devices.

One step, as data:

    uint8 images ─ augment view 1 / view 2 (per example, on device) ─ normalise
      encoder → projector on [view 1; view 2] in one forward pass
      ─ all_gather over devices ─→ NT-Xent (temperature τ) + online classifier
      grads ─pmean→ LARS → params

Choices (compared with the SimCLR paper and code):

- Augmentations are BYOL's (`byol.augmentations.VIEW1` / `VIEW2`: asymmetric
  blur and solarisation), not SimCLR's (blur p 0.5 on both views, stronger
  colour jitter, no solarisation), so the two methods differ in their loss
  only.
- Both views go through the network in one forward pass, as in SimCLR's
  code, so BatchNorm (synchronised across devices) normalises over all 2B
  views of the global batch.
- The projector is BYOL's MLP (`model.projector_hidden_size` →
  `model.projection_size`, norm by config); SimCLR's is 2048 → 128.
- Temperature `training.temperature`, default 0.1 (SimCLR's ImageNet value;
  it used 0.5 on CIFAR-10).
- LARS, learning rate, warm-up, cosine decay and weight decay are read from
  `config.training` exactly as for BYOL; `base_target_ema` and
  `predictor_lr_multiplier` have no object here and are ignored.
- The online linear classifier sees `stop_gradient(embedding)` of view 1, as
  in BYOL, and is trained with the same step.
- `model.compute_dtype` (bfloat16 compute) works as for BYOL; gradient
  accumulation does not (`training.accumulation_steps` must be 1): the
  negatives of NT-Xent are the whole batch, which micro-batches would shrink.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

from byol import (
    augmentations,
    byol_experiment,
    losses,
    optimizers,
    precision,
    schedules,
)
from byol.byol_experiment import AXIS


class SimclrState(NamedTuple):
    """Everything a SimCLR step reads and writes (one replica).

    The fields are named as `byol_experiment.TrainState`'s online network, so
    the training loop, linear evaluation and export read either state alike.
    """

    online_params: hk.Params
    online_state: hk.State
    opt_state: optax.OptState


class SimclrExperiment:
    """SimCLR with an encoder + projector, as pure, pmapped functions.

    The same interface as `byol_experiment.ByolExperiment` (`init`, `update`,
    `embed`, `forward`, `views`, `norms`), so `byol.train.pretrain` runs
    either (`config.method`).

    Example:
        >>> exp = SimclrExperiment(config, num_classes=10)          # doctest: +SKIP
        >>> state = exp.init(jax.random.key(0), first_batch)        # doctest: +SKIP
        >>> state, scalars = exp.update(state, step, batch)         # doctest: +SKIP
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None = None,
    ):
        """Builds the network, optimiser and schedule from a config.

        Args:
            config: a full config (see configs/common.py), `method` "simclr".
            num_classes: classes of the online linear classifier.
            devices: the devices `init` and `update` run on (default: every
                local device); the leading axis of their inputs is this long.

        Raises:
            ValueError: a temperature that is not a finite number > 0,
                `model.bn_init` (implemented for BYOL only), or gradient
                accumulation (`training.accumulation_steps` > 1: NT-Xent's
                negatives span the whole batch, so micro-batches would
                change the loss).
        """
        self.config = config
        model, training = config.model, config.training
        self.temperature = training.get("temperature", 0.1)
        if not (
            isinstance(self.temperature, (int, float))
            and not isinstance(self.temperature, bool)
            and 0 < self.temperature < float("inf")
        ):
            raise ValueError(
                "training.temperature must be a finite number > 0, got "
                f"{self.temperature!r}"
            )
        if model.bn_init:
            raise ValueError(
                "model.bn_init is implemented for method 'byol' only; use "
                "model.bn_init=False with method 'simclr'"
            )
        if training.get("accumulation_steps", 1) != 1:
            raise ValueError(
                "training.accumulation_steps must be 1 with method 'simclr' "
                "(NT-Xent's negatives span the whole batch), got "
                f"{training.accumulation_steps!r}"
            )
        self.norms = byol_experiment.network_norms(model)
        # float32 | bfloat16 (`byol.precision`), as for BYOL.
        self.compute_dtype = jnp.dtype(model.get("compute_dtype", "float32"))
        self.forward = byol_experiment.make_forward(
            model, self.norms, num_classes, with_predictor=False
        )
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

    # BYOL's two augmented views: it reads only `config` and `view_configs`,
    # which this class has too.
    views = byol_experiment.ByolExperiment.views

    def _apply(self, params, state, images, is_training=True):
        return precision.apply(
            self.forward, self.compute_dtype, params, state, images, is_training
        )

    # ------------------------------------------------------------------- init
    def _init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> SimclrState:
        params_rng, view_rng = jax.random.split(rng)
        view1, _ = self.views(view_rng, batch)
        params, state = self.forward.init(params_rng, view1, is_training=True)
        return SimclrState(
            online_params=params,
            online_state=state,
            opt_state=self.optimizer.init(params),
        )

    # ----------------------------------------------------------------- update
    def _loss(self, params, state, view1, view2, labels):
        both, state = self._apply(params, state, jnp.concatenate([view1, view2]))
        n = len(view1)
        z1, z2 = both["projection"][:n], both["projection"][n:]
        # This device's anchors against the views of every device.
        repr_loss = losses.nt_xent_loss(z1, z2, self.temperature, axis_name=AXIS)
        logits = both["logits"][:n]
        classifier_loss = byol_experiment._classifier_loss(logits, labels)
        scalars = dict(
            repr_loss=repr_loss,
            classifier_loss=classifier_loss,
            top1=byol_experiment._top_k_accuracy(logits, labels, 1),
            top5=byol_experiment._top_k_accuracy(logits, labels, 5),
            collapse=byol_experiment.collapse_indicator(
                jax.lax.all_gather(z1, AXIS, tiled=True)
            ),
        )
        return repr_loss + classifier_loss, (state, scalars)

    def _update(
        self, state: SimclrState, step: jax.Array, batch: dict[str, jax.Array]
    ) -> tuple[SimclrState, dict[str, jax.Array]]:
        # The key is a function of (seed, step, device), as in BYOL: a resumed
        # run replays the augmentations of an uninterrupted one.
        rng = jax.random.fold_in(self._base_key, step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
        view1, view2 = self.views(rng, batch)
        grad_fn = jax.grad(self._loss, has_aux=True)
        grads, (online_state, scalars) = grad_fn(
            state.online_params, state.online_state, view1, view2, batch["labels"]
        )
        # Each device's gradient flows back through the all_gather into every
        # device's projections; their mean is the gradient of the global loss
        # (see `losses.nt_xent_loss`).
        grads = jax.lax.pmean(grads, axis_name=AXIS)
        updates, opt_state = self.optimizer.update(
            grads, state.opt_state, state.online_params
        )
        online_params = optax.apply_updates(state.online_params, updates)
        scalars.update(
            loss=scalars["repr_loss"] + scalars["classifier_loss"],
            learning_rate=self.lr_schedule(step),
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(online_params),
            update_norm=optax.tree.norm(updates),
        )
        scalars = jax.lax.pmean(scalars, axis_name=AXIS)
        new_state = SimclrState(online_params, online_state, opt_state)
        return byol_experiment.guard_nonfinite(
            new_state,
            state,
            scalars,
            self.config.training.get("skip_nonfinite_updates", False),
        )

    # Frozen-encoder features: BYOL's, which read only `forward` and
    # `compute_dtype` (through `_apply`).
    embed = byol_experiment.ByolExperiment.embed
