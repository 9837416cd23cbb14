"""CPU runtime settings for training and evaluation on the CPU: denormal floats flushed to
zero, and how many threads torch uses (`train.num_threads`).

Why (measured on the 2-core machine; docs/performance.md):
- Denormals: values below float32's smallest normal number (1.2e-38) take a slow microcode
  path on x86 CPUs. Flushing them to zero (the FTZ/DAZ bits, `torch.set_flush_denormal`)
  changes only such values, so it costs nothing and removes the risk of a run slowing down as
  its values shrink in late training.
- Threads: `auto` is one per core this process may run on, or torch's own choice when
  OMP_NUM_THREADS is set (torchrun sets it for each rank). It does not depend on the machine's
  momentary load, so a rerun on the same machine uses the same threads and gives the same bits.
  What keeps two threads from collapsing on a busy machine is OpenMP's spin count at barriers
  (GOMP_SPINCOUNT), set in `mlic/__init__.py` before torch is loaded (libgomp reads it only
  then).
"""

from __future__ import annotations

import os


def auto_threads() -> int:
    """The thread count `train.num_threads: auto` gives (see the module docstring)."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_cpu(num_threads: int | str) -> int:
    """Flush denormals and set torch's thread count; returns the number of threads used."""
    import torch

    torch.set_flush_denormal(True)
    threads = auto_threads() if num_threads == "auto" else int(num_threads)
    torch.set_num_threads(threads)
    return threads
