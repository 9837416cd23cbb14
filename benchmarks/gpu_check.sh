#!/usr/bin/env bash
# The one prepared GPU check of issue 6: the training-step matrix at paper size, evaluation speed
# at 448 and 576 px, the input pipeline on the host's cores, and a compiled `mlic train` smoke
# run; every table lands in $OUT.
#
# Run it from a session that is lent a device machine (device tool), from the repository root:
#
#   1. Here, once (wheels for the device's Python 3.12, 3.2 MB; pycocotools is a C extension;
#      .gitignore ignores .whl/):
#        .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#          --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#          --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.11 defusedxml==0.7.1 timm==1.0.31
#   2. run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#      then give_back. The reply's files are train_step.{md,csv}, evaluate_speed.{md,csv},
#      smoke_history.csv, smoke_metrics.json and gpu_check.log (everything printed).
#
# Expected to take 6-7 minutes on one H100 (an estimate: it has not run there yet) and at most
# ~9.5: each step has its own `timeout` (270 + 100 + 75 + 130 s), the matrix skips what would
# start after its time budget, and its table is rewritten after every row. The input pipeline's
# table is printed into gpu_check.log (the device tool brings back at most 8 files).
#
# What it assumes of the device image 'cuda' (/work/.library/device/KINDS.md): `python3` with
# torch (CUDA), torchvision, numpy, pyyaml, pillow, tqdm and timm; no network. It installs only the
# carried wheels, into /tmp/site. Without them it still runs the benchmarks (timm must then be
# recent enough for `AsymmetricLossMultiLabel(reduction=...)`, checked first; the engine imports
# the annotation readers only when it reads a split); the `mlic train` smoke, which reads the
# embedded dataset's COCO annotations, then needs pycocotools and is skipped without it.
#
# Outside the device tool, OUT defaults to results/gpu_check (e.g. `bash benchmarks/gpu_check.sh`
# on any CUDA machine with the project's environment). `DRY_RUN=1 PYTHON=.venv/bin/python bash
# benchmarks/gpu_check.sh` checks the script itself on a CPU in under a minute (tiny model, no
# GPU); tests/test_benchmarks.py does so on every CI run. SCRATCH (default /tmp) holds the smoke
# run; EMBEDDED_ROOT (default $SCRATCH/mlic-embedded) the dataset it trains on.

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

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record a failure, go on
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit} s, at $((SECONDS - started)) s): $*"
    timeout --kill-after=15 "$limit" "$@"
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

if [ "${DRY_RUN:-0}" = 1 ]; then  # check this script's plumbing on a CPU: tiny model, few steps
    tiny=(--preset embedded --set model.backbone=resnet10t model.d_model=32
        model.dim_feedforward=64 --batch-size 4 --steps 2 --warmup 1 --device cpu)
    train_args=("${tiny[@]}" --image-size 32)
    eval_args=("${tiny[@]}" --image-sizes 32 64)
    smoke_set=(train.device=cpu data.max_train_images=64 data.max_val_images=32)
    pipeline_args=(--quick --image-size 64 --workers 1)
else
    train_args=(--steps 30 --warmup 10 --time-budget 210)
    eval_args=(--image-sizes 448 576)
    smoke_set=(train.device=cuda train.compile=true data.num_workers=8)
    pipeline_args=(--workers 1 8 15)  # 256 images, 448 px; a core left for the trainer
fi

# 1. Training step at 448 px, batch 64: reference, bf16, + channels_last, + fused AdamW,
#    transformer head, batch 32 and 128, + torch.compile (last: the slowest to build).
step train_step 270 "$PY" benchmarks/train_step.py --matrix "${train_args[@]}" --out "$OUT"

# 2. Evaluation (`mlic evaluate`'s loop body) at the paper's two sizes, batch 128, bf16.
step evaluate_speed 100 "$PY" benchmarks/evaluate_speed.py "${eval_args[@]}" --out "$OUT"

# 3. The input pipeline on this host's cores (decode + RandAugment at 448 px, float32 and the
#    engine's uint8 batches): can 16 workers feed 500 images/s? Its table is in gpu_check.log.
step input_pipeline 75 "$PY" benchmarks/input_pipeline.py "${pipeline_args[@]}"

# 4. The engine end to end on the GPU with torch.compile (embedded dataset, generated in /tmp).
if [ "$smoke" -eq 1 ]; then
    rm -rf "$SCRATCH/mlic-smoke"
    step train_smoke 130 "$PY" -m mlic train --preset embedded --set train.epochs=1 \
        data.embedded_root="$EMBEDDED_ROOT" "${smoke_set[@]}" --run-dir "$SCRATCH/mlic-smoke"
    cp "$SCRATCH/mlic-smoke/history.csv" "$OUT/smoke_history.csv" 2>/dev/null || true
    cp "$SCRATCH/mlic-smoke/metrics.json" "$OUT/smoke_metrics.json" 2>/dev/null || true
else
    echo "=== train_smoke: skipped (no pycocotools; carry .whl, see the header)"
    failures+=("train_smoke (skipped)")
fi

echo
for table in "$OUT/train_step.md" "$OUT/evaluate_speed.md"; do
    [ -f "$table" ] && cat "$table" && echo
done
echo "=== gpu_check: $((SECONDS - started)) s"
if [ "${#failures[@]}" -gt 0 ]; then
    echo "=== gpu_check: not clean: ${failures[*]}"
    exit 1
fi
echo "=== gpu_check: all steps passed"
