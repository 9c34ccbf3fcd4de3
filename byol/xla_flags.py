"""XLA flags for running on a CPU; set them before JAX starts its backends."""

from __future__ import annotations

import os
import pkgutil

# Measured on the demo's step, 2-core CPU (README, Speed). No YNNPACK library
# fusions: with XLA 0.10's default ones the step ran 1.6x slower, with YNN
# convolutions only 1.15x slower (its filter gradients are slower than XLA's).
_NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# Keeps `jax.lax.optimization_barrier`s, so a conv's filter gradient
# transposes its stored input (`byol.networks._stored`): 1.12x faster. A
# flag of every backend, so set only where JAX can run on nothing but the CPU:
# its effect on GPU/TPU programs is not measured.
_KEEP_BARRIERS = "--xla_disable_hlo_passes=cse_barrier_expander"
_ACCELERATOR_PACKAGES = ("libtpu", "jax_cuda", "jax_rocm")


def _cpu_only() -> bool:
    """Whether JAX will run on the CPU alone (no accelerator plugin, or asked)."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    return not any(
        module.name.startswith(_ACCELERATOR_PACKAGES)
        for module in pkgutil.iter_modules()
    )


def set_cpu_flags(cpu_devices: int) -> None:
    """Sets XLA's CPU flags; must run before JAX initialises its backends.

    Flags already in `XLA_FLAGS` win. The CPU flags are ignored by GPU/TPU
    backends; the one that keeps optimisation barriers is added only where
    no GPU/TPU plugin is installed (or `JAX_PLATFORMS=cpu`).

    Args:
        cpu_devices: devices to split the host CPU into.

    Example:
        >>> set_cpu_flags(2)  # then the first `jax.devices()`  # doctest: +SKIP
    """
    flags_now = os.environ.get("XLA_FLAGS", "")
    extra = [_NO_YNN] if "ynn_fusion" not in flags_now else []
    if "xla_disable_hlo_passes" not in flags_now and _cpu_only():
        extra.append(_KEEP_BARRIERS)
    if "host_platform_device_count" not in flags_now:
        extra.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    os.environ["XLA_FLAGS"] = " ".join([flags_now, *extra]).strip()
