#!/usr/bin/env bash
# A case whose buffers exceed the memory budget is reported SKIP with the reason, not run; a case
# within it runs. Usage: budget.sh NORMBENCH WORKDIR
set -u
nb=$1; work=$2
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
# 2^26 elements: about 2.8 GiB of harness buffers with the fp64 oracle; the budget is 0.5 GiB.
"$nb" run batchnorm:fwd_train:f32:nchw:n64c256h64w64 --backends reference --memory-budget 0.5 \
  --out big.csv --quiet || exit 1
grep -q 'SKIP' big.csv && grep -q 'memory budget 0.50 GiB' big.csv || { echo "FAIL: no SKIP row"; cat big.csv; exit 1; }
"$nb" run batchnorm:fwd_train:f32:nchw:n2c8h4w4 --backends reference --memory-budget 0.5 \
  --repetitions 1 --min-time 0.001 --out small.csv --quiet || exit 1
grep -q 'PASS' small.csv || { echo "FAIL: small case did not run"; exit 1; }
echo "ok: $(grep -o 'needs [^,]*' big.csv | head -1)"
