#!/usr/bin/env bash
# Proves that scripts/figures.py is deterministic: builds the figures twice, into two fresh
# directories, and compares every file byte for byte (PNG, SVG and PDF).
#
#   tests/figures/check_deterministic.sh PYTHON [INPUT...]
#
# INPUT: CSVs or directories, as figures.py takes them; default: this folder (the synthetic
# sample_cpu.csv and gpu/sample_gpu.csv, made by make_sample.py), with which every figure must be
# drawn. The second build differs from the first in everything that must not matter: working
# directory, PYTHONHASHSEED, SOURCE_DATE_EPOCH, TZ, a fresh matplotlib config and font cache
# (MPLCONFIGDIR) holding a hostile matplotlibrc, and the clock (a second later). The files must
# also carry no date or software version.
#
# Exit status: 0 identical, 1 a difference (or a figure missing, or figures.py failed),
# 77 when PYTHON lacks matplotlib, pandas or numpy (CTest SKIP_RETURN_CODE), 2 on a usage error.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 PYTHON [INPUT...]" >&2
  exit 2
fi
py=$1
shift
case $py in  # absolute, as the second build runs in another directory
  /*) ;;
  */*) py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")" ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if ! "$py" -c "import matplotlib, pandas, numpy" 2>/dev/null; then
  echo "SKIP: $py cannot import matplotlib, pandas and numpy"
  exit 77
fi

inputs=("$@")
expect_all=0
if [ ${#inputs[@]} -eq 0 ]; then
  inputs=("$here")
  expect_all=1
fi
abs_inputs=()
for i in "${inputs[@]}"; do
  case $i in /*) abs_inputs+=("$i") ;; *) abs_inputs+=("$PWD/$i") ;; esac
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/cfg_a" "$tmp/cfg_b" "$tmp/cwd_b" "$tmp/a" "$tmp/b"
cat > "$tmp/cfg_b/matplotlibrc" <<'EOF'
font.family: serif
font.size: 14
savefig.dpi: 72
svg.hashsalt: something-else
svg.fonttype: none
pdf.fonttype: 3
lines.linewidth: 3
axes.grid: True
EOF

status=0
(cd "$root" && MPLCONFIGDIR="$tmp/cfg_a" PYTHONHASHSEED=1 \
   "$py" scripts/figures.py "${abs_inputs[@]}" --out "$tmp/a") > "$tmp/a.log" 2>&1 || status=$?
if [ $status -ne 0 ]; then
  echo "FAIL: first build exited $status"; cat "$tmp/a.log"; exit 1
fi
sleep 1
(cd "$tmp/cwd_b" && MPLCONFIGDIR="$tmp/cfg_b" PYTHONHASHSEED=2 SOURCE_DATE_EPOCH=86400 \
   TZ=Asia/Kolkata "$py" "$root/scripts/figures.py" "${abs_inputs[@]}" --out "$tmp/b") \
   > "$tmp/b.log" 2>&1 || status=$?
if [ $status -ne 0 ]; then
  echo "FAIL: second build exited $status"; cat "$tmp/b.log"; exit 1
fi
cat "$tmp/a.log"

(cd "$tmp/a" && find . -type f | LC_ALL=C sort) > "$tmp/list_a"
(cd "$tmp/b" && find . -type f | LC_ALL=C sort) > "$tmp/list_b"
if ! diff -u "$tmp/list_a" "$tmp/list_b"; then
  echo "FAIL: the two builds wrote different sets of files"
  exit 1
fi

count=0
bad=0
while IFS= read -r f; do
  count=$((count + 1))
  if ! cmp -s "$tmp/a/$f" "$tmp/b/$f"; then
    echo "DIFFER: ${f#./} ($(cmp "$tmp/a/$f" "$tmp/b/$f" 2>&1 | head -1))"
    bad=1
  fi
  # No metadata that names a date or the software (PNG tEXt Software, SVG dc:date/dc:creator,
  # PDF /CreationDate /ModDate /Producer /Creator).
  case $f in
    *.png) pat='Software' ;;
    *.svg) pat='<dc:date>|<dc:creator>|Matplotlib v' ;;
    *.pdf) pat='/CreationDate|/ModDate|/Producer|/Creator' ;;
    *) pat='' ;;
  esac
  if [ -n "$pat" ] && LC_ALL=C grep -aEq "$pat" "$tmp/a/$f"; then
    echo "METADATA: ${f#./} contains $(LC_ALL=C grep -aEo "$pat" "$tmp/a/$f" | head -1)"
    bad=1
  fi
done < "$tmp/list_a"

if [ $expect_all -eq 1 ]; then
  for name in fig1_frac_vs_batch fig2_speedup_vs_peers fig3_agreement fig4_method_cost \
              fig5_layout_nhwc_vs_nchw fig6_gpu_frac_vs_batch fig6_gpu_frac_per_case \
              fig6_gpu_agreement; do
    for ext in png svg pdf; do
      if [ ! -s "$tmp/a/$name.$ext" ]; then
        echo "MISSING: $name.$ext (the synthetic data should give every figure)"
        bad=1
      fi
    done
  done
fi

if [ $bad -ne 0 ]; then
  echo "FAIL: the figures are not deterministic ($count files compared)"
  exit 1
fi
if [ $count -eq 0 ]; then
  echo "OK: no figure was drawn from ${inputs[*]} (no data), nothing to compare"
else
  echo "OK: $count files byte-identical across two builds"
fi
