"""XLA flags for running on a CPU; set them before JAX starts its backends.

Measured on the demo's step, 2-core CPU (docs/speed.md): no YNNPACK library
fusions (XLA 0.10's default ones ran it 1.6x slower; its filter gradients are
slower than XLA's), and kept optimisation barriers on the conv inputs
(`byol.networks`), 1.12x faster. A flag the installed XLA does not know makes
it abort at start, so each is set only where XLA defines it.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import mmap
import os
import pkgutil

_NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
# A flag of every backend: set only where JAX can run on nothing but the CPU.
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


@functools.cache
def xla_knows(flag: str) -> bool:
    """Whether the installed XLA defines `flag` (its name is in jaxlib's library)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.origin:
        return False
    name = flag.lstrip("-").split("=")[0].encode()
    for library in glob.glob(os.path.join(os.path.dirname(spec.origin), "*.so")):
        with open(library, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as contents:
                if contents.find(name) != -1:
                    return True
    return False


def set_cpu_flags(cpu_devices: int) -> None:
    """Sets XLA's CPU flags (the user's `XLA_FLAGS` win), before JAX starts.

    Args:
        cpu_devices: devices to split the host CPU into.
    """
    flags_now = os.environ.get("XLA_FLAGS", "")
    extra = []
    if "ynn_fusion" not in flags_now and xla_knows(_NO_YNN):
        extra.append(_NO_YNN)
    if "xla_disable_hlo_passes" not in flags_now and _cpu_only():
        extra.append(_KEEP_BARRIERS)
    if "host_platform_device_count" not in flags_now:
        extra.append(f"--xla_force_host_platform_device_count={cpu_devices}")
    os.environ["XLA_FLAGS"] = " ".join([flags_now, *extra]).strip()
