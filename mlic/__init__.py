"""mlic: a replication of Wang & Zhang (2024), ResNeSt + dual-branch Transformer for
multi-label image classification."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Before anything imports torch: libgomp reads OMP_WAIT_POLICY once, when torch loads it, and
# its default (spinning at every barrier) collapses throughput when another process takes a
# core (measured in README "Performance"). The user's own setting wins; children (papermill
# kernels, subprocesses) inherit it. `mlic.cpu` holds the rest of the CPU policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["build_model", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `mlic --help` and the data commands do not pay for importing torch/timm.
    if name == "build_model":
        from mlic.models.build import build_model

        return build_model
    raise AttributeError(name)
