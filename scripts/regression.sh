#!/usr/bin/env bash
# Performance and correctness regression check against the committed baseline, run by
# scripts/test.sh (and so by CI):
#   scripts/regression.sh [BUILD_DIR]             quick sweep now, compared with the baseline
#   scripts/regression.sh --refresh [BUILD_DIR]   rewrite results/baseline/quick.csv (run on a
#                                                 quiet machine of the kind CI runs on)
# The sweep is configs/quick.toml (every method, pass, dtype and layout on small shapes, 5
# repetitions) with every available CPU backend but the reference, 2 OpenMP threads. The
# comparison is scripts/compare.py: any agreement FAIL fails; a case fails only when it is more
# than 15 % slower after the run's drift, beyond its interquartile noise, and again in two re-runs.
# NORMBENCH_PLANT_SLOWDOWN=openmp_batchnorm plants a 25 % slowdown to see it caught.
set -euo pipefail
cd "$(dirname "$0")/.."
refresh=0
if [ "${1:-}" = --refresh ]; then refresh=1; shift; fi
build_dir=${1:-build}
baseline=results/baseline/quick.csv
out=out/regression
mkdir -p "$out"
# Our CPU backends that this CPU can run (avx512 reports itself unavailable without AVX-512F).
backends=$("$build_dir"/normbench list |
  awk '/^  (openmp|avx512) +available/ {printf "%s%s", sep, $1; sep=","}')
echo "regression: quick sweep, backends $backends, 2 threads" >&2
rm -f "$out/quick.csv.part"
rc=0
"$build_dir"/normbench sweep configs/quick.toml --backends "$backends" --threads 2 --quiet \
  --out "$out/quick.csv.part" || rc=$?
[ "$rc" -le 1 ] || exit "$rc"  # 1: agreement FAIL rows, reported by the comparison below
mv "$out/quick.csv.part" "$out/quick.csv"
if [ "$refresh" = 1 ]; then
  if [ "$rc" = 1 ]; then echo "regression: not refreshing: the sweep has FAIL rows" >&2; exit 1; fi
  cp "$out/quick.csv" "$baseline"
  echo "regression: baseline refreshed: $baseline" >&2
  exit 0
fi
.venv/bin/python scripts/compare.py "$baseline" "$out/quick.csv" --out "$out/verdicts.csv" \
  --recheck "$build_dir"/normbench --recheck-min-time 0.01
