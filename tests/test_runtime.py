"""`byol.runtime`: XLA's CPU flags, the user's winning; TensorFlow's start."""

import os
import signal
import subprocess
import sys

import pytest

from byol import runtime
from tests.fixtures import REPO

NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
KEEP = "--xla_disable_hlo_passes=cse_barrier_expander"
TWO = "--xla_force_host_platform_device_count=2"


@pytest.mark.parametrize(
    "before, expected",
    [
        (None, f"{NO_YNN} {KEEP} {TWO}"),
        (
            "--xla_cpu_enable_fast_math=false",
            f"--xla_cpu_enable_fast_math=false {NO_YNN} {KEEP} {TWO}",
        ),
        (
            "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
            "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT "
            f"{KEEP} {TWO}",
        ),
        (
            "--xla_disable_hlo_passes=cse",
            f"--xla_disable_hlo_passes=cse {NO_YNN} {TWO}",
        ),
        (
            "--xla_force_host_platform_device_count=4",
            f"--xla_force_host_platform_device_count=4 {NO_YNN} {KEEP}",
        ),
    ],
)
def test_set_cpu_flags_adds_what_the_user_did_not_set(monkeypatch, before, expected):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    if before is None:
        monkeypatch.delenv("XLA_FLAGS", raising=False)
    else:
        monkeypatch.setenv("XLA_FLAGS", before)
    runtime.set_cpu_flags(2)
    assert os.environ["XLA_FLAGS"] == expected


def test_barriers_are_kept_only_where_no_accelerator_can_run(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(runtime, "_ACCELERATOR_PACKAGES", ("pytest",))
    runtime.set_cpu_flags(1)
    assert KEEP not in os.environ["XLA_FLAGS"]


_COMPILE_A_BLOCK = """
from byol.runtime import set_cpu_flags
set_cpu_flags(1)
import haiku as hk, jax, jax.numpy as jnp
from byol import networks
from byol.normalization import NormConfig
net = hk.transform_with_state(lambda x: networks.BlockV1(
    8, 1, False, False, NormConfig(kind="gn", num_groups=2))(x, True).sum())
x = jnp.ones((2, 8, 8, 8))
params, state = net.init(jax.random.key(0), x)
grad = jax.grad(lambda p: net.apply(p, state, None, x)[0])
print(jax.jit(grad).lower(params).compile().as_text().count("opt-barrier"))
"""


def test_a_flag_the_installed_xla_lacks_is_not_set(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert runtime.xla_knows(NO_YNN)  # jaxlib 0.10+ defines it
    assert not runtime.xla_knows("--xla_no_such_flag_in_any_version=1")
    monkeypatch.setattr(runtime, "xla_knows", lambda flag: False)
    runtime.set_cpu_flags(2)
    assert os.environ["XLA_FLAGS"] == f"{KEEP} {TWO}"


def _barriers_traced(monkeypatch, backend):
    import haiku as hk  # noqa: PLC0415
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from byol import networks  # noqa: PLC0415
    from byol.normalization import NormConfig  # noqa: PLC0415

    monkeypatch.setattr(networks.jax, "default_backend", lambda: backend)
    net = hk.transform_with_state(
        lambda x: networks.ResNet18(norm=NormConfig("gn", num_groups=2))(x, True)
    )
    x = jnp.ones((1, 32, 32, 3))
    params, state = jax.eval_shape(net.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p, s: net.apply(p, s, None, x)[0])(params, state)
    return str(jaxpr).count("optimization_barrier")


def test_conv_input_barriers_only_in_cpu_programs(monkeypatch):
    # Every conv input of ResNet-18 is stored on CPU: the stem's, and 2 per
    # block (its input, which a shortcut conv shares, and the inner one).
    assert _barriers_traced(monkeypatch, "cpu") == 1 + 2 * 8
    assert _barriers_traced(monkeypatch, "gpu") == 0
    assert _barriers_traced(monkeypatch, "tpu") == 0


def test_conv_inputs_stay_stored_through_compilation():
    """The block's 2 conv inputs keep their barriers in XLA:CPU's program."""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_A_BLOCK],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout.split()[-1]) >= 2, out.stderr[-2000:]


_IMPORT_TENSORFLOW = """
import os, sys
from byol import runtime
runtime.quiet_logs()
import tensorflow as tf
tf.constant(1) + 1
print("oneDNN off:", os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0", file=sys.stderr)
"""


def test_tensorflow_starts_silent_with_onednn_on():
    """oneDNN off would silence it too, but batches crops 20x slower."""
    pytest.importorskip("tensorflow")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")
    }
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_TENSORFLOW],
        cwd=REPO,
        env=dict(env, PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.splitlines() == ["oneDNN off: False"], result.stderr


def test_a_ctrl_c_in_a_gc_callback_is_remembered_not_printed(monkeypatch):
    """It landed in JAX's gc callback once: "Exception ignored in ..."."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    monkeypatch.setattr(runtime, "INTERRUPTS", [])
    runtime.quiet_logs()

    class Unraisable:
        exc_value = KeyboardInterrupt()

    sys.unraisablehook(Unraisable)
    assert seen == [Unraisable]  # no Ctrl-C pressed: it is printed
    runtime.INTERRUPTS.append(2)
    sys.unraisablehook(Unraisable)
    assert seen == [Unraisable]  # the handler remembered it: not printed


@pytest.fixture
def ctrl_c(monkeypatch):
    """Presses Ctrl-C in this process under `runtime.catch_interrupts`."""
    monkeypatch.setattr(runtime, "INTERRUPTS", [])
    previous = signal.getsignal(signal.SIGINT)
    runtime.catch_interrupts()

    def press():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs between bytecodes
            pass

    yield press
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_in_the_loop_waits_for_the_step_end(ctrl_c, capfd):
    """One cut mid-step once left the exit hung (CI); the step now ends."""
    finished = []
    with pytest.raises(KeyboardInterrupt), runtime.interrupts_at_step_ends():
        ctrl_c()
        finished.append("step")  # not cut: the step goes on
        runtime.raise_if_interrupted()  # its end
        finished.append("next step")
    assert finished == ["step"]
    assert "Ctrl-C: stopping after this step" in capfd.readouterr().out


def test_a_second_ctrl_c_in_the_loop_stops_at_once(ctrl_c):
    finished = []
    with pytest.raises(KeyboardInterrupt), runtime.interrupts_at_step_ends():
        ctrl_c()
        ctrl_c()
        finished.append("step")
    assert finished == []


def test_a_ctrl_c_after_the_last_check_stops_at_the_loop_end(ctrl_c):
    with pytest.raises(KeyboardInterrupt), runtime.interrupts_at_step_ends():
        ctrl_c()
    assert runtime.INTERRUPTS == [signal.SIGINT]


def test_a_ctrl_c_while_a_tensorboard_file_is_written_is_held(ctrl_c):
    writer = {"__name__": "tensorboardX.event_file_writer", "press": ctrl_c}
    exec("press(); written = True", writer)  # a frame of that module
    assert writer["written"]
    with pytest.raises(KeyboardInterrupt):
        runtime.raise_if_interrupted()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c()  # outside the loop and any writer: at once
