"""Tests of byol.deepmind_checkpoint: safe loading and mapping of DeepMind's pickles.

The checkpoints here are written as deepmind-research/byol writes them: a dict
holding `_ByolExperimentState` (a NamedTuple of `byol.byol_experiment`) whose
params are Haiku's own immutable mappings, pickled with protocol 2 (the
reference uses `dill.dump(..., protocol=2)`; its NamedTuple classes go through
`dill._dill._create_namedtuple`, emulated below).
"""

import codecs
import collections
import copyreg
import functools
import os
import pickle
import subprocess
import sys
import types
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol import byol_experiment, deepmind_checkpoint, parallel
from byol import model as models
from byol.deepmind_checkpoint import (
    CheckpointFormatError,
    UnsafeCheckpointError,
    load_deepmind_checkpoint,
    to_network,
)
from configs import byol as byol_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BN = dict(create_scale=True, create_offset=True, decay_rate=0.9, eps=1e-5)


# ------------------------------------------------ the reference's network
class _ReferenceTorso(hk.Module):
    """deepmind-research/byol's `ResNetTorso` (v1, bottleneck, Haiku's blocks)."""

    def __init__(self, blocks, width, name):
        super().__init__(name=name)
        self.conv = hk.Conv2D(
            64 * width, 7, stride=2, with_bias=False, name="initial_conv"
        )
        self.bn = hk.BatchNorm(name="initial_batchnorm", **BN)
        self.groups = [
            hk.nets.ResNet.BlockGroup(
                channels=width * channels,
                num_blocks=num,
                stride=stride,
                bn_config=BN,
                resnet_v2=False,
                bottleneck=True,
                use_projection=True,
                name=f"block_group_{i}",
            )
            for i, (channels, num, stride) in enumerate(
                zip((256, 512, 1024, 2048), blocks, (1, 2, 2, 2), strict=True)
            )
        ]

    def __call__(self, x, is_training):
        x = jax.nn.relu(self.bn(self.conv(x), is_training, False))
        x = hk.max_pool(x, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
        for group in self.groups:
            x = group(x, is_training, False)
        return jnp.mean(x, axis=(1, 2))


class _ReferenceMLP(hk.Module):
    """deepmind-research/byol's `MLP`: layers built in __call__."""

    def __init__(self, name, hidden, out):
        super().__init__(name=name)
        self.hidden, self.out = hidden, out

    def __call__(self, x, is_training):
        x = hk.Linear(self.hidden, with_bias=True)(x)
        x = jax.nn.relu(hk.BatchNorm(**BN)(x, is_training=is_training))
        return hk.Linear(self.out, with_bias=False)(x)


def _reference_shapes(num_classes=1000):
    """Shapes of the reference's ResNet-50 BYOL network (its `_forward`)."""

    def forward(images):
        embedding = _ReferenceTorso((3, 4, 6, 3), 1, "res_net50")(images, True)
        projection = _ReferenceMLP("projector", 4096, 256)(embedding, True)
        _ReferenceMLP("predictor", 4096, 256)(projection, True)
        return hk.Linear(num_classes, name="classifier")(embedding)

    init = hk.transform_with_state(forward).init
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    return jax.eval_shape(init, jax.random.key(0), images)


def _zeros_like(shapes):
    # Zero-stride views: a ResNet-50's 37M parameters without the memory.
    return jax.tree.map(
        lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes
    )


def _checkpoint(params, state, step=0, rng=None):
    return {
        "online_params": params,
        "online_state": state,
        "target_params": params,
        "target_state": state,
        "step": step,
        "rng": rng,
    }


# ------------------------------------------------------------ tiny network
TINY_MODEL = dict(
    encoder="tiny",
    small_image=True,
    projector_hidden_size=32,
    projection_size=16,
    predictor_hidden_size=32,
)


@functools.cache
def _tiny_variables(seed, channels=3, num_classes=10):
    """Random params and state of our tiny BN network ({module: {name: array}})."""
    model = deepmind_checkpoint.model_config(
        {
            "tiny_res_net/~/initial_conv": {"w": np.zeros((3, 3, channels, 8))},
            "projector/linear": {"w": np.zeros((64, 32))},
            "projector/linear_1": {"w": np.zeros((32, 16))},
            "predictor/linear": {"w": np.zeros((16, 32))},
        }
    )
    assert model.encoder == "tiny"
    params, state = deepmind_checkpoint.network_shapes(model, num_classes, channels)
    rng = np.random.default_rng(seed)

    def fill(s):
        if np.dtype(s.dtype).kind == "f":
            # Positive, so that BN's moving variances are valid variances.
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        return rng.integers(0, 1000, s.shape).astype(s.dtype)

    return jax.tree.map(fill, params), jax.tree.map(fill, state)


class _ByolExperimentState(NamedTuple):
    """The reference's training state (fields in its order)."""

    online_params: dict
    target_params: dict
    online_state: dict
    target_state: dict
    opt_state: tuple


class ScaleByLarsState(NamedTuple):
    """The reference's LARS momentum (byol.utils.optimizers)."""

    mu: dict


class AddWeightDecayState(NamedTuple):
    """The reference's stateless weight decay (byol.utils.optimizers)."""


@pytest.fixture
def reference_classes(monkeypatch):
    """The reference's classes, importable under the names its pickles use."""
    _ByolExperimentState.__module__ = "byol.byol_experiment"
    monkeypatch.setattr(
        byol_experiment, "_ByolExperimentState", _ByolExperimentState, raising=False
    )
    utils = types.ModuleType("byol.utils")
    optimizers = types.ModuleType("byol.utils.optimizers")
    for cls in (ScaleByLarsState, AddWeightDecayState):
        cls.__module__ = optimizers.__name__
        setattr(optimizers, cls.__name__, cls)
    utils.optimizers = optimizers
    monkeypatch.setitem(sys.modules, "byol.utils", utils)
    monkeypatch.setitem(sys.modules, "byol.utils.optimizers", optimizers)


def _reference_checkpoint(online, target, step, rng):
    """The dict the reference's Checkpointer pickles, with Haiku's own mappings."""
    immutable = hk.data_structures.to_immutable_dict
    opt_state = (
        AddWeightDecayState(),
        ScaleByLarsState(mu=immutable(jax.tree.map(np.zeros_like, online[0]))),
        optax.EmptyState(),
    )
    state = _ByolExperimentState(
        online_params=immutable(online[0]),
        target_params=immutable(target[0]),
        online_state=immutable(online[1]),
        target_state=immutable(target[1]),
        opt_state=opt_state,
    )
    return {"experiment_state": state, "step": step, "rng": rng}


def _assert_same(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def tiny_pickle(tmp_path, reference_classes):
    """(path, online, target) of a tiny checkpoint in the reference's format."""
    online, target = _tiny_variables(0), _tiny_variables(1)
    rng = np.array([0, 42], np.uint32)
    path = tmp_path / "pretrain.pkl"
    with open(path, "wb") as f:
        pickle.dump(_reference_checkpoint(online, target, 1234, rng), f, protocol=2)
    return path, online, target


# --------------------------------------------------------------- loading
def test_reference_pickle_round_trips_exactly(tiny_pickle):
    path, online, target = tiny_pickle
    # The test writes what the reference writes: Haiku's FlatMapping by name.
    assert b"FlatMapping" in path.read_bytes()
    assert b"_ByolExperimentState" in path.read_bytes()
    ckpt = load_deepmind_checkpoint(path)
    assert set(ckpt) == {
        "online_params",
        "online_state",
        "target_params",
        "target_state",
        "step",
        "rng",
    }
    for name in deepmind_checkpoint.VARIABLES:
        assert type(ckpt[name]) is dict
        assert all(type(leaves) is dict for leaves in ckpt[name].values())
    _assert_same(ckpt["online_params"], online[0])
    _assert_same(ckpt["online_state"], online[1])
    _assert_same(ckpt["target_params"], target[0])
    _assert_same(ckpt["target_state"], target[1])
    assert ckpt["step"] == 1234 and type(ckpt["step"]) is int
    np.testing.assert_array_equal(ckpt["rng"], [0, 42])


@pytest.mark.parametrize("protocol", [0, 1, 3, 4, 5])
def test_every_pickle_protocol_loads(tmp_path, reference_classes, protocol):
    online, target = _tiny_variables(0), _tiny_variables(1)
    path = tmp_path / "pretrain.pkl"
    checkpoint = _reference_checkpoint(online, target, 5, np.ones(2, np.uint32))
    path.write_bytes(pickle.dumps(checkpoint, protocol=protocol))
    ckpt = load_deepmind_checkpoint(path)
    _assert_same(ckpt["online_params"], online[0])
    _assert_same(ckpt["target_state"], target[1])


def test_numpy_1_names_load(tmp_path, reference_classes):
    """Files of 2020 name numpy.core, which numpy 2 calls numpy._core."""
    online = _tiny_variables(0)
    data = pickle.dumps(_reference_checkpoint(online, online, 1, None), protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy._core" not in old and b"numpy.core.multiarray" in old
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    _assert_same(load_deepmind_checkpoint(path)["online_params"], online[0])


def test_dill_namedtuple_form_loads(tmp_path, reference_classes, monkeypatch):
    """dill writes NamedTuple classes as `_create_namedtuple(name, fields, module)`."""
    dill_module = types.ModuleType("dill")
    dill_internal = types.ModuleType("dill._dill")

    def _create_namedtuple(name, fieldnames, modulename, defaults=None):
        raise AssertionError("the loader must not call dill")

    _create_namedtuple.__module__ = "dill._dill"
    _create_namedtuple.__qualname__ = "_create_namedtuple"
    dill_internal._create_namedtuple = _create_namedtuple
    dill_module._dill = dill_internal
    monkeypatch.setitem(sys.modules, "dill", dill_module)
    monkeypatch.setitem(sys.modules, "dill._dill", dill_internal)

    class DillPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, type) and issubclass(obj, tuple) and obj is not tuple:
                if hasattr(obj, "_fields"):
                    return _create_namedtuple, (
                        obj.__qualname__,
                        obj._fields,
                        obj.__module__,
                    )
            return NotImplemented

    online, target = _tiny_variables(0), _tiny_variables(1)
    path = tmp_path / "dill.pkl"
    with open(path, "wb") as f:
        DillPickler(f, protocol=2).dump(
            _reference_checkpoint(online, target, 7, np.zeros(2, np.uint32))
        )
    assert b"_create_namedtuple" in path.read_bytes()
    ckpt = load_deepmind_checkpoint(path)
    _assert_same(ckpt["online_params"], online[0])
    _assert_same(ckpt["target_state"], target[1])
    assert ckpt["step"] == 7


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious file does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _marker_payloads(marker):
    return {
        r"(posix|os|nt)\.system": _Payload(os.system, f"touch {marker}"),
        r"builtins\.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        r"builtins\.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
        r"subprocess\.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        r"numpy\.save": _Payload(np.save, str(marker), np.zeros(1)),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickles_are_refused_before_running(tmp_path, protocol):
    marker = tmp_path / "payload_ran"
    for refused, payload in _marker_payloads(marker).items():
        # Hidden where a parameter belongs, inside an otherwise valid layout.
        params = {"res_net50/~/initial_conv": {"w": payload}}
        path = tmp_path / f"evil_{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump(
                {"experiment_state": {"online_params": params}, "step": 0},
                f,
                protocol=protocol,
            )
        with pytest.raises(UnsafeCheckpointError, match=refused) as error:
            load_deepmind_checkpoint(path)
        message = str(error.value)
        assert str(path) in message and "\n" not in message
        assert isinstance(error.value, pickle.UnpicklingError)
        assert isinstance(error.value, ValueError)  # one line from the CLI
        assert not marker.exists(), f"the {refused} payload ran"
    # The payloads are live: plain pickle runs them.
    pickle.loads(pickle.dumps(_marker_payloads(marker)[r"builtins\.eval"]))
    assert marker.exists()


def test_callables_of_trusted_packages_are_refused_too(tmp_path):
    """Only the listed names are admitted, not whole modules."""
    payloads = {
        r"haiku\._src\.data_structures\.to_haiku_dict": _Payload(
            hk.data_structures.to_haiku_dict, {}
        ),
        r"collections\.namedtuple": _Payload(collections.namedtuple, "T", "a"),
        r"builtins\.getattr": _Payload(getattr, [], "append"),
        # Admitted for protocol 0-1 NamedTuples, and for nothing else.
        r"copyreg\._reconstructor": _Payload(
            copyreg._reconstructor, dict, dict, {"a": 1}
        ),
    }
    for refused, payload in payloads.items():
        path = tmp_path / "evil.pkl"
        path.write_bytes(pickle.dumps({"experiment_state": payload}, protocol=2))
        with pytest.raises(UnsafeCheckpointError, match=refused):
            load_deepmind_checkpoint(path)


def test_codecs_encode_is_limited_to_latin1_bytes(tmp_path):
    path = tmp_path / "evil.pkl"
    payload = _Payload(codecs.encode, "x", "rot13")
    path.write_bytes(pickle.dumps({"experiment_state": payload}, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="_codecs.encode"):
        load_deepmind_checkpoint(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ([1, 2, 3], "expected a dict with 'experiment_state'"),
        ({"params": {}}, r"got a dict with keys \['params'\]"),
        ({"experiment_state": {"online_params": {}}}, "experiment_state has"),
        (
            {
                "experiment_state": dict.fromkeys(deepmind_checkpoint.VARIABLES, {}),
                "step": "ten",
            },
            "step is str",
        ),
        (
            {
                "experiment_state": {
                    **dict.fromkeys(deepmind_checkpoint.VARIABLES, {}),
                    "online_params": {"m": {"w": "not an array"}},
                }
            },
            r"experiment_state\.online_params\['m'\]\['w'\] is str",
        ),
        (
            {
                "experiment_state": {
                    **dict.fromkeys(deepmind_checkpoint.VARIABLES, {}),
                    "target_state": {"m": [np.zeros(2)]},
                }
            },
            r"experiment_state\.target_state\['m'\] is a list",
        ),
    ],
)
def test_wrong_structure_is_a_one_line_error(tmp_path, content, expected):
    path = tmp_path / "wrong.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(CheckpointFormatError, match=expected) as error:
        load_deepmind_checkpoint(path)
    assert "not a DeepMind BYOL checkpoint" in str(error.value)
    assert "\n" not in str(error.value)


def test_not_a_pickle_and_missing_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not the weights you are looking for\n" * 3)
    with pytest.raises(CheckpointFormatError, match="unreadable pickle") as error:
        load_deepmind_checkpoint(path)
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_deepmind_checkpoint(tmp_path / "nowhere.pkl")


# ---------------------------------------------- hostile files: bounded work
def _wrapped(payload):
    """A valid layout with `payload` where the online parameters belong."""
    state = dict.fromkeys(deepmind_checkpoint.VARIABLES, {})
    return {"experiment_state": {**state, "online_params": payload}, "step": 0}


def _shared_reference_bomb():
    """40 levels of [x, x]: ~600 bytes, 2**40 leaves when walked as a tree."""
    x = [np.zeros(1, np.float32)]
    for _ in range(40):
        x = [x, x]
    return pickle.dumps(_wrapped({"m": {"w": x}}), protocol=2)


def _self_reference():
    loop = []
    loop.append(loop)
    return pickle.dumps(_wrapped({"m": loop}), protocol=2)


def _deep_nesting():
    """A list 100,000 levels deep, written opcode by opcode (the pickler recurses)."""
    depth = 100_000
    body = b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST..., then APPENDs
    head = pickle.dumps(_wrapped({"m": "PLACEHOLDER"}), protocol=2)
    name = b"X\x0b\x00\x00\x00PLACEHOLDER"  # BINUNICODE, its length, its text
    assert head.count(name) == 1
    return head.replace(name, body)


def _huge_length():
    """A bytes object claiming 2**62 bytes in a file of a few."""
    return b"\x80\x04\x8e" + (2**62).to_bytes(8, "little") + b"xx."


class _ForgedDtype:
    """A float64 dtype whose fields hide an object (numpy itself refuses to make it)."""

    def __reduce__(self):
        fields = {"a": (np.dtype("O"), 0)}
        return np.dtype, ("f8", False, True), (3, "<", None, ("a",), fields, 8, 1, 63)


class _ForgedArray:
    """Raw bytes read as that dtype's object pointers: a segfault when read."""

    def __reduce__(self):
        state = (1, (2,), _ForgedDtype(), False, b"\x01" * 16)
        return np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state


class _Record(NamedTuple):
    a: int


class _RecordWithState:
    def __reduce__(self):
        return _Record, (1,), {"evil": True}  # BUILD with a state


HOSTILE = {
    "shared references": (_shared_reference_bomb, "more than 1,000,000 nodes"),
    "self reference": (_self_reference, "deeper than 64"),
    "deep nesting": (_deep_nesting, "deeper than 64"),
    "huge length": (_huge_length, "beyond the file's end"),
    "forged dtype": (
        lambda: pickle.dumps(_wrapped({"m": {"w": _ForgedArray()}}), protocol=2),
        "refused an array of dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_pickles_end_in_one_line_quickly(tmp_path, case):
    make, expected = HOSTILE[case]
    path = tmp_path / "hostile.pkl"
    path.write_bytes(make())
    with pytest.raises(ValueError, match=expected) as error:
        load_deepmind_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert os.path.getsize(path) < 300_000


def test_a_state_on_a_record_stand_in_is_refused(tmp_path):
    data = pickle.dumps(_wrapped({"m": {"w": _RecordWithState()}}), protocol=2)
    # Named as an optimiser state of the reference's, which loads as a record.
    ours = f"c{_Record.__module__}\n_Record\n".encode()
    assert data.count(ours) == 1
    path = tmp_path / "hostile.pkl"
    path.write_bytes(data.replace(ours, b"coptax\nScaleState\n"))
    with pytest.raises(UnsafeCheckpointError, match="refused to set a state"):
        load_deepmind_checkpoint(path)


def test_cli_ends_a_hostile_pickle_in_one_line(tmp_path):
    path = tmp_path / "bomb.pkl"
    path.write_bytes(_shared_reference_bomb())
    command = [
        sys.executable,
        "-m",
        "byol.main",
        "--config=configs/eval.py",
        f"--config.evaluation.deepmind_checkpoint={path}",
        f"--workdir={tmp_path / 'eval'}",
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {path} is not a DeepMind BYOL checkpoint: ")


# --------------------------------------------------------------- mapping
def test_reference_resnet50_maps_onto_the_bn_config_network():
    params, state = _reference_shapes()
    weights = to_network(_checkpoint(_zeros_like(params), _zeros_like(state), 5))
    config = byol_configs.get_config("epochs=300,norm=bn")
    assert weights.model.to_dict() == config.model.to_dict()
    assert weights.initialised == () and weights.step == 5
    # The network that configs/byol.py builds takes exactly these variables.
    experiment = byol_experiment.ByolExperiment(config, num_classes=1000)
    init = jax.vmap(
        lambda x: experiment.forward.init(jax.random.key(0), x, is_training=True),
        axis_name=parallel.AXIS,
    )
    ours = jax.eval_shape(init, jax.ShapeDtypeStruct((1, 2, 64, 64, 3), jnp.float32))
    for got, want in zip(
        (weights.online_params, weights.online_state, weights.target_params),
        ours + ours[:1],
        strict=True,
    ):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert (a.shape, a.dtype) == (b.shape[1:], b.dtype)


def test_classifier_of_another_size_is_initialised_afresh():
    params, state = _reference_shapes()
    weights = to_network(
        _checkpoint(_zeros_like(params), _zeros_like(state)), num_classes=10
    )
    assert weights.initialised == (
        "online_params/classifier",
        "target_params/classifier",
    )
    online, target = (
        weights.online_params["classifier"],
        weights.target_params["classifier"],
    )
    assert online["w"].shape == (2048, 10) and online["b"].shape == (10,)
    np.testing.assert_array_equal(online["b"], 0)
    assert np.std(online["w"]) > 0 and not np.array_equal(online["w"], target["w"])
    # Absent altogether: the same, with num_classes required.
    del params["classifier"]
    ckpt = _checkpoint(_zeros_like(params), _zeros_like(state))
    assert to_network(ckpt, num_classes=3).online_params["classifier"]["w"].shape == (
        2048,
        3,
    )
    with pytest.raises(CheckpointFormatError, match="pass num_classes"):
        to_network(ckpt)


def test_mismatches_are_named():
    params, state = _reference_shapes()
    params, state = _zeros_like(params), _zeros_like(state)
    block = "res_net50/~/block_group_0/~/block_0/~"
    del params[f"{block}/conv_0"]
    params["res_net50/~/extra"] = {"w": np.zeros(3, np.float32)}
    last = "res_net50/~/block_group_3/~/block_2/~/conv_2"
    params[last] = {"w": np.zeros((1, 1, 512, 1024), np.float32)}
    with pytest.raises(CheckpointFormatError) as error:
        to_network(_checkpoint(params, state), source="ckpt.pkl")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("online_params of ckpt.pkl do not fit the resnet50")
    assert f"missing 1: {block}/conv_0/w" in message
    assert "unexpected 1: res_net50/~/extra/w" in message
    assert (
        f"mis-shaped 1: {last}/w: float32[1, 1, 512, 1024] in the checkpoint, "
        "float32[1, 1, 512, 2048] in the network"
    ) in message


def test_state_mismatch_names_the_first_few():
    params, state = _reference_shapes()
    params, state = _zeros_like(params), _zeros_like(state)
    state = {m: {k: v for k, v in s.items() if k != "hidden"} for m, s in state.items()}
    with pytest.raises(CheckpointFormatError, match="online_state") as error:
        to_network(_checkpoint(params, state))
    # Every BN layer's two moving averages (110 for ResNet-50 and its heads).
    assert len(state) == 110
    message = str(error.value)
    assert "missing 110: " in message and "/~/mean_ema/hidden" in message
    assert message.endswith("(+107 more)")


def test_unknown_encoder_is_named():
    params, state = _reference_shapes()
    params = {k.replace("res_net50", "res_net51"): v for k, v in params.items()}
    with pytest.raises(CheckpointFormatError, match="'res_net51' unknown"):
        to_network(_checkpoint(_zeros_like(params), _zeros_like(state)))


def test_loaded_weights_run_in_our_network(tiny_pickle):
    path, online, target = tiny_pickle
    weights = to_network(load_deepmind_checkpoint(path), source=str(path))
    assert weights.model.encoder == "tiny" and weights.model.small_image
    assert weights.model.projection_size == 16 and weights.initialised == ()
    _assert_same(weights.online_params, online[0])
    _assert_same(weights.target_state, target[1])
    forward = models.make_forward(
        weights.model, models.network_norms(weights.model), 10
    )
    images = jnp.ones((2, 16, 16, 3))
    out, _ = forward.apply(
        weights.online_params, weights.online_state, None, images, is_training=False
    )
    assert out["embedding"].shape == (2, 64) and out["logits"].shape == (2, 10)
    assert np.all(np.isfinite(out["projection"]))


# ---------------------------------------------------------- linear eval
def test_linear_eval_from_a_deepmind_checkpoint(tmp_path, reference_classes):
    pytest.importorskip("tensorflow")
    from byol import linear_eval  # noqa: PLC0415
    from configs import eval as eval_configs  # noqa: PLC0415
    from tests.fixtures import write_fake_fashion_mnist  # noqa: PLC0415

    data_dir = tmp_path / "data"
    write_fake_fashion_mnist(str(data_dir), num_train=120, num_test=40)
    # Fashion-MNIST is grayscale: a 1-channel stem, and a 10-class classifier.
    online = _tiny_variables(0, channels=1)
    path = tmp_path / "pretrain.pkl"
    with open(path, "wb") as f:
        pickle.dump(_reference_checkpoint(online, online, 99, None), f, protocol=2)

    config = eval_configs.get_config("protocol=probe")
    config.evaluation.deepmind_checkpoint = str(path)
    config.evaluation.probe_max_train_examples = 100
    config.data.update(
        dataset="fashion_mnist",
        image_size=28,
        data_dir=str(data_dir),
        num_threads=1,
        val_size=20,
    )
    encoder = linear_eval.restore_encoder(config)
    assert (encoder.step, encoder.config.model.encoder) == (99, "tiny")
    _assert_same(jax.device_get(encoder.params), online[0])
    results = linear_eval.evaluate(config, str(tmp_path / "eval"))
    assert results["deepmind_checkpoint"] == str(path)
    assert results["checkpoint_step"] == 99 and 0.0 <= results["top1"] <= 1.0

    config.evaluation.pretrain_workdir = str(tmp_path)
    with pytest.raises(ValueError, match="both set"):
        linear_eval.evaluate(config, str(tmp_path / "eval"))
