"""Training images/s on the CPU for several thread policies, idle and beside a CPU load.

Each measurement is a fresh process (libgomp reads its environment only when torch loads) that
builds a preset's model, trains `--warmup` steps on one fixed random batch, then times `--steps`
full training steps (forward, ASL, backward, AdamW, EMA: `mlic.engine.training_step`).
"Loaded" starts `--load` busy Python loops (one core each) for the measurement and stops them
after. Policies and conditions are interleaved and repeated, so a machine whose own load drifts
(a shared machine is never idle) affects every policy alike; the table gives the median and the
range over the repeats.

    python benchmarks/cpu_threads.py                          # embedded preset, 3 repeats
    python benchmarks/cpu_threads.py --repeats 5 --steps 20 --set model.head=gap
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (torch threads, environment); "default" is libgomp's own spin (GOMP_SPINCOUNT 300000,
# what an unset OMP_WAIT_POLICY gives), spelled out because importing mlic sets its own default.
POLICIES: dict[str, tuple[int, dict[str, str]]] = {
    "1 thread": (1, {}),
    "2 threads, libgomp default wait (spin ~3 ms)": (2, {"GOMP_SPINCOUNT": "300000"}),
    "2 threads, GOMP_SPINCOUNT=1000 (mlic default)": (2, {"GOMP_SPINCOUNT": "1000"}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE (no spin)": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}

CHILD = """
import sys, time, torch
from mlic.config import load_config
from mlic.engine import training_step
from mlic.optim import build_ema, build_optimizer
from mlic.runtime import make_runtime
from mlic.losses import AsymmetricLoss
from mlic.models import build_model_from_config
preset, threads, warmup, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(preset, ["train.device=cpu", f"train.num_threads={threads}", *sys.argv[5:]])
rt = make_runtime(cfg)
torch.manual_seed(0)
model = build_model_from_config(cfg.model, num_classes=24).train()
optimizer, ema = build_optimizer(model, cfg, rt), build_ema(model, cfg)
loss_fn = AsymmetricLoss(gamma_neg=cfg.loss.gamma_neg, gamma_pos=cfg.loss.gamma_pos, clip=cfg.loss.clip)
b, s = cfg.train.batch_size, cfg.data.image_size
x, y = torch.rand(b, 3, s, s), (torch.rand(b, 24) < 0.1).float()
for i in range(warmup + steps):
    if i == warmup:
        start = time.perf_counter()
    training_step(model, loss_fn, optimizer, x, y, rt)
    ema.update(model)
print(b * steps / (time.perf_counter() - start))
"""


def measure(policy: str, args: argparse.Namespace) -> float:
    threads, env = POLICIES[policy]
    root = Path(__file__).resolve().parents[1]
    full_env = {**os.environ, **env, "PYTHONPATH": str(root)}
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        full_env.pop(name, None)
    full_env.update(env)
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        args.preset,
        str(threads),
        str(args.warmup),
        str(args.steps),
    ]
    out = subprocess.run(cmd + args.set, env=full_env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="embedded")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--load", type=int, default=1, help="busy loops in the loaded condition")
    args = p.parse_args()
    rates: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for condition in ("idle", "loaded"):
            loads = []
            if condition == "loaded":
                loads = [
                    subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(args.load)
                ]
            try:
                for policy in POLICIES:
                    rate = measure(policy, args)
                    rates.setdefault((policy, condition), []).append(rate)
                    stamp = time.strftime("%H:%M:%S")
                    print(
                        f"{stamp} repeat {repeat + 1} {condition:6s} {policy}: {rate:.1f}",
                        flush=True,
                    )
            finally:
                for proc in loads:
                    proc.kill()
                    proc.wait()
    print(f"\n| policy | idle images/s | with {args.load} busy loop(s) | loaded / idle |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        idle, loaded = rates[(policy, "idle")], rates[(policy, "loaded")]
        mi, ml = statistics.median(idle), statistics.median(loaded)
        print(
            f"| {policy} | {mi:.1f} ({min(idle):.0f}–{max(idle):.0f}) "
            f"| {ml:.1f} ({min(loaded):.0f}–{max(loaded):.0f}) | {ml / mi:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
