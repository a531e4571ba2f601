#!/bin/bash
# Submits a protocol to Slurm as three jobs: the pretraining, the runs as an
# array of SHARDS tasks that starts after it, and the report that starts
# after every task succeeded.
#
#   scripts/slurm/submit.sh PROTOCOL SHARDS [sbatch options...]
#
# Environment: PIRLKIT (the binary; default target/release/pirlkit), REPORTS
# (the shared results folder; default reports), DATA (the data set, as for
# --data; default the built-in one), WAIT=1 to wait for the report job.
# Every path must be visible from every node (a shared file system). Extra
# arguments go to every sbatch call (e.g. --partition=gpu --cpus-per-task=8
# --time=4:00:00). Prints the three job ids.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 PROTOCOL SHARDS [sbatch options...]" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
PROTOCOL=$(abs "$1"); SHARDS=$2; shift 2
PIRLKIT=$(abs "${PIRLKIT:-target/release/pirlkit}")
REPORTS=$(abs "${REPORTS:-reports}")
DATA=${DATA:+$(abs "$DATA")}
[ -x "$PIRLKIT" ] || { echo "$0: no pirlkit binary at $PIRLKIT (cargo build --release, or set PIRLKIT)" >&2; exit 2; }
[ -f "$PROTOCOL" ] || { echo "$0: no protocol file $PROTOCOL" >&2; exit 2; }
case "$SHARDS" in ''|*[!0-9]*|0) echo "$0: SHARDS must be a number >= 1" >&2; exit 2 ;; esac
mkdir -p "$REPORTS/slurm-logs"
export PIRLKIT PROTOCOL REPORTS DATA
common=(--parsable --export=ALL --chdir="$REPORTS")
# A failed job cancels the jobs that depend on it, instead of leaving them pending.
dep=(--kill-on-invalid-dep=yes)
pre=$(sbatch "${common[@]}" -o "$REPORTS/slurm-logs/pretrain-%j.log" "$@" "$here/pretrain.sbatch")
arms=$(sbatch "${common[@]}" "${dep[@]}" --dependency=afterok:"$pre" --array=0-$((SHARDS - 1)) \
  -o "$REPORTS/slurm-logs/arms-%A_%a.log" "$@" "$here/arms.sbatch")
wait=()
[ "${WAIT:-0}" = 1 ] && wait=(--wait)
echo "pretrain $pre"
echo "arms $arms"
rep=$(sbatch "${common[@]}" "${dep[@]}" "${wait[@]}" --dependency=afterok:"$arms" \
  -o "$REPORTS/slurm-logs/report-%j.log" "$@" "$here/report.sbatch")
echo "report $rep"
