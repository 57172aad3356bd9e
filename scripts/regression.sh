#!/usr/bin/env bash
# Performance and correctness regression check against the committed baseline, run by
# scripts/test.sh (and so by CI):
#   scripts/regression.sh [BUILD_DIR]             quick sweep now, compared with the baseline
#   scripts/regression.sh --refresh [BUILD_DIR]   replace this CPU model's rows of
#                                                 results/baseline/quick.csv (run on a quiet
#                                                 machine of the kind CI runs on)
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
  # The baseline keeps one run per CPU model (compare.py uses the rows of the model it runs on):
  # this machine's rows are replaced, other models' kept.
  .venv/bin/python - "$baseline" "$out/quick.csv" <<'PY'
import sys
from pathlib import Path
import pandas as pd
base, new = Path(sys.argv[1]), pd.read_csv(sys.argv[2], keep_default_na=False, dtype=str)
old = pd.read_csv(base, keep_default_na=False, dtype=str) if base.exists() else new.iloc[0:0]
keep = old[~old["cpu_model"].isin(set(new["cpu_model"]))]
pd.concat([keep, new], ignore_index=True).to_csv(base, index=False)
print(f"regression: baseline {base}: {len(new)} rows of {', '.join(sorted(set(new['cpu_model'])))}"
      f", {len(keep)} rows of other CPU models kept", file=sys.stderr)
PY
  exit 0
fi
.venv/bin/python scripts/compare.py "$baseline" "$out/quick.csv" --out "$out/verdicts.csv" \
  --recheck "$build_dir"/normbench --recheck-min-time 0.01
