"""mlic: a replication of Wang & Zhang (2024), ResNeSt + dual-branch Transformer for
multi-label image classification."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Before anything imports torch: libgomp reads its environment once, when torch loads it. Its
# default lets a thread that waits at a barrier spin ~3 ms (300,000 rounds), which collapses
# throughput when another process takes a core; not spinning at all (OMP_WAIT_POLICY=PASSIVE)
# costs a quarter of the speed on idle cores. 1,000 rounds kept both (docs/performance.md).
# A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; children (papermill kernels,
# subprocesses) inherit the setting. `mlic.cpu` holds the rest of the CPU policy.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__all__ = ["build_model", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `mlic --help` and the data commands do not pay for importing torch/timm.
    if name == "build_model":
        from mlic.models.build import build_model

        return build_model
    raise AttributeError(name)
