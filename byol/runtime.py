"""What an entry point sets before JAX, TensorFlow and orbax start.

XLA's flags for running on a CPU, measured on the demo's step on a 2-core CPU
(docs/speed.md): no YNNPACK library fusions (XLA 0.10's default ones ran it
1.6x slower; its filter gradients are slower than XLA's), and kept
optimisation barriers on the conv inputs (`byol.networks`), 1.12x faster. A
flag the installed XLA does not know makes it abort at start, so each is set
only where XLA defines it. And the logs (`quiet_logs`). Library modules set
nothing process-wide; the entry points (`byol.main`, the experiments) call
these.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import logging
import mmap
import os
import pkgutil
import signal
import sys
import tempfile

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


# What TensorFlow prints on stderr while it is imported, before its logging is
# set up (so TF_CPP_MIN_LOG_LEVEL cannot hide it).
_TF_IMPORT_NOTICES = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow (where installed) with its import notices dropped.

    Turning oneDNN off would silence them too, but it slows tf.data's batching
    of image crops 20x (6,000 vs 120,000 img/s at 224 px, docs/speed.md).
    Every other line it prints passes.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401, PLC0415
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines(True):
            if not any(notice in line for notice in _TF_IMPORT_NOTICES):
                sys.stderr.write(line)
    sys.stderr.flush()


def quiet_logs() -> None:
    """What the entry points set up before TensorFlow and orbax run.

    TensorFlow's C++ notices go: its INFO lines, and the ones it prints while
    it is imported (`_import_tensorflow_quietly`). And the noise a failed
    orbax restore leaves at exit: when one array of a corrupt checkpoint
    fails to read, orbax abandons the other reads; their callbacks reach a
    closed asyncio loop ("Event loop is closed", through
    `sys.unraisablehook`) and asyncio logs "exception was never retrieved".
    The corruption is already reported in one line. A Ctrl-C that lands in a
    finaliser or a gc callback (JAX's, say) is not printed either:
    `catch_interrupts` remembers it. Every other unraisable error or asyncio
    record passes.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _import_tensorflow_quietly()
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        if isinstance(error, KeyboardInterrupt) and INTERRUPTS:
            return  # a Ctrl-C that hit a finaliser or gc callback: remembered
        previous(unraisable)

    def keep(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        abandoned = "exception was never retrieved" in record.getMessage()
        return not (abandoned and (error is None or isinstance(error, ValueError)))

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(keep)


INTERRUPTS: list[int] = []  # Ctrl-C presses since `catch_interrupts`
# Where a KeyboardInterrupt raised mid-call can leave a file half written or
# a writer thread's lock or queue in a state the exit then waits on: a
# checkpoint (orbax, tensorstore) or TensorBoard's writer.
_HELD_IN = ("orbax", "tensorstore", "tensorboardX")
_BETWEEN_STEPS: list[bool] = []  # set inside `interrupts_at_step_ends`


def catch_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt, remembered in `INTERRUPTS`.

    Raised inside a finaliser or a callback it would be printed as "Exception
    ignored" and lost (the run ending with status 0); `INTERRUPTS` keeps it.
    Pressed during the training loop, or while a checkpoint or TensorBoard
    file is being written, it is held until `raise_if_interrupted` at the end
    of the step; a second press inside the loop stops at once.
    """

    def handler(signum, frame):
        INTERRUPTS.append(signum)
        if _BETWEEN_STEPS and len(INTERRUPTS) == 1:
            os.write(1, b"\nCtrl-C: stopping after this step (again to stop now)\n")
            return
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith(_HELD_IN):
                return  # held: a file is being written
            frame = frame.f_back
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def interrupts_at_step_ends():
    """Inside, a first Ctrl-C waits for `raise_if_interrupted`.

    The loop's calls (the input stream's threads, the metrics writer, the
    checkpointer) are never cut mid-way, so the run ends as after any step.
    """
    _BETWEEN_STEPS.append(True)
    try:
        yield
    finally:
        _BETWEEN_STEPS.pop()
    raise_if_interrupted()  # pressed after the last step's check


def raise_if_interrupted() -> None:
    """Raises the KeyboardInterrupt of a Ctrl-C held until the end of a step."""
    if INTERRUPTS:
        raise KeyboardInterrupt
