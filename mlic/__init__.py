"""mlic: a replication of Wang & Zhang (2024), ResNeSt + dual-branch Transformer for
multi-label image classification."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["build_model", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `mlic --help` and the data commands do not pay for importing torch/timm.
    if name == "build_model":
        from mlic.models.build import build_model

        return build_model
    raise AttributeError(name)
