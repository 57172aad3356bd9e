#!/usr/bin/env bash
# The GPU checks of the cuda and cudnn backends in one command, for a session that is lent a GPU
# machine for a few minutes (the development and CI machines have none). Two steps:
#
#   scripts/gpu_session.sh build
#       here, on the development machine: a Release build for sm_90 (H100/H200) only in build-gpu/,
#       and the runtime libraries the GPU machine's image lacks (fmt, Google Benchmark, OpenMP, and
#       the CUDA runtime it was linked with) in build-gpu/lib/. Carry build-gpu/normbench,
#       build-gpu/tests/normbench_tests and build-gpu/lib to the GPU machine (about 18 MB).
#
#   scripts/gpu_session.sh run OUTDIR [SECONDS]
#       on the GPU machine, in the repository root: the device, `normbench list`, the agreement
#       tests of the GPU backends (every method, pass, dtype and layout on the awkward shapes), the
#       sweep of configs/gpu.toml into OUTDIR/gpu.csv (its first cases are the LLM rows of the
#       LayerNorm/RMSNorm goals), and those rows' training forward and backward again with the
#       shared-memory row kernels (NB_CUDA_ROWS=shared) into OUTDIR/gpu_rows_shared.csv, so the
#       register-resident kernels are compared with them on the same device. Each step has a share of SECONDS (default 480); a sweep cut short keeps the
#       rows it wrote (rows are appended as they complete). cuDNN comes from the image's
#       nvidia-cudnn wheel when the system has none. Logs go to OUTDIR too.
#
# Afterwards copy OUTDIR/gpu.csv to results/gpu/gpu.csv, commit it, and `make figures`.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "gpu_session.sh: $*" >&2
  exit 2
}

case "${1:-}" in
  build)
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
      -DNORMBENCH_CUDA=ON -DNORMBENCH_CUDNN=ON
    cmake --build build-gpu --target normbench normbench_tests
    mkdir -p build-gpu/lib
    # Runtime libraries outside glibc/libstdc++/CUDA/cuDNN, resolved here, copied by soname.
    ldd build-gpu/normbench build-gpu/tests/normbench_tests |
      awk '$3 ~ /^\// && $1 ~ /^lib(fmt|benchmark|gomp|cudart)/ {print $3}' | sort -u |
      while read -r lib; do cp -L "$lib" build-gpu/lib/; done
    ls -l build-gpu/normbench build-gpu/tests/normbench_tests build-gpu/lib
    ;;
  run)
    out=${2:-}
    [ -n "$out" ] || die "usage: scripts/gpu_session.sh run OUTDIR [SECONDS]"
    budget=${3:-480}
    [[ "$budget" =~ ^[0-9]+$ ]] || die "SECONDS must be a whole number, got '$budget'"
    [ -x build-gpu/normbench ] || die "build-gpu/normbench is missing: run 'scripts/gpu_session.sh build' here and carry build-gpu"
    mkdir -p "$out"
    cudnn_lib=$(python3 -c 'import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null || true)
    export LD_LIBRARY_PATH="$PWD/build-gpu/lib:/usr/local/cuda/lib64:${cudnn_lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    { nvidia-smi || true; } >"$out/device.txt" 2>&1
    build-gpu/normbench list >"$out/list.txt" 2>&1 || true
    grep -E '^(machine|  [a-z_0-9]+ +(available|unavailable))' "$out/list.txt" || true
    # Shares of the budget: tests 25 %, the sweep 55 %, the shared-memory rows 20 %.
    status=0
    timeout $((budget * 25 / 100)) build-gpu/tests/normbench_tests \
      --gtest_filter='*BackendAgreement*/cud*' >"$out/agreement.log" 2>&1 || status=$?
    grep -E '^\[  (PASSED|FAILED) |tests? ran' "$out/agreement.log" || tail -n 5 "$out/agreement.log"
    timeout $((budget * 55 / 100)) build-gpu/normbench sweep configs/gpu.toml --out "$out/gpu.csv" \
      --quiet 2>&1 | tail -n 3 || status=$?
    # The LLM rows (the first cases of configs/gpu.toml) with the shared-memory row kernels,
    # training forward and backward, timed input only: the comparison for the register kernels.
    cat >"$out/gpu_rows_shared.toml" <<'TOML'
[sweep]
name = "gpu_rows_shared"
backends = ["cuda"]
repetitions = 5
min_time = 0.02
modes = ["cold"]
distributions = ["normal"]

[[cases]]
methods = ["rmsnorm"]
passes = ["fwd_train", "bwd"]
dtypes = ["bf16", "f32"]
shapes = ["t16384d4096", "t8192d8192", "t4096d16384", "t131072d128", "t2048d4096", "t8192d5120"]
eps = [1e-6]

[[cases]]
methods = ["layernorm"]
passes = ["fwd_train", "bwd"]
dtypes = ["bf16", "f32"]
shapes = ["t16384d4096", "t8192d8192", "t4096d16384", "t131072d128", "t2048d4096", "t8192d5120"]
TOML
    NB_CUDA_ROWS=shared timeout $((budget * 20 / 100)) build-gpu/normbench sweep \
      "$out/gpu_rows_shared.toml" --out "$out/gpu_rows_shared.csv" --quiet 2>&1 |
      tail -n 3 || status=$?
    wc -l "$out"/*.csv
    exit "$status"
    ;;
  *)
    die "usage: scripts/gpu_session.sh build | run OUTDIR [SECONDS]"
    ;;
esac
