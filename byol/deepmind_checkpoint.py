r"""DeepMind's released BYOL checkpoints: load them safely, map them onto our network.

DeepMind's BYOL code saves its state with ``dill.dump(..., protocol=2)``; its
released checkpoints (``pretrain_res50x1.pkl``, ...) are such files:

    {"experiment_state": _ByolExperimentState(online_params, target_params,
                                               online_state, target_state,
                                               opt_state),
     "step": int, "rng": uint32[2]}

with Haiku mappings ``{module_name: {name: numpy array}}``. `pickle.load` on a
downloaded file runs whatever the file says; this loader admits only numpy's
array and dtype reconstruction, plain containers, Python 2 byte strings and
inert stand-ins for Haiku's mappings and the reference's NamedTuples, and
refuses anything else (``os.system``, ``builtins.eval``, ...) before it runs.
It also bounds the work a small hostile file can ask for: the file's size,
every length against what is left of the file, the nesting depth and the
nodes visited (shared references count each time), and admits only plain
numeric dtypes (no fields, subarrays or objects). Every refusal is a one-line
ValueError naming the file.

The network is read from the parameter names and shapes (depth from the
encoder's module name, width and stem from ``initial_conv``, head sizes from
the projector and predictor) and checked against our BN network (`make_forward`
of `byol.model`), whose names follow DeepMind's. LARS momentum is not returned
(our optimiser state has another layout).
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
from configs import common

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
# What a hostile file may ask for. ResNet-200 2x's released file is ~3 GB, its
# structure a few thousand nodes, 6 deep.
MAX_FILE_BYTES = 16 * 2**30
MAX_DEPTH = 64
MAX_NODES = 1_000_000


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a callable that a BYOL checkpoint never holds."""


class CheckpointFormatError(ValueError):
    """A file that is not a DeepMind BYOL checkpoint, or does not fit the network."""


# ----------------------------------------------------------------- stand-ins
class PickledRecord(tuple):
    """A NamedTuple of the reference's code, kept as the values of its fields.

    The reference's classes are never imported: each becomes an inert tuple
    subclass knowing its class name and, when the pickle says, its fields.
    """

    record_name = "record"
    record_fields: tuple[str, ...] = ()

    def __new__(cls, *values):
        return tuple.__new__(cls, values)

    def __setstate__(self, state):  # pickle's BUILD: a NamedTuple has no state
        raise UnsafeCheckpointError(
            f"refused to set a state on the record {self.record_name!r}"
        )

    def fields(self) -> dict[str, Any] | None:
        """The values by field name, or None when the names are unknown."""
        if len(self.record_fields) != len(self):
            return None
        return dict(zip(self.record_fields, self, strict=True))


def _record_class(name: str, fields=(), module: str = "") -> type:
    if not isinstance(name, str) or not isinstance(fields, tuple | list):
        raise UnsafeCheckpointError(
            f"refused a pickled NamedTuple class {type(name).__name__} with "
            f"fields of type {type(fields).__name__}"
        )
    if not all(isinstance(f, str) and f.isidentifier() for f in fields):
        raise UnsafeCheckpointError("refused NamedTuple fields that are not names")
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


def _plain_dtype(dtype) -> np.dtype:
    """`dtype` if it is a plain number type; a forged one could read pointers."""
    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in "fiub"
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.hasobject
    ):
        raise UnsafeCheckpointError(
            f"refused an array of dtype {getattr(dtype, 'str', type(dtype).__name__)}"
            ": a BYOL checkpoint holds plain numbers only"
        )
    return dtype


def _scalar(dtype, *args):
    return _multiarray.scalar(_plain_dtype(dtype), *args)


def _frombuffer(buffer, dtype, shape, order):
    return _numeric._frombuffer(buffer, _plain_dtype(dtype), shape, order)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
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
    # Optimiser states: optax's, and the reference's LARS ones
    # (byol.utils.optimizers.ScaleByLarsState, AddWeightDecayState).
    optimiser = root == "optax" or module.split(".")[-1] == "optimizers"
    if optimiser and name.endswith("State") and name.isidentifier():
        return _record_class(name, (), module)
    return None


class _BoundedFile:
    """A file whose reads may not ask for more than is left of it."""

    def __init__(self, file, size: int):
        self._file, self._left = file, size

    def read(self, n: int = -1) -> bytes:
        if n is not None and n > self._left:
            raise CheckpointFormatError(
                f"a length of {n:,} bytes beyond the file's end"
            )
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self._file.readline()
        self._left -= len(line)
        return line


class _CheckpointUnpickler(pickle._Unpickler):  # noqa: SLF001 (opcodes overridable)
    """Pickle's own unpickler, resolving only what a BYOL checkpoint needs."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(self, file, path: str, size: int):
        super().__init__(_BoundedFile(file, size))
        self._path = path

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles written by Python 3 name builtins as Python 2 did.
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

    def load_build(self):
        """BUILD: only an array (of a plain dtype) or a dtype takes a state."""
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.ndarray) and isinstance(state, tuple):
            # (version, shape, dtype, is_fortran, data)
            _plain_dtype(state[2] if len(state) == 5 else state[1])
        elif not isinstance(target, np.dtype):
            raise UnsafeCheckpointError(
                f"refused to set a state on a {type(target).__name__}"
            )
        super().load_build()
        if isinstance(target, np.dtype):
            _plain_dtype(target)

    dispatch[pickle.BUILD[0]] = load_build


# ---------------------------------------------------------------------- load
class _Walk:
    """Turns stand-ins and mappings into plain dicts, lists and tuples, bounded."""

    def __init__(self, path: str):
        self.path, self.nodes = path, 0

    def __call__(self, value, depth: int = 0):
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise CheckpointFormatError(
                f"{self.path} is not a DeepMind BYOL checkpoint: its structure is "
                f"deeper than {MAX_DEPTH} or has more than {MAX_NODES:,} nodes "
                "(shared or self references?)"
            )
        if isinstance(value, PickledRecord):
            fields = value.fields()
            if fields is None:
                return tuple(self(v, depth + 1) for v in value)
            return {k: self(v, depth + 1) for k, v in fields.items()}
        if isinstance(value, Mapping):
            return {k: self(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self(v, depth + 1) for v in value)
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
        if not isinstance(module, str):
            fail(f" has a {type(module).__name__} key, expected module names")
        if not isinstance(leaves, Mapping):
            fail(f"[{module!r}] is a {type(leaves).__name__}, expected {{name: array}}")
        out[module] = {}
        for name, leaf in leaves.items():
            if not isinstance(leaf, np.ndarray | np.generic) or leaf.dtype.kind not in (
                "fiub"
            ):
                kind = getattr(leaf, "dtype", type(leaf).__name__)
                fail(f"[{module!r}][{name!r}] is {kind}, expected a numeric array")
            out[module][name] = np.asarray(leaf)
    return out


# What pickle's opcodes raise on a malformed or truncated file.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError)
_MALFORMED += (IndexError, AttributeError, OverflowError, MemoryError, RecursionError)


def _unpickle(path: str):
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise CheckpointFormatError(
            f"{path} is {size / 2**30:.1f} GiB; a DeepMind BYOL checkpoint is "
            f"under {MAX_FILE_BYTES / 2**30:.0f} GiB"
        )
    with open(path, "rb") as f:
        try:
            return _CheckpointUnpickler(f, path, size).load()
        except UnsafeCheckpointError as error:
            if path in str(error):
                raise
            raise UnsafeCheckpointError(f"{error} (in {path})") from None
        except _MALFORMED as error:
            reason = str(error).strip().splitlines()
            reason = reason[0][:200] if reason else type(error).__name__
            raise CheckpointFormatError(
                f"{path} is not a DeepMind BYOL checkpoint: unreadable pickle "
                f"({reason})"
            ) from None


def load_deepmind_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a DeepMind BYOL checkpoint without running code from the file.

    Returns:
        ``online_params``, ``online_state``, ``target_params``,
        ``target_state`` (each ``{module: {name: array}}``), ``step`` (int)
        and ``rng`` (array, or None).

    Raises:
        UnsafeCheckpointError: the pickle asks for a callable or a value a
            checkpoint never holds (named, with the file); nothing it asks
            for has run.
        CheckpointFormatError: not a pickle, not this layout, or beyond the
            loader's bounds.
        FileNotFoundError: no such file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DeepMind BYOL checkpoint {path} does not exist")
    raw = _unpickle(path)
    if not isinstance(raw, Mapping) or "experiment_state" not in raw:
        keys = (
            sorted(k for k in raw if isinstance(k, str))
            if isinstance(raw, Mapping)
            else None
        )
        got = f"a dict with keys {keys}" if keys is not None else type(raw).__name__
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: expected a dict with "
            f"'experiment_state', 'step' and 'rng', got {got}"
        )
    state = raw["experiment_state"]
    fields = state.fields() if isinstance(state, PickledRecord) else state
    if not isinstance(fields, Mapping) or not set(VARIABLES) <= set(fields):
        have = (
            sorted(k for k in fields if isinstance(k, str))
            if isinstance(fields, Mapping)
            else type(state).__name__
        )
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: experiment_state has "
            f"{have}, expected the fields {', '.join(VARIABLES)}"
        )
    walk = _Walk(path)
    out = {
        name: _check_variables(walk(fields[name]), f"experiment_state.{name}", path)
        for name in VARIABLES
    }
    step = raw.get("step", 0)
    if isinstance(step, np.ndarray) and step.size == 1:
        step = step.reshape(())[()]
    if not isinstance(step, int | np.integer) or isinstance(step, bool):
        raise CheckpointFormatError(
            f"{path} is not a DeepMind BYOL checkpoint: step is "
            f"{type(step).__name__}, expected an integer"
        )
    rng = raw.get("rng")
    out["step"] = int(step)
    out["rng"] = None if rng is None else np.asarray(walk(rng))
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
    """Channels of the images a checkpoint's encoder takes (3 for RGB)."""
    return _stem_kernel(params, source)[1][2]


def model_config(
    params: hk.Params,
    base: ml_collections.ConfigDict | None = None,
    source: str = "the checkpoint",
) -> ml_collections.ConfigDict:
    """The `model` config section of a checkpoint's network, read from its params.

    Depth from the encoder's module name (``res_net50``), width and stem (7x7,
    or the small-image 3x3) from ``initial_conv``, head sizes from
    ``projector`` and ``predictor``; BN everywhere, as the released
    checkpoints. Other fields come from `base` (default: configs/common.py's).
    """
    top, kernel = _stem_kernel(params, source)
    encoder = _ENCODER_BY_MODULE[top]
    model = common.base_config().model
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
    """(params, state) shapes of `make_forward`'s BN network, without computing it."""
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
    """`tree` cast to `like`'s dtypes, or an error naming what does not fit."""
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
    """A checkpoint's variables in the layout of `make_forward`'s network.

    ``initialised`` names the modules initialised here because the checkpoint
    has none of that shape (a classifier for another number of classes).
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
    """Checks a loaded checkpoint against our BN network; returns its variables.

    Every module, parameter and state entry must exist in `make_forward`'s
    network with the same shape, and the network must have no other (the
    ``classifier`` aside: a training monitor, kept when it has `num_classes`
    outputs and initialised afresh otherwise).

    Raises:
        CheckpointFormatError: an entry missing, unexpected or of another shape
            (one line naming the first few), or `num_classes` not given for a
            checkpoint without a classifier.
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
