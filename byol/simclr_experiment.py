"""SimCLR pre-training (Chen et al., 2020), the contrastive baseline of the paper.

The same encoder, projector, augmentations, optimiser and schedule as BYOL;
no predictor, no target network, no moving average. The loss is NT-Xent
(`byol.losses.nt_xent_loss`) with every other view of the *global* batch as
negatives. Choices against the SimCLR paper: BYOL's asymmetric views (so the
two methods differ in their loss only), BYOL's projector sizes, both views in
one forward pass (BN normalises over all 2B views), temperature
`training.temperature`. Gradient accumulation is refused by the config checks
(micro-batches would shrink the negatives).

    uint8 images ─ augment view 1 / view 2 (on device) ─ normalise
      encoder → projector on [view 1; view 2] ─ all_gather ─→ NT-Xent + classifier
      grads ─pmean→ LARS → params
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import optax

from byol import byol_experiment, losses, model
from byol.parallel import AXIS


class SimclrState(NamedTuple):
    """Everything a SimCLR step reads and writes (one replica).

    Named as `TrainState`'s online network, so the loop, linear evaluation and
    export read either state alike.
    """

    online_params: hk.Params
    online_state: hk.State
    opt_state: optax.OptState


class SimclrExperiment(byol_experiment.PretrainExperiment):
    """SimCLR with an encoder + projector; the interface of `ByolExperiment`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        num_classes: int,
        devices: Sequence[jax.Device] | None = None,
    ):
        """Args: as `ByolExperiment`'s (`config.method` "simclr")."""
        self.temperature = config.training.temperature
        norms = model.network_norms(config.model)
        super().__init__(config, num_classes, devices, norms, with_predictor=False)

    def _init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> SimclrState:
        params_rng, view_rng = jax.random.split(rng)
        view1, _ = self.views(view_rng, batch)
        params, state = self.forward.init(params_rng, view1, is_training=True)
        return SimclrState(params, state, self.optimizer.init(params))

    def _loss(self, params, state, view1, view2, labels):
        both, state = self._apply(params, state, jnp.concatenate([view1, view2]))
        n = len(view1)
        out1 = jax.tree.map(lambda x: x[:n], both)
        z1, z2 = out1["projection"], both["projection"][n:]
        # This device's anchors against the views of every device.
        repr_loss = losses.nt_xent_loss(z1, z2, self.temperature, axis_name=AXIS)
        scalars = self._scalars(out1, labels, repr_loss)
        return repr_loss + scalars["classifier_loss"], (state, scalars)

    def _update(self, state: SimclrState, step: jax.Array, batch):
        view1, view2 = self._step_views(step, batch)
        grads, (online_state, scalars) = jax.grad(self._loss, has_aux=True)(
            state.online_params, state.online_state, view1, view2, batch["labels"]
        )
        # Each device's gradient flows back through the all_gather; their mean
        # is the gradient of the global loss (see `losses.nt_xent_loss`).
        online_params, opt_state, scalars = self._optimizer_step(
            grads, state.online_params, state.opt_state, step, scalars
        )
        new_state = SimclrState(online_params, online_state, opt_state)
        return byol_experiment.guard_nonfinite(
            new_state, state, scalars, self.skip_nonfinite
        )
