#!/usr/bin/env bash
# The one prepared GPU check: the compiled training step (batch 64 and 128, with and
# without activation checkpointing), the 24 GB / 8 GB presets under a capped allocator, a profile
# of one compiled step, compiled evaluation at 448 and 576 px, and a `mlic train` smoke run on
# the engine's CUDA defaults; every table lands in $OUT as it is measured.
#
# Run it on a machine with one CUDA GPU, from the repository root:
#
#   1. Here, once (wheels for the device's Python 3.12, 3.2 MB; pycocotools is a C extension;
#      .gitignore ignores .whl/):
#        .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#          --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#          --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11 defusedxml==0.7.1 timm==1.0.31
#   2. copy the working tree (with .whl/) to the GPU machine and run `OUT=DIR bash
#      benchmarks/gpu_check.sh` there. It writes 8 files to $OUT: train_memory.{md,csv}, train_step.{md,csv},
#      profile.md, evaluate_speed.{md,csv} and gpu_check.log (everything printed, with the EMA
#      timings and the smoke run's history.csv and metrics.json).
#
# Time: under 8 minutes on one H100/H200, compilation included, by construction: each step has
# its own `timeout` (train_memory 60 + train_compiled 220 + evaluation 80 + EMA 20 + smoke 75 s,
# + ~20 s of set-up = 475 s), and the compiled table starts no row after 100 s. The order is the
# priority: the reference loop (batch 64, eager) and the 24 GB and 8 GB presets eager under an
# allocator cap (eager: the upper bound of their memory - compiled peaked lower, 28.1 vs 32.5 GiB
# at batch 64 on the H200 - and the path a compile failure falls back to); the compiled step at
# batch 64 with its profile, then with checkpointing, at batch 128, and at batch 128 with
# checkpointing, as time allows: on the 2026-11-27 H200 run the batch-64 step was still
# compiling ~140 s after it started, so expect the later compiled rows to be skipped (with more
# device time, FULL=1 doubles every limit); compiled evaluation (448 px first); the EMA update
# alone; the engine's smoke run. The input pipeline is not re-measured (844 images/s with 8
# workers on the 2026-11-27 run).
#
# What it assumes of the device image 'cuda' (/work/.library/device/KINDS.md): `python3` with
# torch (CUDA), torchvision, numpy, pyyaml, pillow, tqdm and timm; no network. It installs only the
# carried wheels, into /tmp/site. Without them it still runs the benchmarks (timm must then be
# recent enough for `AsymmetricLossMultiLabel(reduction=...)`, checked first); the `mlic train`
# smoke, which reads the embedded dataset's COCO annotations, then needs pycocotools and is
# skipped without it.
#
# Without OUT set, it writes to results/gpu_check. `DRY_RUN=1 PYTHON=.venv/bin/python
# bash benchmarks/gpu_check.sh` checks the script itself on a CPU in about a minute (tiny model,
# eager, no GPU); tests/test_benchmarks.py does so on every CI run. SCRATCH (default /tmp) holds
# the smoke run; EMBEDDED_ROOT (default $SCRATCH/mlic-embedded) the dataset it trains on.

set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu_check}"
SCRATCH="${SCRATCH:-/tmp}"  # the smoke run's folder and its generated dataset
EMBEDDED_ROOT="${EMBEDDED_ROOT:-$SCRATCH/mlic-embedded}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS
failures=()
scale=1
[ "${FULL:-0}" = 1 ] && scale=2

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record a failure, go on
    local name=$1 limit=$(($2 * scale))
    shift 2
    echo
    echo "=== $name (limit ${limit} s, at $((SECONDS - started)) s): $*"
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    [ "$rc" -eq 0 ] || failures+=("$name (exit $rc)")
}

echo "=== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
"$PY" - <<'EOF'
import sys, torch, torchvision, timm
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, timm {timm.__version__}, cuda {torch.version.cuda}, "
      f"cudnn {torch.backends.cudnn.version()}, {gpu}")
EOF
if ! "$PY" -c "from timm.loss import AsymmetricLossMultiLabel as A; A(reduction='none')"; then
    echo "gpu_check: this timm lacks AsymmetricLossMultiLabel(reduction=...); carry .whl with timm==1.0.31 (see the header)"
    exit 2
fi
smoke=1
if ! "$PY" -c "import pycocotools.coco" 2>/dev/null; then  # the benchmarks do not need it
    smoke=0
    echo "gpu_check: pycocotools missing: the benchmarks run, the mlic train smoke is skipped"
fi

if [ "${DRY_RUN:-0}" = 1 ]; then  # check this script's plumbing on a CPU: tiny model, eager
    tiny=(--preset embedded --set model.backbone=resnest14d model.d_model=32
        model.dim_feedforward=64 'model.backbone_kwargs={channels: [16, 32, 64, 128]}'
        --batch-size 8 --device cpu)
    train_args=("${tiny[@]}" --image-size 32 --steps 2 --warmup 1 --profile-steps 2)
    eval_args=("${tiny[@]}" --image-sizes 32 64 --steps 2 --warmup 1 --compile none)
    compiled=none big=16 budget=0
    ema_args=(--preset embedded --device cpu --updates 3)
    smoke_set=(train.device=cpu data.max_train_images=64 data.max_val_images=32)
else
    train_args=(--steps 12 --warmup 3 --profile-steps 6)
    eval_args=(--image-sizes 448 576 --steps 12 --warmup 3 --compile default)
    compiled=default big=128 budget=$((100 * scale))
    ema_args=(--preset paper-coco-448 --updates 30)
    smoke_set=(train.device=cuda data.num_workers=8 data.max_train_images=1280
        data.max_val_images=512)
fi

# 1. Training step at 448 px (paper-coco-448: ResNeSt-101e + dual head), in two processes so that
#    the long compilation cannot cost the cheap rows. First, eager: the reference loop and the
#    24 GB and 8 GB presets (batch 64, micro-batches and checkpointing from the presets
#    themselves; card=G caps PyTorch's allocator at G - 1 GiB, what a G GiB card leaves after the
#    CUDA context and libraries) -> train_memory.{md,csv}.
step train_memory 60 "$PY" benchmarks/train_step.py "${train_args[@]}" --out "$OUT" \
    --stem train_memory \
    --row reference \
    --row "preset=paper-coco-448-24gb,card=24,compile=none" \
    --row "preset=paper-coco-448-8gb,card=8,compile=none"

#    Then compiled (the CUDA default), batch 64 first with its profile (profile.md), then the
#    rest while rows still start within the budget -> train_step.{md,csv}; the ratio column uses
#    the reference loop timed just before.
step train_compiled 220 "$PY" benchmarks/train_step.py "${train_args[@]}" --out "$OUT" \
    --time-budget "$budget" --profile --reference-csv "$OUT/train_memory.csv" \
    --row "compile=$compiled" \
    --row "compile=$compiled,ckpt=all" \
    --row "compile=$compiled,batch=$big" \
    --row "compile=$compiled,batch=$big,ckpt=all"

# 2. Evaluation compiled (`mlic evaluate`'s and the epoch-end evaluation's default on CUDA) at
#    the paper's two sizes, batch 128, bf16; the first batch's seconds are the compile time.
step evaluate_speed 80 "$PY" benchmarks/evaluate_speed.py "${eval_args[@]}" --out "$OUT"

# 3. The EMA update alone (Query2Label's loop, timm's ModelEmaV3, the engine's ForeachEma):
#    ms per update of the paper model; the table is in gpu_check.log.
step ema_update 20 "$PY" benchmarks/ema_update.py "${ema_args[@]}"

# 4. The engine end to end on its CUDA defaults (train.compile=auto: compiled), with 2
#    micro-batches and activation checkpointing: metrics.json records compiled (or the
#    fall-back reason), the micro-batch and the effective batch.
if [ "$smoke" -eq 1 ]; then
    rm -rf "$SCRATCH/mlic-smoke"
    step train_smoke 75 "$PY" -m mlic train --preset embedded --set train.epochs=1 \
        data.embedded_root="$EMBEDDED_ROOT" train.accumulation_steps=2 \
        train.activation_checkpointing=all "${smoke_set[@]}" --run-dir "$SCRATCH/mlic-smoke"
    # Into the log (8 files in all: the tables take the other seven).
    echo "=== train_smoke: history.csv and metrics.json"
    cat "$SCRATCH/mlic-smoke/history.csv" "$SCRATCH/mlic-smoke/metrics.json" 2>/dev/null
else
    echo "=== train_smoke: skipped (no pycocotools; carry .whl, see the header)"
    failures+=("train_smoke (skipped)")
fi

echo
for table in "$OUT/train_memory.md" "$OUT/train_step.md" "$OUT/evaluate_speed.md"; do
    [ -f "$table" ] && cat "$table" && echo
done
echo "=== gpu_check: $((SECONDS - started)) s"
if [ "${#failures[@]}" -gt 0 ]; then
    echo "=== gpu_check: not clean: ${failures[*]}"
    exit 1
fi
echo "=== gpu_check: all steps passed"
