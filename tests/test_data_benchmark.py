"""Smoke test of benchmarks/input_pipeline.py --quick (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "input_pipeline.py"


def test_input_pipeline_benchmark_quick_run_prints_a_table(capsys):
    spec = importlib.util.spec_from_file_location("input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--image-size", "64", "--workers", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[-1] == "images/s"
    rates = {line[:56].strip(): float(line.split()[-1]) for line in lines[2:]}
    assert len(rates) == 5 and all(math.isfinite(r) and r > 0 for r in rates.values())
    # Both the float pipeline and the engine's uint8 one are measured, per process and loader.
    assert sum("uint8 (engine)" in name for name in rates) == 2


def test_loader_measurements_give_every_worker_several_batches():
    spec = importlib.util.spec_from_file_location("input_pipeline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for workers in (1, 2, 8, 15):
        repeats = module.loader_repeats(1, workers, batch_size=32, num_images=256)
        assert repeats * (256 // 32) >= 6 * workers  # a steady rate, not one burst
    assert module.loader_repeats(3, 1, batch_size=32, num_images=256) == 3  # never fewer
