#!/usr/bin/env bash
# Installs the peer libraries that the `onednn` and `pytorch` backends run (both optional) into
# the project's .venv from PyPI, then reconfigures and rebuilds with scripts/setup.sh, whose
# CMake run finds them there.
#   scripts/install_peers.sh [BUILD_DIR [extra cmake arguments...]]     (default BUILD_DIR: build)
#   PEERS="onednn" scripts/install_peers.sh                              (only one of the two)
# Idempotent: pip skips what is installed; the rebuild compiles only what changed.
#
# oneDNN: onednn-cpu-gomp + onednn-devel-cpu-gomp 2023.2.0 (oneDNN 3.2.0: libdnnl.so, headers and
#   CMake config under .venv/{lib,include}), the CPU build with the GNU OpenMP runtime, so it
#   shares the harness's libgomp and thread count. The newer `onednn`/`onednn-devel` wheels
#   (2024-2026, oneDNN 3.3+) are DPC++/SYCL builds with TBB threading whose CPU engine needs a
#   SYCL CPU device ("could not create an engine" without one), so they are not used, and are
#   removed if present (they install the same file names).
# PyTorch: the `torch` wheel with --no-deps (its headers, libtorch_cpu.so and libc10.so; none of
#   its Python dependencies nor the GPU libraries), plus the two small CUDA runtime wheels that
#   the PyPI build of libtorch_cpu.so needs at load time (libcudart, libcupti), at the versions
#   the torch wheel pins. About 1 GB in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
peers=${PEERS:-onednn pytorch}
onednn_version=${ONEDNN_VERSION:-2023.2.0}
torch_version=${TORCH_VERSION:-2.15.0}

# .venv (and the Debian packages) come from setup.sh; run it first on a fresh machine.
[ -x .venv/bin/pip ] || scripts/setup.sh "$build_dir" "${@:2}"
pip=(.venv/bin/pip install -q --disable-pip-version-check)

for peer in $peers; do
  case "$peer" in
    onednn)
      for sycl_build in onednn-devel onednn; do
        if .venv/bin/pip show -q "$sycl_build" >/dev/null 2>&1; then
          echo "install_peers: removing $sycl_build (SYCL build, no plain CPU engine)" >&2
          .venv/bin/pip uninstall -y -q "$sycl_build"
        fi
      done
      echo "install_peers: oneDNN (onednn-cpu-gomp $onednn_version)" >&2
      "${pip[@]}" "onednn-cpu-gomp==$onednn_version" "onednn-devel-cpu-gomp==$onednn_version"
      ;;
    pytorch)
      echo "install_peers: PyTorch (torch $torch_version, no dependencies)" >&2
      "${pip[@]}" --no-deps "torch==$torch_version"
      # The CUDA runtime libraries libtorch_cpu.so is linked against, at the wheel's own pins:
      # cuda-toolkit[...] (CUDA 13 wheels) or nvidia-cuda-runtime/-cupti-cu12 (older wheels).
      mapfile -t cuda_runtime < <(.venv/bin/python - <<'EOF'
import importlib.metadata as metadata
import re
for requirement in metadata.requires("torch") or []:
    spec = requirement.split(";")[0].strip()
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0)
    version = spec[len(name):].split("]")[-1].strip()
    if name == "cuda-toolkit":
        print(f"cuda-toolkit[cudart,cupti]{version}")
    elif name.startswith(("nvidia-cuda-runtime", "nvidia-cuda-cupti")):
        print(f"{name}{version}")
EOF
      )
      if [ ${#cuda_runtime[@]} -gt 0 ]; then
        echo "install_peers: CUDA runtime for libtorch_cpu.so: ${cuda_runtime[*]}" >&2
        "${pip[@]}" "${cuda_runtime[@]}"
      fi
      ;;
    *)
      echo "install_peers: unknown peer '$peer' (expected onednn, pytorch)" >&2
      exit 2
      ;;
  esac
done

scripts/setup.sh "$build_dir" "${@:2}"
"$build_dir"/normbench list | sed -n '/^backends/,/^$/p' | grep -E 'onednn|pytorch' >&2 || true
