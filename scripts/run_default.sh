#!/usr/bin/env bash
# The main job: set up and build, run the default sweep (configs/default.toml, embedded in the
# binary) with every available backend, and plot it.
#   scripts/run_default.sh [extra normbench sweep options...]
# Leaves out/default.csv and out/plots/*.png|svg. Exit status: normbench's (1 if any agreement
# FAIL), after the plots are written.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
status=0
build/normbench sweep --out out/default.csv "$@" || status=$?
if [ "$status" -ge 2 ]; then exit "$status"; fi
.venv/bin/python scripts/plot.py out/default.csv --out out/plots
echo "results: out/default.csv, plots: out/plots/" >&2
exit "$status"
