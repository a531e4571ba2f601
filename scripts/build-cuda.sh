#!/usr/bin/env bash
# Builds pirlkit with candle's `cuda` feature on a machine WITHOUT a CUDA
# install or a GPU (see ../shared/CUDA.md for why it is done this way):
#
#   1. venv      a Python venv holding NVIDIA's pinned CUDA 13.0 PyPI wheels
#                (nvcc, cudart, cuBLAS, cuRAND, NVRTC, headers, libdevice).
#   2. root      a CUDA root folder of symlinks into the wheels' nvidia/cu13
#                tree, laid out as candle-kernels and cudarc expect
#                (bin/nvcc, include, nvvm, lib64/lib*.so).
#   3. stub      a stub libcuda.so.1 under <root>/lib64/stubs, FOR LINKING
#                ONLY: no wheel ships the driver library.
#   4. cargo     cargo build --release --features cuda --bin pirlkit, into
#                CARGO_TARGET_DIR=target/cuda (the CPU build in target/ is
#                left alone).
#   5. strip     target/cuda/pirlkit-cuda, the stripped binary.
#   6. smoke     runs `pirlkit-cuda --help` here with the stub (no GPU).
#
# Every step is idempotent: a second run reuses the venv, the root and the
# stub, and cargo rebuilds only what changed.
#
# Usage: scripts/build-cuda.sh [--check | --tests] [-h|--help]
#   (none)    steps 1-6.
#   --check   steps 1-3, then `cargo check --features cuda --lib --bin pirlkit`
#             (type-checks the cfg(feature = "cuda") code; candle-kernels'
#             build script, i.e. nvcc, still runs, in the dev profile).
#   --tests   steps 1-6, then also `cargo test --release --features cuda
#             --no-run` (builds, does not run, the test binaries).
#
# Environment (all optional):
#   PIRLKIT_CUDA_VENV    venv location        [target/cuda-toolkit/venv]
#   PIRLKIT_CUDA_ROOT    CUDA root (symlinks) [target/cuda-toolkit/root]
#   PIRLKIT_CUDA_TARGET  cargo target dir     [target/cuda]
#   PIRLKIT_PYTHON       python for the venv  [python3.11, else python3]
#   CUDA_COMPUTE_CAP     GPU arch for candle's kernels [90 = sm_90a, H100/H200]
#   CUDAFORGE_THREADS    parallel nvcc jobs   [number of CPUs]
#   PIRLKIT_NICE         nice level for cargo [19; 0 = not niced]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# ---------------------------------------------------------------- options ---
MODE=build
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --tests) MODE=tests ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-cuda: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# The CUDA 13.0 wheels of ../shared/CUDA.md. Do not bump one alone: nvcc 13.0
# writes the PTX ISA (9.0) that the GPU machine's driver (580) accepts, and the
# sonames (libcudart.so.13, libcublas.so.13) must match the runtime there.
PINS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
)

abspath() { case "$1" in /*) echo "$1" ;; *) echo "$REPO/$1" ;; esac; }
VENV=$(abspath "${PIRLKIT_CUDA_VENV:-target/cuda-toolkit/venv}")
ROOT=$(abspath "${PIRLKIT_CUDA_ROOT:-target/cuda-toolkit/root}")
TARGET_DIR=$(abspath "${PIRLKIT_CUDA_TARGET:-target/cuda}")
STUBS=$ROOT/lib64/stubs
NICE=${PIRLKIT_NICE:-19}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc 2>/dev/null || echo 1)}

if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

# ---------------------------------------------------------------- helpers ---
T_ALL=$(date +%s)
TIMES=()
CURRENT=""
now() { date +%s.%N; }
fmt() { awk -v s="$1" 'BEGIN { printf "%dm%04.1fs", int(s / 60), s - 60 * int(s / 60) }'; }
on_exit() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -n "$CURRENT" ]; then
    echo >&2
    echo "build-cuda: FAILED in step '$CURRENT' (exit $rc) after $(fmt "$(awk -v a="$T0" -v b="$(now)" 'BEGIN{print b-a}')")." >&2
    echo "build-cuda: the messages above this line are from that step." >&2
  fi
}
trap on_exit EXIT
begin() { CURRENT=$1; T0=$(now); echo; echo "== build-cuda: [$1] $2"; }
end() {
  local dt; dt=$(awk -v a="$T0" -v b="$(now)" 'BEGIN{print b-a}')
  echo "== build-cuda: [$CURRENT] done in $(fmt "$dt")${1:+ ($1)}"
  TIMES+=("$(printf '%-8s %s%s' "$CURRENT" "$(fmt "$dt")" "${1:+  ($1)}")")
  CURRENT=""
}
die() { echo "build-cuda: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || die "'$1' not found: $2"; }

need cargo "a Rust toolchain (>= 1.85, edition 2024) is needed"
need gcc "gcc builds the stub libcuda and is nvcc's host compiler"
need g++ "g++ is nvcc's host compiler for candle's kernels"

# ---------------------------------------------------- 1. venv with wheels ---
begin venv "CUDA 13.0 wheels in $VENV"
STAMP=$VENV/.pirlkit-cuda-pins
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ] && [ -x "$VENV/bin/python" ]; then
  echo "venv already holds the pinned wheels (delete $VENV to reinstall)"
  end "reused"
else
  PY=${PIRLKIT_PYTHON:-}
  if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
  fi
  need "$PY" "Python 3 with the venv module is needed for NVIDIA's CUDA wheels"
  if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV" || die "could not create a venv with $PY (on Debian: apt-get install python3-venv)"
  fi
  rm -f "$STAMP"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
      --only-binary=:all: "${PINS[@]}" \
    || die "pip could not install the CUDA wheels from PyPI (network? disk: the venv is ~1.2 GB)"
  printf '%s' "${PINS[*]}" > "$STAMP"
  end "installed"
fi

# -------------------------------------------- 2. CUDA root of symlinks ---
begin root "CUDA root of symlinks at $ROOT"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || die "no nvcc at $CU/bin/nvcc: the nvidia-cuda-nvcc wheel did not install where expected"
mkdir -p "$ROOT/bin" "$ROOT/lib64" "$STUBS"
# bin/, include/ and nvvm/ mirror the wheel tree (nvcc finds cicc, ptxas,
# fatbinary, its headers and libdevice relative to itself).
for f in "$CU"/bin/*; do ln -sfn "$f" "$ROOT/bin/$(basename "$f")"; done
for d in include nvvm; do
  [ -d "$CU/$d" ] || die "the wheels lack $CU/$d"
  ln -sfn "$CU/$d" "$ROOT/$d"
done
# lib64/: every library of the wheels, plus the unversioned names the linker
# needs (-lcudart -lcublas -lcublasLt -lcurand -lnvrtc).
for f in "$CU"/lib/*.so*; do ln -sfn "$f" "$ROOT/lib64/$(basename "$f")"; done
for lib in cudart cublas cublasLt curand nvrtc; do
  real=$(ls "$CU"/lib/lib$lib.so.[0-9]* 2>/dev/null | grep -E "/lib$lib\.so\.[0-9]+$" | head -n1 || true)
  [ -n "$real" ] || die "lib$lib.so.<major> not found in $CU/lib (a wheel is missing)"
  ln -sfn "$real" "$ROOT/lib64/lib$lib.so"
done
NVCC_VERSION=$("$ROOT/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "$NVCC_VERSION" = "13.0" ] || die "nvcc through $ROOT/bin reports release '$NVCC_VERSION', expected 13.0"
echo "nvcc $NVCC_VERSION; site-packages: $SITE"
end

# ------------------------------------------------------ 3. stub libcuda ---
begin stub "link-only stub libcuda.so.1 in $STUBS"
# The cu* functions come from the cudarc crate that Cargo.lock resolves
# (cudarc's driver bindings, linked dynamically by candle): every `fn cu...(`
# declared in an `extern "C"` block of src/driver/sys/mod.rs. Generated anew
# on each run, so the list follows cudarc upgrades.
CUDARC_SRC=$(cargo metadata --format-version 1 --features cuda \
               --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" \
  | "$VENV/bin/python" -c '
import json, os, sys
pk = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
if len(pk) != 1: sys.exit("cudarc: %d packages in the resolve" % len(pk))
print(os.path.dirname(pk[0]["manifest_path"]))') \
  || die "could not locate the cudarc crate through cargo metadata"
SYS_RS=$CUDARC_SRC/src/driver/sys/mod.rs
[ -f "$SYS_RS" ] || die "$SYS_RS not found"
SYMS=$(grep -oE '^[[:space:]]+fn cu[A-Za-z0-9_]+\(' "$SYS_RS" | sed -E 's/^[[:space:]]+fn //; s/\($//' | sort -u)
NSYMS=$(printf '%s\n' "$SYMS" | grep -c .)
[ "$NSYMS" -ge 100 ] || die "only $NSYMS cu* functions found in $SYS_RS: has cudarc's layout changed?"
STUB_C=$STUBS/libcuda-stub.c
{
  echo "/* GENERATED by scripts/build-cuda.sh from"
  echo " *   $(basename "$CUDARC_SRC")/src/driver/sys/mod.rs ($NSYMS functions)."
  echo " * A stand-in for the CUDA driver library, FOR LINKING ONLY: every function"
  echo " * returns CUDA_ERROR_NO_DEVICE (100). Never ship it, never put it on the"
  echo " * LD_LIBRARY_PATH of a GPU run: it would shadow the real libcuda.so.1. */"
  echo "#define STUB(f) __attribute__((visibility(\"default\"))) int f(void) { return 100; }"
  printf 'STUB(%s)\n' $SYMS
} > "$STUB_C.new"
if [ -f "$STUBS/libcuda.so.1" ] && cmp -s "$STUB_C.new" "$STUB_C"; then
  rm -f "$STUB_C.new"
  end "reused, $NSYMS symbols"
else
  mv "$STUB_C.new" "$STUB_C"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so.1" "$STUB_C" \
    || die "gcc could not build the stub libcuda"
  ln -sfn libcuda.so.1 "$STUBS/libcuda.so"
  got=$(nm -D --defined-only "$STUBS/libcuda.so.1" | grep -c ' T cu' || true)
  [ "$got" = "$NSYMS" ] || die "stub exports $got cu* symbols, expected $NSYMS"
  end "built, $NSYMS symbols from $(basename "$CUDARC_SRC")"
fi
echo "NOTE: $STUBS/libcuda.so.1 is a LINK-TIME STUB. Do not copy it anywhere,"
echo "      and never put $STUBS on LD_LIBRARY_PATH on a GPU machine."

# -------------------------------------------------------------- 4. cargo ---
# cudaforge (candle-kernels' build helper) takes NVCC, then PATH, then
# CUDA_HOME; cudarc takes the CUDA version from `nvcc --version` on PATH and
# the link paths from CUDA_HOME/CUDA_PATH/CUDA_ROOT/CUDA_TOOLKIT_ROOT_DIR
# (lib64 and lib64/stubs). All point at $ROOT so nothing else is mixed in.
export NVCC=$ROOT/bin/nvcc
export CUDA_HOME=$ROOT CUDA_ROOT=$ROOT CUDA_PATH=$ROOT CUDA_TOOLKIT_ROOT_DIR=$ROOT
unset CUDNN_LIB CUDARC_CUDA_VERSION
export PATH=$ROOT/bin:$PATH
export CARGO_TARGET_DIR=$TARGET_DIR
echo
echo "build-cuda: NVCC=$NVCC CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CUDAFORGE_THREADS=$CUDAFORGE_THREADS CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
CARGO=(cargo)
[ "$NICE" != 0 ] && CARGO=(nice -n "$NICE" cargo)

if [ "$MODE" = check ]; then
  begin check "cargo check --features cuda --lib --bin pirlkit"
  "${CARGO[@]}" check --features cuda --lib --bin pirlkit --timings
  end
else
  begin cargo "cargo build --release --features cuda --bin pirlkit"
  "${CARGO[@]}" build --release --features cuda --bin pirlkit --timings
  end

  # ------------------------------------------------------------ 5. strip ---
  begin strip "stripped copy at $TARGET_DIR/pirlkit-cuda"
  BIN=$TARGET_DIR/release/pirlkit
  [ -x "$BIN" ] || die "cargo succeeded but $BIN is missing"
  strip -o "$TARGET_DIR/pirlkit-cuda.tmp" "$BIN" && mv "$TARGET_DIR/pirlkit-cuda.tmp" "$TARGET_DIR/pirlkit-cuda"
  # The binary must name the driver by soname only: no RPATH/RUNPATH at all,
  # least of all one into the stubs.
  if readelf -d "$TARGET_DIR/pirlkit-cuda" | grep -qE 'RPATH|RUNPATH'; then
    die "$TARGET_DIR/pirlkit-cuda carries an RPATH/RUNPATH; refusing to leave it"
  fi
  NEEDED=$(readelf -d "$TARGET_DIR/pirlkit-cuda" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')
  SIZE=$(du -h "$TARGET_DIR/pirlkit-cuda" | cut -f1)
  echo "needs: $NEEDED"
  # The device tool carries at most 64 MiB in all (../shared/CUDA.md).
  BYTES=$(stat -c %s "$TARGET_DIR/pirlkit-cuda")
  if [ "$BYTES" -gt $((60 * 1024 * 1024)) ]; then
    echo "NOTE: $SIZE is near or over the device tool's 64 MiB carry limit; carry it"
    echo "      compressed (gzip -k $TARGET_DIR/pirlkit-cuda: about a quarter of that) and gunzip there."
  fi
  end "$SIZE"

  # ------------------------------------------------------------ 6. smoke ---
  begin smoke "pirlkit-cuda --help with the stub driver (no GPU used)"
  LD_LIBRARY_PATH=$STUBS:$CU/lib "$TARGET_DIR/pirlkit-cuda" --help >/dev/null \
    || die "pirlkit-cuda --help failed even with the stub and the wheels' libraries"
  end

  if [ "$MODE" = tests ]; then
    begin tests "cargo test --release --features cuda --no-run"
    "${CARGO[@]}" test --release --features cuda --no-run
    end
  fi
fi

# ------------------------------------------------------------- summary ---
echo
echo "== build-cuda: summary (total $(fmt $(( $(date +%s) - T_ALL ))))"
printf '   %s\n' "${TIMES[@]}"
echo "   cargo's per-crate timings (nvcc = candle-kernels' build script): $TARGET_DIR/cargo-timings/"
if [ "$MODE" != check ]; then
  cat <<EOF

Binary: $TARGET_DIR/pirlkit-cuda  (kernels for CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}; CUDA 13.0, needs driver >= 580)
On the GPU machine it needs the REAL libcuda.so.1 (the driver's) and, from
NVIDIA's CUDA 13 wheels there, $(echo "$NEEDED" | tr ' ' '\n' | grep -E '^lib(cu|nv)' | grep -v '^libcuda\.so' | tr '\n' ' ')
(libcublas.so.13 loads libcublasLt.so.13 itself):
  LD_LIBRARY_PATH=<site-packages>/nvidia/cu13/lib ./pirlkit-cuda ...
Here (no GPU), to see it start:
  LD_LIBRARY_PATH=$STUBS:$CU/lib $TARGET_DIR/pirlkit-cuda --help
EOF
fi
