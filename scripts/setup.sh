#!/usr/bin/env bash
# Installs what normbench needs on a fresh Debian 12 machine (Debian packages, a Python virtual
# environment in .venv from scripts/requirements.txt) and builds it with CMake + Ninja.
#   scripts/setup.sh [BUILD_DIR [extra cmake arguments...]]      (default BUILD_DIR: build)
# Idempotent: installs only what is missing, rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
shift || true

packages=(cmake ninja-build g++ git libfmt-dev libbenchmark-dev libgtest-dev libcli11-dev
          libtomlplusplus-dev nlohmann-json3-dev libboost-context-dev valgrind python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! .venv/bin/python -c "import numpy, pandas, matplotlib" 2>/dev/null; then
  echo "setup: creating .venv from scripts/requirements.txt" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r scripts/requirements.txt
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
