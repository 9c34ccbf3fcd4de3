"""Linear evaluation of a frozen, pre-trained encoder (recipe.md section 5).

`evaluate(config, workdir)` restores the newest checkpoint of the pre-training
run in `config.evaluation.pretrain_workdir` (the model is rebuilt from that
directory's `config.json`), keeps its online encoder frozen and scores it with
one of two protocols (`config.evaluation.protocol`):

* ``probe``: the fast probe of `byol.train.run_probe` (features extracted once,
  logistic regression by L-BFGS, L2 penalty chosen on ``val``). Minutes on a
  CPU for the small datasets.
* ``reference``: the BYOL paper's protocol. A linear classifier on the frozen
  encoder (BN in inference mode) is trained on augmented images (random resized
  crop and flip only) of ``train_minus_val`` with SGD, Nesterov momentum 0.9,
  no weight decay and a cosine schedule, for `evaluation.epochs` epochs at
  batch `evaluation.batch_size`. Each base learning rate of
  `evaluation.learning_rates` is scaled by ``batch_size / 256``, as the
  reference code's schedule does (0.2 at batch 1024 is a step size of 0.8).
  The classifier with the best top-1 on ``val`` is reported on ``test``.

One step of the reference protocol, as data:

    uint8 images ─ crop + flip (per example, on device) ─ normalise
      ─ frozen encoder (inference mode) ─ stop_gradient(embedding)
      ─ L linear classifiers, one per learning rate ─ softmax cross-entropy
      ─ grads ─pmean→ Nesterov momentum → each classifier, at its own rate

All learning rates of the sweep train side by side on the same batches: the
encoder forward pass, which dominates the cost, runs once per step instead of
once per learning rate, and each classifier sees exactly the data a separate
run with the same seed would see.

With `config.evaluation.deepmind_checkpoint` set instead (a ``.pkl`` of
DeepMind's released BYOL code, e.g. ``pretrain_res50x1.pkl``), the encoder is
that checkpoint's online network, read safely and checked against this
project's BN network by `byol.deepmind_checkpoint`; the dataset is
`data.dataset` (default ``imagenet2012`` at 224 px).

Results (fractions, not %) go to `<workdir>/linear_eval_results.json`.
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
    checkpointing,
    data,
    deepmind_checkpoint,
    eval_experiment,
    reporting,
    schedules,
    train,
)

PROTOCOLS = ("probe", "reference")
RESULTS_FILE = "linear_eval_results.json"
# The reference's linear-evaluation training preprocessing: the pre-training
# random resized crop and flip, no colour, blur or solarisation.
LINEAR_EVAL_AUGMENTATION = augmentations.AugmentationConfig(
    color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0
)
NESTEROV_MOMENTUM = 0.9
# Pre-training fields that do not describe the model or its data: the
# evaluation config's values are kept for these.
_MACHINE_DATA_FIELDS = ("data_dir", "num_threads", "skip_corrupt_images")


class PretrainedEncoder(NamedTuple):
    """The frozen online network of a pre-training run, ready to embed images.

    Attributes:
        experiment: the `ByolExperiment` rebuilt from the run's config.json.
        params: online parameters (whole network; only the encoder is used).
        state: online network state (BN moving statistics).
        step: the step of the restored checkpoint.
        config: the run's config, data paths resolved for this machine.
        info: split sizes, classes and image shape of the run's dataset.
    """

    experiment: byol_experiment.ByolExperiment
    params: hk.Params
    state: hk.State
    step: int
    config: ml_collections.ConfigDict
    info: Any  # byol.data.DatasetInfo

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images `embed` takes (evaluation preprocessing)."""
        size = self.config.data.image_size
        return tuple(self.info.image_shape or (size, size, 3))

    def embed(self, images) -> jax.Array:
        """Frozen features of uint8 images [N, H, W, C] (inference mode)."""
        return self.experiment.embed(self.params, self.state, images)


class LinearEvalState(NamedTuple):
    """What a reference-protocol step reads and writes (one replica).

    The encoder's parameters and state go through the step unchanged; keeping
    them in the state lets a test check that nothing updates them.

    Attributes:
        encoder_params: frozen online parameters.
        encoder_state: frozen online state (BN moving statistics).
        classifier: `hk.Linear` parameters with a leading learning-rate axis.
        opt_state: Nesterov momentum buffers, shaped like `classifier`.
    """

    encoder_params: hk.Params
    encoder_state: hk.State
    classifier: hk.Params
    opt_state: optax.OptState


# ------------------------------------------------------------------ checks
def check_linear_eval_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid `evaluation` field.

    Args:
        config: a full config with `mode == "linear_eval"`.

    Raises:
        ValueError: an empty `pretrain_workdir` (and no `deepmind_checkpoint`),
            both set, unknown `protocol`, or a batch size, epoch count or
            learning rate out of range.

    Example:
        >>> check_linear_eval_config(config)  # doctest: +SKIP
    """
    evaluation = config.evaluation
    if evaluation.get("deepmind_checkpoint") and evaluation.pretrain_workdir:
        raise ValueError(
            "evaluation.pretrain_workdir and evaluation.deepmind_checkpoint are "
            "both set; set one"
        )
    if not evaluation.pretrain_workdir and not evaluation.get("deepmind_checkpoint"):
        raise ValueError(
            "evaluation.pretrain_workdir is empty; set it to the --workdir of a "
            "pre-training run (--config.evaluation.pretrain_workdir=DIR), or set "
            "evaluation.deepmind_checkpoint to a DeepMind BYOL .pkl"
        )
    if evaluation.protocol not in PROTOCOLS:
        raise ValueError(
            f"evaluation.protocol {evaluation.protocol!r} unknown; expected one "
            "of: " + ", ".join(PROTOCOLS)
        )
    if evaluation.protocol != "reference":
        return
    for field in ("batch_size", "epochs", "log_every_steps"):
        value = evaluation[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"evaluation.{field} must be a positive integer, got {value!r}"
            )
    if evaluation.batch_size % jax.device_count():
        raise ValueError(
            f"evaluation.batch_size {evaluation.batch_size} is not divisible by "
            f"the {jax.device_count()} devices; use a multiple of "
            f"{jax.device_count()}"
        )
    rates = evaluation.learning_rates
    if not rates or any(
        not isinstance(r, (int, float)) or not np.isfinite(r) or r <= 0 for r in rates
    ):
        raise ValueError(
            f"evaluation.learning_rates {rates!r} invalid; expected a non-empty "
            "tuple of positive numbers, e.g. (0.4, 0.3, 0.2, 0.1, 0.05)"
        )


# ------------------------------------------------------------------ restore
def _val_size(data_config: ml_collections.ConfigDict) -> int | None:
    # As byol.train: absent, None or < 0 means the catalogue's held-out size.
    value = data_config.get("val_size")
    return None if value is None or value < 0 else value


def pretrain_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The pre-training run's config, with this machine's data settings.

    The model, training and data fields come from
    `<evaluation.pretrain_workdir>/config.json` (fields it lacks keep the
    evaluation config's defaults). The evaluation config keeps `mode`,
    `evaluation` and its own `data.data_dir`, `data.num_threads` and
    `data.skip_corrupt_images` (when not empty, 0 or False) and
    `data.val_size` (when set).

    Args:
        config: the linear-evaluation config.

    Returns:
        The merged config, from which `ByolExperiment` rebuilds the model.

    Raises:
        ValueError: `evaluation.pretrain_workdir` is empty, or `data.dataset` /
            `data.image_size` are set and differ from the pre-training run's.
        FileNotFoundError: the directory has no config.json.

    Example:
        >>> pretrain_config(config).model.encoder  # doctest: +SKIP
        'resnet18'
    """
    workdir = config.evaluation.pretrain_workdir
    if not workdir:
        check_linear_eval_config(config)  # raises the one-line message
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"evaluation.pretrain_workdir {workdir!r} has no config.json; expected "
            "the --workdir of a pre-training run (mode=pretrain)"
        )
    with open(path) as f:
        saved = json.load(f)
    merged = config.to_dict()
    for key in ("seed", "model", "training", "data"):
        if key not in saved:
            continue
        if isinstance(saved[key], dict):
            merged[key] = {**merged.get(key, {}), **saved[key]}
        else:
            merged[key] = saved[key]
    ours = config.data
    for field in ("dataset", "image_size"):
        if ours.get(field) and ours[field] != merged["data"][field]:
            raise ValueError(
                f"data.{field} {ours[field]!r} differs from the pre-training "
                f"run's {merged['data'][field]!r}; linear evaluation uses the "
                f"pre-training data (leave data.{field} empty)"
            )
    for field in _MACHINE_DATA_FIELDS:
        if ours.get(field):
            merged["data"][field] = ours[field]
    if _val_size(ours) is not None:
        merged["data"]["val_size"] = ours.val_size
    return ml_collections.ConfigDict(merged)


def _check_same_shapes(restored, like) -> None:
    """Raises ValueError naming the first array whose shape or dtype differs."""
    got = jax.tree_util.tree_leaves_with_path(restored)
    want = jax.tree_util.tree_leaves_with_path(like)
    if [p for p, _ in got] != [p for p, _ in want]:
        raise ValueError("the parameter names differ")
    for (path, a), (_, b) in zip(got, want, strict=True):
        if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
            raise ValueError(
                f"{jax.tree_util.keystr(path)} is {np.asarray(a).dtype}"
                f"{list(np.shape(a))} there, {np.asarray(b).dtype}"
                f"{list(np.shape(b))} in this model"
            )


class RestoredRun(NamedTuple):
    """The newest checkpoint of a pre-training run and what rebuilt its model.

    Attributes:
        experiment: the `ByolExperiment` (or `SimclrExperiment`) rebuilt from
            the run's config.json.
        state: the whole `TrainState` (online, target, optimiser; a SimCLR
            run's `SimclrState` has no target), host arrays.
        step: the step of the restored checkpoint.
        config: the run's config, data paths resolved for this machine.
        info: split sizes, classes and image shape of the run's dataset.
    """

    experiment: byol_experiment.ByolExperiment
    state: byol_experiment.TrainState
    step: int
    config: ml_collections.ConfigDict
    info: Any  # byol.data.DatasetInfo


def restore_run(config: ml_collections.ConfigDict) -> RestoredRun:
    """Restores the newest checkpoint of `evaluation.pretrain_workdir`.

    Nothing is written to the pre-training directory.

    Args:
        config: the linear-evaluation config (`evaluation.pretrain_workdir`).

    Returns:
        The `RestoredRun`.

    Raises:
        ValueError: an empty `evaluation.pretrain_workdir`, or a checkpoint
            whose parameters do not fit the model of the run's config.json.
        FileNotFoundError: no config.json or no checkpoint in the directory.

    Example:
        >>> run = restore_run(config)  # doctest: +SKIP
        >>> run.state.target_params  # doctest: +SKIP
    """
    run_config = pretrain_config(config)
    workdir = config.evaluation.pretrain_workdir
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    # Checkpointer(...) would create the directory; the run must have made it.
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(
            f"evaluation.pretrain_workdir {workdir!r} has no checkpoints/ "
            "directory; pre-train there first"
        )
    # Read-only: the run may still be writing there (no clean-up, no moves).
    checkpointer = checkpointing.Checkpointer(
        workdir, run_config.training.max_checkpoints_to_keep, read_only=True
    )
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(
                f"evaluation.pretrain_workdir {workdir!r} has no complete "
                f"checkpoint in {checkpointer.directory}"
            )
        info = data.dataset_info(
            run_config.data.dataset,
            run_config.data.data_dir,
            val_size=_val_size(run_config.data),
            skip_bad_images=bool(run_config.data.get("skip_corrupt_images", False)),
        )
        # BYOL or SimCLR, as the run's config.method says.
        experiment = train.make_experiment(run_config, info.num_classes)
        like = train.abstract_train_state(experiment, info, run_config.data.image_size)
        try:
            # A corrupt newest checkpoint is passed over with a warning.
            latest = checkpointer.restore_latest(like)
            if latest is None:
                raise FileNotFoundError(
                    f"evaluation.pretrain_workdir {workdir!r} has no readable "
                    f"checkpoint in {checkpointer.directory}"
                )
            # Orbax raises on other parameter names but restores other shapes
            # as saved: compare them too.
            _check_same_shapes(latest.state, like)
        except (ValueError, KeyError, TypeError) as error:
            lines = str(error).strip().splitlines() or [type(error).__name__]
            # Orbax lists every key of the checkpoint on its first line.
            reason = lines[0] if len(lines[0]) <= 200 else lines[0][:200] + "..."
            raise ValueError(
                f"the newest checkpoint in {checkpointer.directory} does not fit "
                f"the model of {os.path.join(workdir, 'config.json')} (another "
                f"architecture?): {reason}"
            ) from error
    finally:
        checkpointer.close()
    return RestoredRun(experiment, latest.state, int(latest.step), run_config, info)


def _restore_deepmind_encoder(config: ml_collections.ConfigDict) -> PretrainedEncoder:
    """The online network of `evaluation.deepmind_checkpoint` (a DeepMind .pkl)."""
    path = config.evaluation.deepmind_checkpoint
    checkpoint = deepmind_checkpoint.load_deepmind_checkpoint(path)
    run = config.to_dict()
    run["model"] = deepmind_checkpoint.model_config(
        checkpoint["online_params"], config.model, path
    ).to_dict()
    # The released checkpoints were trained on ImageNet at 224 px.
    run["data"]["dataset"] = run["data"]["dataset"] or "imagenet2012"
    run["data"]["image_size"] = run["data"]["image_size"] or 224
    run["data"]["data_dir"] = run["data"]["data_dir"] or data.DEFAULT_DATA_DIR
    run_config = ml_collections.ConfigDict(run)
    info = data.dataset_info(
        run_config.data.dataset,
        run_config.data.data_dir,
        val_size=_val_size(run_config.data),
    )
    channels = deepmind_checkpoint.input_channels(checkpoint["online_params"], path)
    if info.image_shape and info.image_shape[-1] != channels:
        raise ValueError(
            f"{path} takes {channels}-channel images; {run_config.data.dataset} "
            f"has {info.image_shape[-1]}"
        )
    weights = deepmind_checkpoint.to_network(
        checkpoint, info.num_classes, base_model=run_config.model, source=path
    )
    return PretrainedEncoder(
        experiment=byol_experiment.ByolExperiment(run_config, info.num_classes),
        params=jax.device_put(weights.online_params),
        state=jax.device_put(weights.online_state),
        step=weights.step,
        config=run_config,
        info=info,
    )


def restore_encoder(config: ml_collections.ConfigDict) -> PretrainedEncoder:
    """Restores the online network of the newest pre-training checkpoint.

    Nothing is written to the pre-training directory. With
    `evaluation.deepmind_checkpoint` set, the network is that DeepMind BYOL
    checkpoint's instead (`byol.deepmind_checkpoint`).

    Args:
        config: the linear-evaluation config (`evaluation.pretrain_workdir`
            or `evaluation.deepmind_checkpoint`).

    Returns:
        The frozen encoder, its parameters on the default device.

    Raises:
        ValueError: an empty `evaluation.pretrain_workdir`, or a checkpoint
            whose parameters do not fit the model of the run's config.json
            (or, for a DeepMind checkpoint, this project's BN network).
        FileNotFoundError: no config.json or no checkpoint in the directory.

    Example:
        >>> encoder = restore_encoder(config)  # doctest: +SKIP
        >>> features = encoder.embed(images)  # doctest: +SKIP
    """
    if config.evaluation.get("deepmind_checkpoint"):
        return _restore_deepmind_encoder(config)
    run = restore_run(config)
    return PretrainedEncoder(
        experiment=run.experiment,
        params=jax.device_put(run.state.online_params),
        state=jax.device_put(run.state.online_state),
        step=run.step,
        config=run.config,
        info=run.info,
    )


# ---------------------------------------------------------------- reference
class LinearEvalExperiment:
    """The reference protocol's classifiers on a frozen encoder, as pmapped steps.

    Every learning rate of a sweep trains its own `hk.Linear` classifier on the
    same batches; the classifiers are stacked on a leading axis.

    Example:
        >>> exp = LinearEvalExperiment(encoder, 1024, 9_000)  # doctest: +SKIP
        >>> state = exp.init(jax.random.key(0), 5)  # doctest: +SKIP
        >>> state = train.replicate(state)  # doctest: +SKIP
        >>> state, scalars = exp.update(state, step, batch, rates)  # doctest: +SKIP
    """

    def __init__(
        self,
        encoder: PretrainedEncoder,
        batch_size: int,
        total_steps: int,
        seed: int = 0,
    ):
        """Builds the classifier, optimiser and schedule.

        Args:
            encoder: the frozen pre-trained encoder.
            batch_size: global batch size (scales the learning rates by /256).
            total_steps: length of the cosine schedule.
            seed: seed of the classifier initialisation and the augmentations.
        """
        self.encoder = encoder
        self.image_size = encoder.config.data.image_size
        self.num_classes = encoder.info.num_classes
        self.classifier = hk.without_apply_rng(
            hk.transform(
                lambda x: hk.Linear(self.num_classes, name="linear_classifier")(x)
            )
        )
        # Base rate 1: the step size is `rate * schedule(step)`, with the sweep's
        # rates traced, so one compiled step serves every learning rate.
        self.schedule = schedules.learning_rate_schedule(
            1.0, batch_size, total_steps, warmup_steps=0
        )
        # optax.sgd(schedule, 0.9, nesterov=True) is this trace followed by
        # `-schedule(step)`; the rate is applied after the trace, as there.
        self.optimizer = optax.trace(decay=NESTEROV_MOMENTUM, nesterov=True)
        self._base_key = jax.random.key(seed)
        self.update = jax.pmap(
            self._update,
            axis_name=byol_experiment.AXIS,
            in_axes=(0, None, 0, None),
            donate_argnums=(0,),
        )
        self.accuracy_counts = jax.jit(self._accuracy_counts)

    def init(self, rng: jax.Array, num_learning_rates: int) -> LinearEvalState:
        """The initial state of one replica (host arrays; replicate to train).

        All classifiers start from the same `hk.Linear` initialisation.
        """
        images = jax.ShapeDtypeStruct((1, *self.encoder.image_shape), jnp.uint8)
        dim = jax.eval_shape(self.encoder.embed, images).shape[-1]
        params = self.classifier.init(rng, jnp.zeros((1, dim)))
        classifier = jax.tree.map(
            lambda x: jnp.broadcast_to(x, (num_learning_rates, *x.shape)), params
        )
        return jax.device_get(
            LinearEvalState(
                encoder_params=self.encoder.params,
                encoder_state=self.encoder.state,
                classifier=classifier,
                opt_state=self.optimizer.init(classifier),
            )
        )

    def preprocess(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        """Random resized crop and flip, then normalisation (on the device).

        Fixed-size datasets arrive raw and are cropped here; JPEG datasets
        arrive cropped by the host (`data.load(..., two_views=False)`), so only
        the flip is left.
        """
        crop = self.encoder.info.fixed_size
        x = augmentations.augment(
            rng,
            images,
            LINEAR_EVAL_AUGMENTATION,
            crop=crop,
            output_size=self.image_size if crop else None,
        )
        return augmentations.normalize(x)

    def _update(self, state: LinearEvalState, step, batch, learning_rates):
        rng = jax.random.fold_in(self._base_key, step)
        rng = jax.random.fold_in(rng, jax.lax.axis_index(byol_experiment.AXIS))
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
        grads = jax.lax.pmean(grads, axis_name=byol_experiment.AXIS)
        direction, opt_state = self.optimizer.update(grads, state.opt_state)
        step_sizes = jnp.asarray(learning_rates) * self.schedule(step)  # [L]
        classifier = jax.tree.map(
            lambda p, d: p - step_sizes.reshape((-1,) + (1,) * (d.ndim - 1)) * d,
            state.classifier,
            direction,
        )
        top1 = jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=-1)
        scalars = jax.lax.pmean(
            dict(loss=losses, top1=top1), axis_name=byol_experiment.AXIS
        )
        new_state = LinearEvalState(
            encoder_params=state.encoder_params,
            encoder_state=encoder_state,
            classifier=classifier,
            opt_state=opt_state,
        )
        return new_state, scalars

    def _accuracy_counts(self, classifier, features, labels):
        """Top-1 and top-5 hits per classifier; label -1 marks padding."""
        logits = jax.vmap(self.classifier.apply, in_axes=(0, None))(
            classifier, features
        )
        k = min(5, logits.shape[-1])
        top_k = jax.lax.top_k(logits, k)[1]  # [L, N, k]
        hits = top_k == labels[None, :, None]
        valid = labels >= 0
        return (
            jnp.sum(hits[..., 0] & valid, axis=-1),
            jnp.sum(jnp.any(hits, axis=-1) & valid, axis=-1),
        )

    def accuracy(
        self, classifier: hk.Params, features: np.ndarray, labels: np.ndarray, chunk
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 and top-5 accuracy [L] of each classifier on frozen features.

        Args:
            classifier: stacked classifier parameters (leading axis L).
            features: this process's features [N, D] of an evaluation split.
            labels: their labels [N].
            chunk: examples per jitted call (the last chunk is padded).

        Returns:
            Top-1 and top-5 accuracy of each classifier over the examples of
            every process.
        """
        num = jax.tree.leaves(classifier)[0].shape[0]
        counts = np.zeros(2 * num + 1, np.int64)  # top-1 hits, top-5 hits, N
        for start in range(0, len(features), chunk):
            x = features[start : start + chunk]
            y = labels[start : start + chunk]
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


def _eval_features(encoder: PretrainedEncoder, split: str, batch_size: int):
    """Frozen features and labels of one pass over an evaluation split."""
    run = encoder.config.data
    batches = data.load(
        run.dataset,
        split,
        is_training=False,
        batch_dims=(batch_size,),
        image_size=run.image_size,
        data_dir=run.data_dir,
        num_threads=run.num_threads,
        val_size=_val_size(run),
        skip_bad_images=bool(run.get("skip_corrupt_images", False)),
    )
    return eval_experiment.extract_features(encoder.embed, batches)


def reference_protocol(
    config: ml_collections.ConfigDict, encoder: PretrainedEncoder
) -> dict[str, Any]:
    """Trains the sweep's classifiers, picks one on `val`, reports it on `test`.

    Args:
        config: the linear-evaluation config (`evaluation.batch_size`,
            `epochs`, `learning_rates`, `log_every_steps`; `seed`).
        encoder: the frozen encoder (`restore_encoder`).

    Returns:
        Test `top1`/`top5` and `val_top1` of the chosen classifier, its
        `learning_rate`, the whole `sweep` (validation accuracy and final
        training loss per learning rate) and the training length and speed.

    Example:
        >>> encoder = restore_encoder(config)  # doctest: +SKIP
        >>> reference_protocol(config, encoder)["top1"]  # doctest: +SKIP
    """
    evaluation = config.evaluation
    run = encoder.config.data
    info = encoder.info
    batch_size = evaluation.batch_size
    # STL-10's unlabelled images are part of train_minus_val; the classifier
    # trains on the labelled ones only.
    num_train = info.num_examples["train_minus_val"] - info.num_unlabelled
    steps = max(1, evaluation.epochs * num_train // batch_size)
    rates = np.asarray(evaluation.learning_rates, np.float32)
    experiment = LinearEvalExperiment(encoder, batch_size, steps, seed=config.seed)

    state = experiment.init(jax.random.key(config.seed), len(rates))
    state = train.replicate(state)
    batches = data.load(
        run.dataset,
        "train_minus_val",
        is_training=True,
        batch_dims=(jax.local_device_count(), batch_size // jax.device_count()),
        image_size=run.image_size,
        data_dir=run.data_dir,
        seed=config.seed,
        two_views=False,
        labelled_only=True,
        num_threads=run.num_threads,
        val_size=_val_size(run),
        skip_bad_images=bool(run.get("skip_corrupt_images", False)),
    )
    batches = data.prefetch_to_device(batches, size=2)
    print(
        f"Linear evaluation: {steps} steps ({evaluation.epochs} epochs of "
        f"{num_train} images, batch {batch_size}), learning rates "
        + ", ".join(f"{r:g}" for r in rates)
    )
    progress = reporting.Progress(steps, 0, batch_size)
    started = time.perf_counter()
    losses = np.full(len(rates), np.nan)
    for step in range(steps):
        state, scalars = experiment.update(state, step, next(batches), rates)
        done = step + 1
        if done % evaluation.log_every_steps == 0 or done == steps:
            scalars = byol_experiment.unreplicate(scalars)
            losses = np.asarray(scalars["loss"], np.float64)
            # The progress line shows the mean over the sweep's classifiers.
            progress.update(
                done,
                {"loss": float(np.mean(losses)), "top1": float(scalars["top1"].mean())},
            )
    batches.close()  # tf.data threads left to interpreter exit can hang it
    train_seconds = time.perf_counter() - started
    classifier = byol_experiment.unreplicate(state.classifier)

    val_x, val_y = _eval_features(encoder, "val", batch_size)
    val_top1, val_top5 = experiment.accuracy(classifier, val_x, val_y, batch_size)
    best = int(np.argmax(val_top1))  # the first of equals: the sweep's order
    chosen = jax.tree.map(lambda x: x[best : best + 1], classifier)
    test_x, test_y = _eval_features(encoder, "test", batch_size)
    test_top1, test_top5 = experiment.accuracy(chosen, test_x, test_y, batch_size)
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
        "train_seconds": train_seconds,
        "images_per_second": steps * batch_size / max(train_seconds, 1e-9),
    }


def probe_protocol(
    config: ml_collections.ConfigDict, encoder: PretrainedEncoder
) -> dict[str, Any]:
    """The fast probe of `byol.train.run_probe` on the restored encoder.

    Args:
        config: the linear-evaluation config
            (`evaluation.probe_max_train_examples`).
        encoder: the frozen encoder (`restore_encoder`).

    Returns:
        Test `top1`/`top5`, `val_top1` and the chosen L2 penalty `l2`.

    Example:
        >>> encoder = restore_encoder(config)  # doctest: +SKIP
        >>> probe_protocol(config, encoder)["top1"]  # doctest: +SKIP
    """
    result = train.run_probe(
        encoder.config,
        encoder.embed,
        encoder.info.num_classes,
        config.evaluation.probe_max_train_examples,
    )
    return {key: float(value) for key, value in result._asdict().items()}


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Linearly evaluates the encoder of a pre-training run.

    Args:
        config: a linear-evaluation config (configs/eval.py):
            `evaluation.pretrain_workdir` names the run (or
            `evaluation.deepmind_checkpoint` a DeepMind BYOL .pkl),
            `evaluation.protocol` picks ``probe`` or ``reference``.
        workdir: where `linear_eval_results.json` goes (may be the
            pre-training directory: nothing there is overwritten).

    Returns:
        The results also written to `<workdir>/linear_eval_results.json`:
        test `top1`/`top5` (fractions), `val_top1`, the protocol's details,
        the checkpoint step and the config.

    Raises:
        ValueError: an invalid `evaluation` field, or a checkpoint that does
            not fit the run's config.json.
        FileNotFoundError: no config.json or checkpoint in the pre-training
            directory, or a missing dataset.

    Example:
        >>> results = evaluate(config, "workdirs/eval")  # doctest: +SKIP
        >>> print(f"{100 * results['top1']:.1f}%")  # doctest: +SKIP
    """
    check_linear_eval_config(config)
    os.makedirs(workdir, exist_ok=True)
    started = time.perf_counter()
    encoder = restore_encoder(config)
    protocol = config.evaluation.protocol
    source_field = (
        "deepmind_checkpoint"
        if config.evaluation.get("deepmind_checkpoint")
        else "pretrain_workdir"
    )
    source = config.evaluation[source_field]
    print(
        f"Restored step {encoder.step} of {source} "
        f"({encoder.config.model.encoder}, norm {encoder.config.model.norm}, "
        f"{encoder.config.data.dataset}); protocol {protocol}"
    )
    if protocol == "reference":
        metrics = reference_protocol(config, encoder)
    else:
        metrics = probe_protocol(config, encoder)
    results = {
        "mode": "linear_eval",
        "protocol": protocol,
        source_field: os.path.abspath(source),
        "checkpoint_step": encoder.step,
        "dataset": encoder.config.data.dataset,
        **metrics,
        "seconds": time.perf_counter() - started,
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
            json.dump(results, f, indent=2)
    print(
        f"Linear evaluation ({protocol}) of step {encoder.step}: test top-1 "
        f"{100 * results['top1']:.2f}%, top-5 {100 * results['top5']:.2f}%"
    )
    return results
