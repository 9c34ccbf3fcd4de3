r"""DeepMind's released BYOL checkpoints: load them safely, map them onto our network.

DeepMind's BYOL code (deepmind-research/byol) saves its training state with
``dill.dump(..., protocol=2)`` and its released checkpoints
(``pretrain_res50x1.pkl``, ``pretrain_res200x2.pkl``) are such files: a dict

    {"experiment_state": _ByolExperimentState(online_params, target_params,
                                               online_state, target_state,
                                               opt_state),
     "step": int, "rng": uint32[2]}

whose params and states are Haiku two-level mappings
``{module_name: {name: numpy array}}`` (``FlatMapping`` or ``frozendict``,
depending on the Haiku version that wrote them).

A pickle can call any importable function while it loads, so
`pickle.load` on a downloaded file runs whatever the file says. The loader
here admits only what such a checkpoint needs: numpy's array and dtype
reconstruction, plain containers, Python 2 byte strings, and stand-ins for
the reference's own classes (Haiku's mappings become dicts; its NamedTuples
become inert records of their fields, never the real classes). Anything else
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with
`UnsafeCheckpointError` before it runs.

The network of a checkpoint is read from its parameter names and shapes
(encoder depth from the module name, width and stem from ``initial_conv``,
head sizes from ``projector`` / ``predictor``) and checked, name by name and
shape by shape, against this project's BN network (`make_forward` of
`byol.byol_experiment`), whose names follow DeepMind's:

    >>> ckpt = load_deepmind_checkpoint("pretrain_res50x1.pkl")  # doctest: +SKIP
    >>> weights = to_network(ckpt)  # doctest: +SKIP
    >>> weights.model.encoder, weights.step  # doctest: +SKIP
    ('resnet50', ...)

LARS momentum (``opt_state``) is read but not returned: this project's
optimiser state has another layout, and the released files are for
evaluation, not for resuming DeepMind's run.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from byol import model as models
from byol import networks
from byol.parallel import AXIS

try:  # numpy >= 1.26 names its internals numpy._core; older ones numpy.core.
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

VARIABLES = ("online_params", "online_state", "target_params", "target_state")
# The fields of the reference's `_ByolExperimentState`, in its order.
EXPERIMENT_STATE_FIELDS = (
    "online_params",
    "target_params",
    "online_state",
    "target_state",
    "opt_state",
)
CLASSIFIER = "classifier"  # the online linear probe, not part of the representation
_MAX_NAMED = 3  # entries named per kind of mismatch in an error

# The BN model section the released checkpoints were trained with (the fields
# of configs/common.py's `model`); architecture fields are read from the file.
_BN_MODEL = dict(
    encoder="resnet50",
    width_multiplier=1,
    small_image=False,
    norm="bn",
    encoder_norm="",
    projector_norm="",
    predictor_norm="",
    num_groups=16,
    encoder_ws=-1,
    mlp_ws=0,
    ws_eps=1e-4,
    bn_init=False,
    projector_hidden_size=4096,
    projection_size=256,
    predictor_hidden_size=4096,
    compute_dtype="float32",
)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a callable that a BYOL checkpoint never holds."""


class CheckpointFormatError(ValueError):
    """A file that is not a DeepMind BYOL checkpoint, or does not fit the network."""


# ----------------------------------------------------------------- stand-ins
class PickledRecord(tuple):
    """A NamedTuple of the reference's code, kept as the values of its fields.

    The reference's classes (`_ByolExperimentState`, optimiser states) are
    never imported: each becomes a subclass of this inert tuple that knows
    its class name and, when the pickle says, its field names.
    """

    record_name = "record"
    record_fields: tuple[str, ...] = ()

    def __new__(cls, *values):
        """A record of `values` (how pickle's NEWOBJ and REDUCE build one)."""
        return tuple.__new__(cls, values)

    def fields(self) -> dict[str, Any] | None:
        """The values by field name, or None when the names are unknown."""
        if len(self.record_fields) != len(self):
            return None
        return dict(zip(self.record_fields, self, strict=True))


def _record_class(name: str, fields=(), module: str = "") -> type:
    if not isinstance(name, str) or not isinstance(fields, (tuple, list)):
        raise UnsafeCheckpointError(
            f"refused a pickled NamedTuple class {name!r} with fields {fields!r}"
        )
    if not all(isinstance(f, str) and f.isidentifier() for f in fields):
        raise UnsafeCheckpointError(f"refused NamedTuple fields {fields!r}")
    return type(
        re.sub(r"\W", "_", name) or "record",
        (PickledRecord,),
        {"record_name": name, "record_fields": tuple(fields), "__module__": module},
    )


def _dill_namedtuple(name, fields, module, *unused_defaults):
    """Stands in for `dill._dill._create_namedtuple`: dill's NamedTuple classes."""
    return _record_class(name, fields, module if isinstance(module, str) else "")


def _haiku_mapping(*args, **kwargs) -> dict:
    """Stands in for Haiku's FlatMapping / FlatMap / frozendict (pickled as dict)."""
    return dict(*args, **kwargs)


def _latin1_bytes(text, encoding="latin1") -> bytes:
    """Stands in for `_codecs.encode`: how protocol-2 pickles store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError(
            f"refused _codecs.encode of a {type(text).__name__} to {encoding!r}"
        )
    return text.encode("latin1")


def _reconstruct_record(cls, base, state):
    """Stands in for `copyreg._reconstructor`: protocol 0-1 NamedTuples only."""
    if not (isinstance(cls, type) and issubclass(cls, PickledRecord)) or (
        base is not tuple
    ):
        raise UnsafeCheckpointError(
            f"refused copyreg._reconstructor of {cls!r} from {base!r}"
        )
    return cls(*state)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("copyreg", "_reconstructor"): _reconstruct_record,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("dill._dill", "_create_namedtuple"): _dill_namedtuple,
    ("dill.dill", "_create_namedtuple"): _dill_namedtuple,
}
_HAIKU_MAPPINGS = ("FlatMapping", "FlatMap", "frozendict")


def _stand_in(module: str, name: str):
    """What a checkpoint may load for `module.name`, or None (refused)."""
    if (module, name) in _ALLOWED:
        return _ALLOWED[module, name]
    root = module.split(".")[0]
    if root == "haiku" and name in _HAIKU_MAPPINGS:
        return _haiku_mapping
    if name == "_ByolExperimentState" and module.split(".")[-1] == "byol_experiment":
        return _record_class(name, EXPERIMENT_STATE_FIELDS, module)
    # Optimiser states in opt_state: optax's, and the reference's LARS
    # (byol.utils.optimizers.ScaleByLarsState, AddWeightDecayState).
    optimiser = root == "optax" or module.split(".")[-1] == "optimizers"
    if optimiser and name.endswith("State") and name.isidentifier():
        return _record_class(name, (), module)
    return None


class _CheckpointUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the names a BYOL checkpoint needs."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles written by Python 3 name builtins as Python 2 did
        # (`__builtin__.set`); pickle's own find_class renames them the same way.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _stand_in(module, name)
        if found is None:
            raise UnsafeCheckpointError(
                f"refused to load {module}.{name} from {self._path}: a DeepMind "
                "BYOL checkpoint holds only numpy arrays, plain containers and "
                "Haiku mappings, and this pickle would call something else"
            )
        return found


# ---------------------------------------------------------------------- load
def _plain(value):
    """Dicts, lists and tuples of arrays in place of stand-ins and mappings."""
    if isinstance(value, PickledRecord):
        fields = value.fields()
        if fields is None:
            return tuple(_plain(v) for v in value)
        return {k: _plain(v) for k, v in fields.items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _check_variables(tree, where: str, path: str) -> dict:
    """A Haiku two-level mapping of numeric arrays, or a one-line error."""

    def fail(what: str):
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: {where}{what}"
        )

    if not isinstance(tree, Mapping):
        fail(f" is a {type(tree).__name__}, expected {{module: {{name: array}}}}")
    out = {}
    for module, leaves in tree.items():
        if not isinstance(module, str) or not isinstance(leaves, Mapping):
            fail(f"[{module!r}] is a {type(leaves).__name__}, expected {{name: array}}")
        out[module] = {}
        for name, leaf in leaves.items():
            numeric = isinstance(leaf, (np.ndarray, np.generic))
            if not numeric or leaf.dtype.kind not in "fiub":
                kind = getattr(leaf, "dtype", type(leaf).__name__)
                fail(f"[{module!r}][{name!r}] is {kind}, expected a numeric array")
            out[module][name] = np.asarray(leaf)
    return out


def load_deepmind_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a DeepMind BYOL checkpoint without running code from the file.

    Args:
        path: a ``.pkl`` written by deepmind-research/byol (e.g. the released
            ``pretrain_res50x1.pkl``).

    Returns:
        Plain dicts of numpy arrays: ``online_params``, ``online_state``,
        ``target_params``, ``target_state`` (each ``{module: {name: array}}``),
        ``step`` (int) and ``rng`` (array, or None when absent).

    Raises:
        UnsafeCheckpointError: the pickle asks for any callable other than
            numpy's array reconstruction, plain containers and the reference's
            own mappings and NamedTuples (the message names it and the file);
            nothing it asks for has run.
        CheckpointFormatError: the file is not a pickle, or not of this layout.
        FileNotFoundError: no such file.

    Example:
        >>> ckpt = load_deepmind_checkpoint("pretrain_res50x1.pkl")  # doctest: +SKIP
        >>> stem = ckpt["online_params"]["res_net50/~/initial_conv"]  # doctest: +SKIP
        >>> stem["w"].shape  # doctest: +SKIP
        (7, 7, 3, 64)
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DeepMind BYOL checkpoint {path} does not exist")
    with open(path, "rb") as f:
        try:
            raw = _CheckpointUnpickler(f, path).load()
        except UnsafeCheckpointError:
            raise
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
        ) as error:
            reason = str(error).strip().splitlines()
            reason = reason[0] if reason else type(error).__name__
            raise CheckpointFormatError(
                f"{path} is not a DeepMind BYOL checkpoint: unreadable pickle "
                f"({reason})"
            ) from error
    if not isinstance(raw, Mapping) or "experiment_state" not in raw:
        keys = sorted(map(str, raw)) if isinstance(raw, Mapping) else None
        got = f"a dict with keys {keys}" if keys is not None else type(raw).__name__
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: expected a dict with "
            f"'experiment_state', 'step' and 'rng', got {got}"
        )
    state = raw["experiment_state"]
    fields = state.fields() if isinstance(state, PickledRecord) else state
    if not isinstance(fields, Mapping) or not set(VARIABLES) <= set(fields):
        have = sorted(fields) if isinstance(fields, Mapping) else type(state).__name__
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: experiment_state has "
            f"{have}, expected the fields {', '.join(VARIABLES)}"
        )
    out = {
        name: _check_variables(_plain(fields[name]), f"experiment_state.{name}", path)
        for name in VARIABLES
    }
    step = raw.get("step", 0)
    if isinstance(step, np.ndarray) and step.size == 1:
        step = step.reshape(())[()]
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: step is "
            f"{type(step).__name__}, expected an integer"
        )
    rng = raw.get("rng")
    out["step"] = int(step)
    out["rng"] = None if rng is None else np.asarray(rng)
    return out


# ------------------------------------------------------------------ network
_ENCODER_BY_MODULE = {d.module: key for key, d in networks.DEPTHS.items()}


def _param(params, module: str, name: str, source: str) -> np.ndarray:
    try:
        return params[module][name]
    except KeyError:
        raise CheckpointFormatError(
            f"{source}: no parameter {module}/{name}, which this network needs"
        ) from None


def _stem_kernel(params: hk.Params, source: str) -> tuple[str, tuple[int, ...]]:
    """The encoder's top module name and the shape of its stem kernel."""
    stems = [m for m in params if m.endswith("/~/initial_conv")]
    if len(stems) != 1:
        raise CheckpointFormatError(
            f"{source}: expected one encoder (a '<name>/~/initial_conv' module), "
            f"found {len(stems)}"
        )
    top = stems[0][: -len("/~/initial_conv")]
    if top not in _ENCODER_BY_MODULE:
        raise CheckpointFormatError(
            f"{source}: encoder module {top!r} unknown; expected one of: "
            + ", ".join(_ENCODER_BY_MODULE)
        )
    kernel = tuple(np.shape(_param(params, stems[0], "w", source)))
    stem_channels = networks.DEPTHS[_ENCODER_BY_MODULE[top]].stem_channels
    if len(kernel) != 4 or kernel[-1] % stem_channels:
        raise CheckpointFormatError(
            f"{source}: {stems[0]}/w has shape {list(kernel)}, expected "
            f"[k, k, channels, {stem_channels} x width]"
        )
    return top, kernel


def input_channels(params: hk.Params, source: str = "the checkpoint") -> int:
    """Channels of the images a checkpoint's encoder takes (3 for RGB).

    Example:
        >>> input_channels(ckpt["online_params"])  # doctest: +SKIP
        3
    """
    return _stem_kernel(params, source)[1][2]


def model_config(
    params: hk.Params,
    base: ml_collections.ConfigDict | None = None,
    source: str = "the checkpoint",
) -> ml_collections.ConfigDict:
    """The `model` config section of a checkpoint's network, read from its params.

    Encoder depth comes from the encoder's module name (``res_net50`` ->
    ``resnet50``), width and stem (7x7, or the small-image 3x3) from
    ``initial_conv``, head sizes from ``projector`` and ``predictor``. The
    normalisation is BN everywhere, as in the released checkpoints.

    Args:
        params: online parameters ``{module: {name: array}}``.
        base: the model section to start from (every other field is kept);
            default: the reference's BN ResNet-50 (configs/byol.py, norm=bn).
        source: names the checkpoint in errors.

    Returns:
        A new model section.

    Raises:
        CheckpointFormatError: no encoder, one of an unknown depth, or no
            projector / predictor.

    Example:
        >>> model = model_config(ckpt["online_params"])  # doctest: +SKIP
        >>> model.encoder, model.width_multiplier  # doctest: +SKIP
        ('resnet50', 1)
    """
    top, kernel = _stem_kernel(params, source)
    encoder = _ENCODER_BY_MODULE[top]
    model = ml_collections.ConfigDict(dict(_BN_MODEL))
    if base is not None:
        model.update(base.to_dict() if hasattr(base, "to_dict") else dict(base))

    def width(module: str) -> int:
        return int(np.shape(_param(params, module, "w", source))[-1])

    model.update(
        encoder=encoder,
        width_multiplier=kernel[-1] // networks.DEPTHS[encoder].stem_channels,
        small_image=kernel[0] == 3,
        norm="bn",
        encoder_norm="",
        projector_norm="",
        predictor_norm="",
        encoder_ws=-1,
        mlp_ws=0,
        bn_init=False,
        projector_hidden_size=width("projector/linear"),
        projection_size=width("projector/linear_1"),
        predictor_hidden_size=width("predictor/linear"),
    )
    return model


def network_shapes(
    model: ml_collections.ConfigDict, num_classes: int, channels: int = 3
):
    """Shapes of (params, state) of `make_forward`'s network, without computing it.

    Args:
        model: a model section (`model_config`).
        num_classes: classes of the online classifier.
        channels: channels of the input images.

    Returns:
        Two pytrees of `jax.ShapeDtypeStruct`, ``{module: {name: shape}}``.

    Example:
        >>> params, state = network_shapes(model, 1000)  # doctest: +SKIP
        >>> params["classifier"]["w"].shape  # doctest: +SKIP
        (2048, 1000)
    """
    forward = models.make_forward(model, models.network_norms(model), num_classes)
    size = networks.min_image_size(model.small_image)
    # BN layers reduce over the pmap axis, which needs a named axis to trace.
    init = jax.vmap(
        lambda x: forward.init(jax.random.key(0), x, is_training=True),
        axis_name=AXIS,
    )
    images = jax.ShapeDtypeStruct((1, 2, size, size, channels), jnp.float32)
    shapes = jax.eval_shape(init, images)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), shapes)


def _leaves(tree) -> dict[str, Any]:
    return {
        f"{m}/{n}": leaf for m, leaves in tree.items() for n, leaf in leaves.items()
    }


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED])
    more = len(items) - _MAX_NAMED
    return f"{shown} (+{more} more)" if more > 0 else shown


def fit_to_network(tree, like, what: str, source: str, network: str) -> dict:
    """`tree` with the dtypes of `like`, or an error naming what does not fit.

    Args:
        tree: ``{module: {name: array}}`` from a checkpoint.
        like: the same layout of `jax.ShapeDtypeStruct` (`network_shapes`).
        what: which variables (``online_params``, ...), for errors.
        source: names the checkpoint in errors.
        network: names the network in errors.

    Returns:
        A copy of `tree` (arrays cast to `like`'s dtypes where they differ).

    Raises:
        CheckpointFormatError: one line naming the first few missing,
            unexpected and mis-shaped entries.

    Example:
        >>> fit_to_network(ckpt["online_state"], state, "online_state",
        ...                "ckpt.pkl", "resnet50")  # doctest: +SKIP
    """
    got, want = _leaves(tree), _leaves(like)
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    misshaped = []
    for key in want.keys() & got.keys():
        a, b = got[key], want[key]
        same_kind = np.dtype(a.dtype).kind == np.dtype(b.dtype).kind or (
            np.dtype(a.dtype).kind in "iu" and np.dtype(b.dtype).kind in "iu"
        )
        if tuple(a.shape) != tuple(b.shape) or not same_kind:
            misshaped.append(
                f"{key}: {a.dtype}{list(a.shape)} in the checkpoint, "
                f"{np.dtype(b.dtype)}{list(b.shape)} in the network"
            )
    if missing or unexpected or misshaped:
        parts = [
            f"{label} {len(items)}: {_named(sorted(items))}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", misshaped),
            )
            if items
        ]
        raise CheckpointFormatError(
            f"{what} of {source} do not fit the {network} network: " + "; ".join(parts)
        )
    return {
        module: {
            name: np.asarray(leaf).astype(like[module][name].dtype, copy=False)
            for name, leaf in leaves.items()
        }
        for module, leaves in tree.items()
    }


class NetworkWeights(NamedTuple):
    """A checkpoint's variables, in the layout of `make_forward`'s network.

    Attributes:
        model: the model config section they fit (`model_config`).
        online_params: online network parameters, classifier included.
        online_state: online network state (BN moving statistics).
        target_params: target network parameters.
        target_state: target network state.
        step: the checkpoint's training step.
        initialised: modules initialised here because the checkpoint has none
            of that shape (the ``classifier`` for another number of classes).
    """

    model: ml_collections.ConfigDict
    online_params: hk.Params
    online_state: hk.State
    target_params: hk.Params
    target_state: hk.State
    step: int
    initialised: tuple[str, ...]


def _fresh_classifier(rng: jax.Array, dim: int, num_classes: int) -> dict:
    net = hk.transform(lambda x: hk.Linear(num_classes, name=CLASSIFIER)(x))
    params = net.init(rng, jnp.zeros((1, dim), jnp.float32))
    return jax.tree.map(np.asarray, params[CLASSIFIER])


def to_network(
    checkpoint: dict[str, Any],
    num_classes: int | None = None,
    *,
    base_model: ml_collections.ConfigDict | None = None,
    rng: jax.Array | None = None,
    source: str = "the checkpoint",
) -> NetworkWeights:
    """Checks a loaded checkpoint against our BN network and returns its variables.

    Every module, parameter and state entry must exist in `make_forward`'s
    network with the same shape, and the network must have no other (the
    ``classifier`` aside). The online classifier is a training monitor for
    the pre-training dataset: it is kept when it has `num_classes` outputs
    and initialised afresh (as `hk.Linear`) otherwise.

    Args:
        checkpoint: `load_deepmind_checkpoint`'s result.
        num_classes: classes of the classifier; default: the checkpoint's.
        base_model: model section to build on (see `model_config`).
        rng: key of a fresh classifier (default: key 0).
        source: names the checkpoint in errors.

    Returns:
        The `NetworkWeights`, host numpy arrays.

    Raises:
        CheckpointFormatError: a module, parameter or state entry missing,
            unexpected or of another shape (one line naming the first few),
            or `num_classes` not given for a checkpoint without a classifier.

    Example:
        >>> weights = to_network(load_deepmind_checkpoint(path))  # doctest: +SKIP
        >>> forward = make_forward(weights.model, network_norms(weights.model),
        ...                        1000)  # doctest: +SKIP
        >>> out, _ = forward.apply(weights.online_params, weights.online_state,
        ...                        None, images, is_training=False)  # doctest: +SKIP
    """
    online = checkpoint["online_params"]
    model = model_config(online, base_model, source)
    if num_classes is None:
        if CLASSIFIER not in online or "w" not in online[CLASSIFIER]:
            raise CheckpointFormatError(
                f"{source} has no {CLASSIFIER} to take the number of classes "
                "from; pass num_classes"
            )
        num_classes = int(np.shape(online[CLASSIFIER]["w"])[-1])
    channels = input_channels(online, source)
    params_like, state_like = network_shapes(model, num_classes, channels)
    classifier_like = params_like.pop(CLASSIFIER)
    network = f"{model.encoder} (width {model.width_multiplier}, BN)"
    rngs = jax.random.split(jax.random.key(0) if rng is None else rng)
    out, initialised = {}, []
    for what, key in zip(("online", "target"), rngs, strict=True):
        params = dict(checkpoint[f"{what}_params"])
        classifier = params.pop(CLASSIFIER, None)
        params = fit_to_network(params, params_like, f"{what}_params", source, network)
        state = checkpoint[f"{what}_state"]
        out[f"{what}_state"] = fit_to_network(
            state, state_like, f"{what}_state", source, network
        )
        shapes = {n: tuple(s.shape) for n, s in classifier_like.items()}
        if (
            classifier is not None
            and {n: tuple(np.shape(a)) for n, a in classifier.items()} == shapes
        ):
            params[CLASSIFIER] = {
                n: np.asarray(a).astype(classifier_like[n].dtype, copy=False)
                for n, a in classifier.items()
            }
        else:
            params[CLASSIFIER] = _fresh_classifier(
                key, classifier_like["w"].shape[0], num_classes
            )
            initialised.append(f"{what}_params/{CLASSIFIER}")
        out[f"{what}_params"] = params
    return NetworkWeights(
        model=model,
        step=checkpoint["step"],
        initialised=tuple(initialised),
        **out,
    )
