"""The linear-evaluation job: a frozen pre-trained encoder, scored on `test`.

`evaluate(config, workdir)` restores the newest checkpoint of
`evaluation.pretrain_workdir` (the model rebuilt from its config.json), or the
online network of a DeepMind BYOL ``.pkl`` (`evaluation.deepmind_checkpoint`),
and scores its embedding with `evaluation.protocol`:

* ``probe``: the fast suite (`byol.probe.evaluate`: linear probe, 1%- and
  10%-label probes, kNN, effective ranks), minutes on a CPU;
* ``reference``: the BYOL paper's protocol (recipe.md §5): a linear
  classifier on the frozen encoder (BN in inference mode), random resized
  crop + flip of ``train_minus_val``, SGD with Nesterov momentum 0.9, no
  weight decay, cosine schedule, `evaluation.epochs` at
  `evaluation.batch_size`, each base learning rate scaled by batch / 256; the
  best on ``val`` is reported on ``test``. Every rate of the sweep trains its
  own classifier on the same batches, so the encoder runs once per step:

    uint8 images ─ crop + flip (on device) ─ normalise ─ frozen encoder
      ─ stop_gradient ─ L classifiers ─ cross-entropy ─ grads ─pmean→ Nesterov

Results (fractions) go to `<workdir>/linear_eval_results.json`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from byol import (
    augmentations,
    byol_experiment,
    config_checks,
    data,
    deepmind_checkpoint,
    metrics,
    parallel,
    probe,
    reporting,
    schedules,
)
from byol import run_dir as run_dirs
from byol.data import device, pipeline

RESULTS_FILE = "linear_eval_results.json"
# The reference's training preprocessing: crop and flip, nothing else.
LINEAR_EVAL_AUGMENTATION = augmentations.AugmentationConfig(
    color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0
)
NESTEROV_MOMENTUM = 0.9
SOURCE = "evaluation.pretrain_workdir"


class PretrainedEncoder(NamedTuple):
    """A frozen online network, ready to embed images.

    Attributes:
        experiment: the experiment rebuilt from the run's config.
        params: online parameters (only the encoder's are used).
        state: online network state (BN moving statistics).
        step: the restored checkpoint's step.
        config: the run's config, data paths resolved for this machine.
        info: the run's dataset's `DatasetInfo`.
    """

    experiment: Any
    params: hk.Params
    state: hk.State
    step: int
    config: ml_collections.ConfigDict
    info: Any

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images `embed` takes."""
        size = self.config.data.image_size
        return tuple(self.info.image_shape or (size, size, 3))

    def embed(self, images) -> jax.Array:
        """Frozen features of uint8 images [N, H, W, C] (inference mode)."""
        return self.experiment.embed(self.params, self.state, images)

    def represent(self, images) -> dict[str, jax.Array]:
        """Embedding and projection of uint8 images (inference mode)."""
        return self.experiment.represent(self.params, self.state, images)


def pretrain_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The pre-training run's config, with this evaluation's machine settings.

    Everything but `mode` and `evaluation` comes from the run's config.json;
    this config's `data.data_dir`, `data.num_threads` and
    `data.skip_corrupt_images` win when set, and `data.val_size` when >= 0.

    Raises:
        FileNotFoundError: the directory has no config.json.
        ValueError: `data.dataset` or `data.image_size` set and different.
    """
    workdir = config.evaluation.pretrain_workdir
    if not os.path.isfile(os.path.join(workdir, run_dirs.CONFIG_FILE)):
        raise FileNotFoundError(
            f"{SOURCE} {workdir!r} has no config.json; expected the --workdir "
            "of a pre-training run (mode=pretrain)"
        )
    run = run_dirs.read_config(workdir)
    ours = config.data
    for field in ("dataset", "image_size"):
        if ours[field] and ours[field] != run.data[field]:
            raise ValueError(
                f"data.{field} {ours[field]!r} differs from the pre-training "
                f"run's {run.data[field]!r}; linear evaluation uses the "
                f"pre-training data (leave data.{field} empty)"
            )
    for field in ("data_dir", "num_threads", "skip_corrupt_images"):
        if ours[field]:
            run.data[field] = ours[field]
    if ours.val_size >= 0:
        run.data.val_size = ours.val_size
    run.mode, run.evaluation = config.mode, config.evaluation
    return run


def restore_encoder(config: ml_collections.ConfigDict) -> PretrainedEncoder:
    """The frozen online network of the run (or DeepMind checkpoint) `config` names."""
    if config.evaluation.deepmind_checkpoint:
        return _deepmind_encoder(config)
    run_config = pretrain_config(config)
    run = run_dirs.restore_run(config.evaluation.pretrain_workdir, run_config, SOURCE)
    return PretrainedEncoder(
        experiment=run.experiment,
        params=jax.device_put(run.state.online_params),
        state=jax.device_put(run.state.online_state),
        step=run.step,
        config=run.config,
        info=run.info,
    )


def _deepmind_encoder(config: ml_collections.ConfigDict) -> PretrainedEncoder:
    """The online network of a DeepMind .pkl (ImageNet at 224 px unless `data.*`)."""
    path = config.evaluation.deepmind_checkpoint
    checkpoint = deepmind_checkpoint.load_deepmind_checkpoint(path)
    run = config.copy_and_resolve_references()
    run.model = deepmind_checkpoint.model_config(
        checkpoint["online_params"], config.model, path
    )
    run.data.dataset = run.data.dataset or "imagenet2012"
    run.data.image_size = run.data.image_size or 224
    run.data.data_dir = run.data.data_dir or data.DEFAULT_DATA_DIR
    info = run_dirs.dataset_info(run)
    channels = deepmind_checkpoint.input_channels(checkpoint["online_params"], path)
    if info.image_shape and info.image_shape[-1] != channels:
        raise ValueError(
            f"{path} takes {channels}-channel images; {run.data.dataset} has "
            f"{info.image_shape[-1]}"
        )
    weights = deepmind_checkpoint.to_network(
        checkpoint, info.num_classes, base_model=run.model, source=path
    )
    return PretrainedEncoder(
        experiment=byol_experiment.ByolExperiment(run, info.num_classes),
        params=jax.device_put(weights.online_params),
        state=jax.device_put(weights.online_state),
        step=weights.step,
        config=run,
        info=info,
    )


class LinearEvalState(NamedTuple):
    """What a reference-protocol step reads and writes (one replica).

    The encoder goes through the step unchanged; keeping it in the state lets
    a test check that nothing updates it. ``classifier`` and ``opt_state``
    have a leading learning-rate axis.
    """

    encoder_params: hk.Params
    encoder_state: hk.State
    classifier: hk.Params
    opt_state: optax.OptState


class LinearEvalExperiment:
    """The reference protocol's classifiers on a frozen encoder, as pmapped steps."""

    def __init__(
        self,
        encoder: PretrainedEncoder,
        batch_size: int,
        total_steps: int,
        seed: int = 0,
    ):
        """Args: the encoder, the global batch, the cosine schedule's length, a seed."""
        self.encoder = encoder
        self.image_size = encoder.config.data.image_size
        self.fixed_size = encoder.info.fixed_size
        self.num_classes = encoder.info.num_classes
        self.classifier = hk.without_apply_rng(
            hk.transform(
                lambda x: hk.Linear(self.num_classes, name="linear_classifier")(x)
            )
        )
        # Base rate 1: the step size is `rate * schedule(step)` with the sweep's
        # rates traced, so one compiled step serves every rate.
        self.schedule = schedules.learning_rate_schedule(
            1.0, batch_size, total_steps, warmup_steps=0
        )
        # optax.sgd(schedule, 0.9, nesterov=True) is this trace followed by
        # `-schedule(step)`: the rate is applied after the trace, as there.
        self.optimizer = optax.trace(decay=NESTEROV_MOMENTUM, nesterov=True)
        self._base_key = jax.random.key(seed)
        self.update = jax.pmap(
            self._update,
            axis_name=parallel.AXIS,
            in_axes=(0, None, 0, None),
            donate_argnums=(0,),
        )
        self.accuracy_counts = jax.jit(self._accuracy_counts)

    def init(self, rng: jax.Array, num_learning_rates: int) -> LinearEvalState:
        """One replica's initial state (host arrays); every classifier starts equal."""
        images = jax.ShapeDtypeStruct((1, *self.encoder.image_shape), jnp.uint8)
        dim = jax.eval_shape(self.encoder.embed, images).shape[-1]
        params = self.classifier.init(rng, jnp.zeros((1, dim)))
        classifier = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (num_learning_rates, *x.shape)), params
        )
        return jax.device_get(
            LinearEvalState(
                self.encoder.params,
                self.encoder.state,
                classifier,
                self.optimizer.init(classifier),
            )
        )

    def preprocess(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """Random resized crop (fixed-size datasets; JPEGs come cropped) and flip."""
        x = augmentations.augment(
            rng,
            images,
            LINEAR_EVAL_AUGMENTATION,
            crop=self.fixed_size,
            output_size=self.image_size if self.fixed_size else None,
        )
        return augmentations.normalize(x)

    def _update(self, state: LinearEvalState, step, batch, learning_rates):
        rng = jax.random.fold_in(self._base_key, step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))
        images = self.preprocess(rng, batch["images"])
        out, encoder_state = self.encoder.experiment.forward.apply(
            state.encoder_params, state.encoder_state, None, images, is_training=False
        )
        embedding = jax.lax.stop_gradient(out["embedding"])
        labels = batch["labels"]

        def loss_fn(classifier):
            logits = jax.vmap(self.classifier.apply, in_axes=(0, None))(
                classifier, embedding
            )
            xent = optax.softmax_cross_entropy_with_integer_labels(
                logits, jnp.broadcast_to(labels, logits.shape[:-1])
            )
            losses = jnp.mean(xent, axis=-1)  # [L]
            # Each classifier's loss depends on its own parameters only, so the
            # gradient of the sum is every classifier's own gradient.
            return jnp.sum(losses), (losses, logits)

        grads, (losses, logits) = jax.grad(loss_fn, has_aux=True)(state.classifier)
        grads = jax.lax.pmean(grads, axis_name=parallel.AXIS)
        direction, opt_state = self.optimizer.update(grads, state.opt_state)
        step_sizes = jnp.asarray(learning_rates) * self.schedule(step)  # [L]
        classifier = jax.tree.map(
            lambda p, d: p - step_sizes.reshape((-1,) + (1,) * (d.ndim - 1)) * d,
            state.classifier,
            direction,
        )
        top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=-1)
        scalars = jax.lax.pmean(dict(loss=losses, top1=top1), axis_name=parallel.AXIS)
        new_state = LinearEvalState(
            state.encoder_params, encoder_state, classifier, opt_state
        )
        return new_state, scalars

    def _accuracy_counts(self, classifier, features, labels):
        """Top-1 and top-5 hits per classifier; label -1 marks padding."""
        logits = jax.vmap(self.classifier.apply, in_axes=(0, None))(
            classifier, features
        )
        return (
            jnp.sum(metrics.top_k_hits(logits, labels, 1), axis=-1),
            jnp.sum(metrics.top_k_hits(logits, labels, 5), axis=-1),
        )

    def accuracy(self, classifier, features: np.ndarray, labels: np.ndarray, chunk):
        """Top-1 and top-5 accuracy [L] over every process's examples of a split."""
        num = jax.tree.leaves(classifier)[0].shape[0]
        counts = np.zeros(2 * num + 1, np.int64)  # top-1 hits, top-5 hits, N
        for start in range(0, len(features), chunk):
            x, y = features[start : start + chunk], labels[start : start + chunk]
            pad = chunk - len(x)  # fixed shapes: one compilation
            x = np.pad(x, ((0, pad), (0, 0)))
            y = np.pad(y, (0, pad), constant_values=-1)
            hits1, hits5 = self.accuracy_counts(classifier, x, y)
            counts[:-1] += np.concatenate([np.asarray(hits1), np.asarray(hits5)])
        counts[-1] = len(features)
        if jax.process_count() > 1:  # each process holds a shard of the split
            counts = multihost_utils.process_allgather(counts).sum(axis=0)
        total = max(int(counts[-1]), 1)
        return counts[:num] / total, counts[num:-1] / total


def _train_classifiers(config, encoder, experiment, steps, rates):
    """The sweep's classifiers after `steps` steps; their last losses; seconds."""
    run = encoder.config.data
    batch_size = config.evaluation.batch_size
    state = parallel.replicate(experiment.init(jax.random.key(config.seed), len(rates)))
    batches = pipeline.load_from_config(
        run,
        "train_minus_val",
        is_training=True,
        batch_dims=(jax.local_device_count(), batch_size // jax.device_count()),
        seed=config.seed,
        two_views=False,
        labelled_only=True,
    )
    batches = device.prefetch_to_device(batches, size=2)
    progress = reporting.Progress(steps, 0, batch_size)
    started, losses = time.perf_counter(), np.full(len(rates), np.nan)
    try:
        for step in range(steps):
            state, scalars = experiment.update(state, step, next(batches), rates)
            done = step + 1
            if done % config.evaluation.log_every_steps == 0 or done == steps:
                scalars = parallel.unreplicate(scalars)
                losses = np.asarray(scalars["loss"], np.float64)
                # The progress line shows the mean over the sweep.
                progress.update(
                    done,
                    {
                        "loss": float(losses.mean()),
                        "top1": float(scalars["top1"].mean()),
                    },
                )
    finally:
        batches.close()  # tf.data threads left to interpreter exit can hang it
    classifier = parallel.unreplicate(state.classifier)
    return classifier, losses, time.perf_counter() - started


def reference_protocol(config, encoder: PretrainedEncoder) -> dict[str, Any]:
    """Trains the sweep, picks the best classifier on `val`, reports it on `test`."""
    evaluation, info = config.evaluation, encoder.info
    batch_size = evaluation.batch_size
    # STL-10's unlabelled images are part of train_minus_val: left out.
    num_train = info.num_examples["train_minus_val"] - info.num_unlabelled
    steps = max(1, evaluation.epochs * num_train // batch_size)
    rates = np.asarray(evaluation.learning_rates, np.float32)
    experiment = LinearEvalExperiment(encoder, batch_size, steps, seed=config.seed)
    print(
        f"Linear evaluation: {steps} steps ({evaluation.epochs} epochs of "
        f"{num_train} images, batch {batch_size}), learning rates "
        + ", ".join(f"{r:g}" for r in rates)
    )
    classifier, losses, seconds = _train_classifiers(
        config, encoder, experiment, steps, rates
    )

    def split_features(split):
        return probe.extract_features(
            encoder.embed, probe.eval_batches(encoder.config.data, split, batch_size)
        )

    val_top1, val_top5 = experiment.accuracy(
        classifier, *split_features("val"), batch_size
    )
    best = int(np.argmax(val_top1))  # the first of equals: the sweep's order
    chosen = jax.tree.map(lambda x: x[best : best + 1], classifier)
    test_top1, test_top5 = experiment.accuracy(
        chosen, *split_features("test"), batch_size
    )
    return {
        "top1": float(test_top1[0]),
        "top5": float(test_top5[0]),
        "val_top1": float(val_top1[best]),
        "learning_rate": float(evaluation.learning_rates[best]),
        "sweep": [
            {
                "learning_rate": float(rate),
                "val_top1": float(v1),
                "val_top5": float(v5),
                "final_train_loss": float(loss),
            }
            for rate, v1, v5, loss in zip(
                evaluation.learning_rates, val_top1, val_top5, losses, strict=True
            )
        ],
        "epochs": evaluation.epochs,
        "batch_size": batch_size,
        "steps": steps,
        "train_examples": num_train,
        "train_seconds": seconds,
        "images_per_second": steps * batch_size / max(seconds, 1e-9),
    }


def probe_protocol(config, encoder: PretrainedEncoder) -> dict[str, Any]:
    """The fast suite (`byol.probe.evaluate`): linear, few-label, kNN, ranks.

    The linear probe's figures are at the top level, as the reference's.
    """
    feats = probe.probe_features(
        encoder.config, encoder.represent, config.evaluation.probe_max_train_examples
    )
    suite = probe.evaluate(feats, encoder.info.num_classes, config.seed)
    return {**suite["linear"], **{k: v for k, v in suite.items() if k != "linear"}}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Linearly evaluates an encoder; returns (and writes) its results.

    Args:
        config: a linear-evaluation config (configs/eval.py).
        workdir: where `linear_eval_results.json` goes (may be the
            pre-training directory: nothing there is overwritten).

    Raises:
        ValueError: an invalid field, or a checkpoint that does not fit.
        FileNotFoundError: no config.json or checkpoint, or a missing dataset.
    """
    config_checks.check_linear_eval_config(config)
    run_dirs.writable_dir(workdir)
    started = time.perf_counter()
    encoder = restore_encoder(config)
    evaluation = config.evaluation
    source_field = (
        "deepmind_checkpoint" if evaluation.deepmind_checkpoint else "pretrain_workdir"
    )
    source = evaluation[source_field]
    print(
        f"Restored step {encoder.step} of {source} ({encoder.config.model.encoder}, "
        f"norm {encoder.config.model.norm}, {encoder.config.data.dataset}); "
        f"protocol {evaluation.protocol}"
    )
    if evaluation.protocol == "reference":
        scores = reference_protocol(config, encoder)
    else:
        scores = probe_protocol(config, encoder)
    results = {
        "mode": "linear_eval",
        "protocol": evaluation.protocol,
        source_field: os.path.abspath(source),
        "checkpoint_step": encoder.step,
        "dataset": encoder.config.data.dataset,
        **scores,
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
    print(
        f"Linear evaluation ({evaluation.protocol}) of step {encoder.step}: test "
        f"top-1 {100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}%"
    )
    return results
