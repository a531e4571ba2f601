#!/usr/bin/env bash
# One short run on a GPU machine (prepared to fit the device tool's budget:
# about 8 minutes on an H200). Build the binary first, here:
#
#   scripts/build-cuda.sh          # -> target/cuda/pirlkit-cuda
#
# then run this on the GPU machine from the repository root, with the binary
# beside it (the device tool: carry target/cuda/pirlkit-cuda.gz, made by
# `gzip -k target/cuda/pirlkit-cuda`; it is unpacked here). It needs the
# NVIDIA driver (libcuda.so.1), the CUDA 13 runtime libraries (found in the
# Python site-packages' nvidia/cu13/lib, as PyTorch's wheels install them,
# or set CUDA_LIBS), and PyTorch for the side-by-side figure.
#
# Steps (each under its own time limit; a failed step is reported and the
# rest still run; the exit status is the number of failed steps):
#   1. pirlkit selftest --device cuda: conv, max-pool, ResNet gradients and a
#      short PIRL run's losses on the GPU against the CPU kernels;
#   2. pirlkit bench at the paper preset (ResNet-50, 224 px, batch 256; the
#      whole PIRL step with 2304 patches and 32000 negatives), f32 and TF32;
#   3. PyTorch's ResNet-50 training step on the same GPU, f32 and TF32;
#   4. the main job at the demo scale (the built-in set, 10 epochs = 310 PIRL
#      steps, probe, report) on the
#      GPU and on the CPU with the same seed: loss curves and AUCs side by side.
#
# Results go to $OUT (default gpu-check-out/): one file per step, and
# summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${PIRLKIT_BIN:-target/cuda/pirlkit-cuda}
OUT=${OUT:-gpu-check-out}
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
mkdir -p "$OUT"
# The stripped cuda binary is about 81 MiB, over the device tool's 64 MiB:
# it travels gzipped (22 MiB) and is unpacked here.
if [ ! -x "$BIN" ] && [ -f "$BIN.gz" ]; then
  gunzip -c "$BIN.gz" > "$OUT/pirlkit-cuda" && chmod +x "$OUT/pirlkit-cuda" && BIN="$OUT/pirlkit-cuda"
fi
S="$OUT/summary.txt"
: > "$S"
say() { echo "$*" | tee -a "$S"; }
fails=0
step() { # name limit_s cmd...
  local name=$1 lim=$2; shift 2
  local t0=$(date +%s)
  timeout "$lim" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local rc=$?
  say "[$name] rc=$rc in $(( $(date +%s) - t0 )) s"
  if [ $rc -ne 0 ]; then fails=$((fails + 1)); tail -5 "$OUT/$name.err" | sed 's/^/    /' | tee -a "$S"; fi
  return 0
}

if [ "$DEV" != cpu ]; then
  if [ -z "${CUDA_LIBS:-}" ]; then
    CUDA_LIBS=$($PY - <<'PYEOF' 2>/dev/null
import os, site, sys
for d in site.getsitepackages() + [site.getusersitepackages()]:
    p = os.path.join(d, "nvidia", "cu13", "lib")
    if os.path.exists(os.path.join(p, "libcudart.so.13")):
        print(p); sys.exit(0)
PYEOF
)
  fi
  [ -n "${CUDA_LIBS:-}" ] && export LD_LIBRARY_PATH="$CUDA_LIBS:${LD_LIBRARY_PATH:-}"
  say "CUDA libraries: ${CUDA_LIBS:-not found (relying on the system)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$S"
fi
say "binary: $BIN ($(stat -c %s "$BIN" 2>/dev/null || echo missing) bytes); device $DEV"
export PIRLKIT_CACHE="$OUT/cache" RUST_LOG=${RUST_LOG:-info}

step selftest 180 "$BIN" selftest --device "$DEV"
grep -h '"ok":false' "$OUT/selftest.out" | tee -a "$S"

ARCH=${ARCH:-resnet50} BATCH=${BATCH:-256} SIZE=${SIZE:-224} PRESET=${PRESET:-paper}
step bench-f32 240 "$BIN" bench --device "$DEV" --arch "$ARCH" --batch "$BATCH" --size "$SIZE" --steps 5 --pirl-preset "$PRESET"
step bench-tf32 150 "$BIN" bench --device "$DEV" --tf32 --arch "$ARCH" --batch "$BATCH" --size "$SIZE" --steps 5
step torch-f32 120 "$PY" scripts/torch_step.py --device "$DEV" --arch "$ARCH" --batch "$BATCH" --size "$SIZE"
step torch-tf32 120 "$PY" scripts/torch_step.py --device "$DEV" --tf32 --arch "$ARCH" --batch "$BATCH" --size "$SIZE"
say "images/s (training step; pirl-step is the whole PIRL step):"
cat "$OUT"/bench-f32.out "$OUT"/bench-tf32.out "$OUT"/torch-f32.out "$OUT"/torch-tf32.out 2>/dev/null \
  | $PY -c '
import json, sys
for l in sys.stdin:
    try: j = json.loads(l)
    except Exception: continue
    print("  %-24s %-8s %s b%s %spx: %.1f img/s (median %.4f s)" % (j["what"], j["device"], j["arch"], j["batch"], j["size"], j["images_per_s"], j["median_s"]))
' | tee -a "$S"

EPOCHS=${EPOCHS:-10}
step demo-$DEV 240 "$BIN" reproduce --preset demo --epochs "$EPOCHS" --device "$DEV" --reports "$OUT/reports" --run-name demo-$DEV --no-progress
step demo-cpu 240 "$BIN" reproduce --preset demo --epochs "$EPOCHS" --device cpu --reports "$OUT/reports" --run-name demo-cpu --no-progress
say "demo loss curves and AUCs ($DEV vs cpu):"
for d in "$DEV" cpu; do
  say "  $d: $("$PY" -c 'import json,sys; print(" ".join("%.4f" % v for v in json.load(open(sys.argv[1]))["pretrain_losses"]))' "$OUT/reports/demo-$d/report_inputs.json" 2>/dev/null | cut -c1-400)"
  grep -h "pirl\|random" "$OUT/reports/demo-$d/summary.csv" 2>/dev/null | sed 's/^/    /' | tee -a "$S"
done
say "failed steps: $fails"
exit $fails
