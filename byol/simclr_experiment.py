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

from collections.abc import Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

from byol import byol_experiment, config_checks, losses
from byol.byol_experiment import AXIS


class SimclrState(NamedTuple):
    """Everything a SimCLR step reads and writes (one replica).

    The fields are named as `byol_experiment.TrainState`'s online network, so
    the training loop, linear evaluation and export read either state alike.
    """

    online_params: hk.Params
    online_state: hk.State
    opt_state: optax.OptState


class SimclrExperiment(byol_experiment.PretrainExperiment):
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

        Args: as `byol_experiment.ByolExperiment`'s (`config.method` "simclr").

        Raises:
            ValueError: a field SimCLR cannot honour
                (`config_checks.check_simclr_fields`).
        """
        config_checks.check_simclr_fields(config)
        self.temperature = config.training.get("temperature", 0.1)
        super().__init__(
            config,
            num_classes,
            devices,
            byol_experiment.network_norms(config.model),
            with_predictor=False,
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
        scalars = dict(
            byol_experiment.classifier_scalars(both["logits"][:n], labels),
            repr_loss=repr_loss,
            collapse=byol_experiment.collapse_indicator(
                jax.lax.all_gather(z1, AXIS, tiled=True)
            ),
        )
        return repr_loss + scalars["classifier_loss"], (state, scalars)

    def _update(
        self, state: SimclrState, step: jax.Array, batch: dict[str, jax.Array]
    ) -> tuple[SimclrState, dict[str, jax.Array]]:
        view1, view2 = self._step_views(step, batch)
        grad_fn = jax.grad(self._loss, has_aux=True)
        grads, (online_state, scalars) = grad_fn(
            state.online_params, state.online_state, view1, view2, batch["labels"]
        )
        # Each device's gradient flows back through the all_gather into every
        # device's projections; their mean is the gradient of the global loss
        # (see `losses.nt_xent_loss`).
        online_params, opt_state, scalars = self._optimizer_step(
            grads, state.online_params, state.opt_state, step, scalars
        )
        new_state = SimclrState(online_params, online_state, opt_state)
        return self._guard(new_state, state, scalars)
