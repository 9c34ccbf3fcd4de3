"""The README's quickstart runs as printed and trains."""

import os
import re

import jax
import numpy as np

from tests.fixtures import REPO


def _quickstart() -> str:
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Quickstart") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_quickstart_trains_and_moves_the_target():
    namespace = {}
    exec(compile(_quickstart(), "README.md", "exec"), namespace)  # noqa: S102
    assert np.isfinite(float(namespace["loss"]))
    online, target = namespace["online"], namespace["target"]
    # The EMA keeps the target behind the online network (tau < 1).
    moved = jax.tree.map(lambda o, t: float(np.abs(o - t).max()), online, target)
    assert max(jax.tree.leaves(moved)) > 0
