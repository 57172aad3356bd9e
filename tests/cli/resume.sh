#!/usr/bin/env bash
# A sweep killed halfway leaves a valid CSV with every completed row; --resume completes it
# without redoing them. Usage: resume.sh NORMBENCH WORKDIR
set -u
nb=$1; work=$2
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
cat >sweep.toml <<'TOML'
[sweep]
name = "resume"
repetitions = 2
min_time = 0.01
[[cases]]
methods = ["batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm"]
passes = ["fwd_train", "bwd"]
c = 32
hw = 8
n = [1, 2, 4, 8]
groups = 8
TOML
# The complete run, for comparison.
"$nb" sweep sweep.toml --backends reference --out full.csv --quiet || exit 1
total=$(($(wc -l <full.csv) - 1))
# Start again and kill it (SIGKILL: no chance to clean up) once some rows are written.
"$nb" sweep sweep.toml --backends reference --out part.csv --quiet &
pid=$!
for _ in $(seq 1 600); do
  [ -f part.csv ] && [ "$(wc -l <part.csv)" -gt 12 ] && break
  sleep 0.05
done
kill -9 "$pid"; wait "$pid" 2>/dev/null
kept=$(($(wc -l <part.csv) - 1))
echo "killed after $kept of $total rows"
if [ "$kept" -lt 1 ] || [ "$kept" -ge "$total" ]; then echo "FAIL: kill did not land halfway"; exit 1; fi
# Every complete line has the header's number of fields.
python3 - part.csv <<'PY' || exit 1
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
bad = [r for r in rows if len(r) != len(rows[0])]
print(f"partial file: {len(rows) - 1} rows, {len(bad)} malformed (a cut last line is allowed)")
sys.exit(1 if len(bad) > 1 or (bad and rows[-1] is not bad[-1]) else 0)
PY
"$nb" sweep sweep.toml --backends reference --out part.csv --resume --quiet || exit 1
python3 - part.csv full.csv <<'PY'
import csv, sys
def keys(p):
    rows = list(csv.DictReader(open(p)))
    return [(r["repro"], r["backend"], r["dist"], r["mode"]) for r in rows], rows
got, rows = keys(sys.argv[1])
want, _ = keys(sys.argv[2])
assert len(got) == len(set(got)), "duplicate rows after resume"
assert sorted(got) == sorted(want), f"resumed file has {len(got)} rows, full run {len(want)}"
assert all(r["status"] == "PASS" for r in rows), "a row is not PASS"
print(f"resumed: {len(got)} rows, same keys as the uninterrupted run, no duplicates")
PY
