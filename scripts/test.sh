#!/usr/bin/env bash
# The test command: set up and build, run every test (GoogleTest under CTest, and the
# command-line tests), the regression check (quick sweep compared with the committed baseline,
# scripts/regression.sh), then build again with AddressSanitizer + UndefinedBehaviorSanitizer and
# run the tests once more.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
ctest --test-dir build --output-on-failure -j "$(nproc)"
echo "== regression check: quick sweep against results/baseline/quick.csv ==" >&2
scripts/regression.sh build
echo "== again under AddressSanitizer and UndefinedBehaviorSanitizer ==" >&2
# nvcc's device code is not sanitized: the cuda backend is left out of this build.
scripts/setup.sh build-asan -DNORMBENCH_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNORMBENCH_CUDA=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)"
