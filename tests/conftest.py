"""Test configuration: fake CPU devices must be requested before JAX starts."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
)
# Image folders' decode verdicts (byol.data.sources) go here, not to ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="byol_test_cache_")

# In-process runs see orbax's leftovers of a failed restore as byol.main does.
from byol import runtime  # noqa: E402

runtime.quiet_logs()
