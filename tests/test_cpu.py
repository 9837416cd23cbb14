"""CPU runtime settings: denormals flushed and the thread count applied for runs on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mlic.config import load_config
from mlic.cpu import auto_threads, configure_cpu
from mlic.errors import ConfigError
from mlic.runtime import make_runtime


def _denormal_survives() -> bool:
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal
    return bool((tiny * 1.0).item() != 0.0)


def test_make_runtime_on_the_cpu_flushes_denormals_and_sets_threads():
    before = torch.get_num_threads()
    try:
        torch.set_flush_denormal(False)
        assert _denormal_survives()  # the check below can fail
        make_runtime(load_config("embedded", ["train.device=cpu", "train.num_threads=1"]))
        assert not _denormal_survives()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def test_auto_threads_follow_omp_num_threads_or_the_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it per rank
        assert configure_cpu("auto") == 1 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        assert auto_threads() == (cores or os.cpu_count())
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def test_the_openmp_spin_count_is_set_before_torch_loads():
    # A fresh interpreter: importing mlic sets the default; a user's own setting is kept.
    code = "import os, mlic, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spin(**extra: str) -> str:
        run = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert spin() == "1000"
    assert spin(GOMP_SPINCOUNT="5") == "5"
    assert spin(OMP_WAIT_POLICY="ACTIVE") == "None"  # the user chose a policy: no spin count


def test_num_threads_must_be_positive_or_auto():
    with pytest.raises(ConfigError, match="train.num_threads"):
        load_config("embedded", ["train.num_threads=0"])
    with pytest.raises(ConfigError, match="train.num_threads"):
        load_config("embedded", ["train.num_threads=many"])
