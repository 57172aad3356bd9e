#!/usr/bin/env python3
"""Deterministic regression signal: instruction counts from valgrind's callgrind.

Times on these shared virtual machines move by tens of percent; instruction counts of the same
binary on the same inputs do not (callgrind counts instructions, whatever else the machine does).
valgrind 3.19 cannot decode AVX-512, so this covers the code paths it can run: the reference and
the OpenMP backend at one thread (its run-time dispatch sees valgrind's CPU, which has no
AVX-512). Each case runs `normbench exec REPRO --backend B --iterations 4 --threads 1` under
`valgrind --tool=callgrind --instr-atstart=no`: only the four runs are counted, not input
generation, and not glibc's allocator (malloc.c): its instructions depend on the heap's layout,
which moves with the command line and the environment (the same binary counted 56,282 and 56,705
instructions on one case, run by a relative and by an absolute path, all of the difference in
malloc.c), while the kernels' own counts did not move.

Usage:
  instruction_counts.py --normbench build/normbench --write results/baseline/callgrind.csv
  instruction_counts.py --normbench build/normbench --check results/baseline/callgrind.csv
        [--tolerance 0.02]
--check exits 1 when a case's count grew by more than the tolerance (a regression) and lists
cases that shrank by more (refresh the baseline with --write); 2 on a usage error.

Counts are exact on one kind of machine but not across CPU models: glibc picks its string
functions by CPU, and the kernels size their blocking from the caches. So the baseline keeps one
set of counts per CPU model (the `machine:` line of `normbench list`); --write replaces this
model's, and --check on a model the baseline lacks prints the counts and the comparison with the
other model's as information, and passes.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile

BACKENDS = ["reference", "openmp"]
CASES = [
    "batchnorm:fwd_train:f32:nchw:n4c16h14w14:eps1e-05:mom0.1",
    "batchnorm:fwd_infer:f32:nhwc:n4c16h14w14:eps1e-05:mom0.1",
    "batchnorm:bwd:f32:nchw:n4c16h14w14:eps1e-05:mom0.1",
    "layernorm:fwd_train:f32:nchw:t64d768:eps1e-05",
    "layernorm:bwd:bf16:nchw:t64d768:eps1e-05",
    "groupnorm:fwd_train:f32:nhwc:n2c32h8w8g8:eps1e-05",
    "groupnorm:bwd:f32:nchw:n2c32h8w8g8:eps1e-05",
    "instancenorm:fwd_train:f16:nchw:n2c16h8w8:eps1e-05",
    "rmsnorm:fwd_train:f32:nchw:t64d1024:eps1e-06",
    "rmsnorm:bwd:f32:nchw:t64d1024:eps1e-06",
]
COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
# A function's line of `callgrind_annotate --threshold=100`: "1,604 ( 2.85%)  file:function [object]".
FUNCTION = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+?):")


def allocator_instructions(annotated: str) -> int:
    """Instructions of functions in glibc's malloc.c, from callgrind_annotate's per-function
    list (exclusive counts; the PROGRAM TOTALS line has no file and is skipped)."""
    total = 0
    for line in annotated.splitlines():
        m = FUNCTION.match(line)
        if m and m.group(2).endswith("malloc/malloc.c"):
            total += int(m.group(1).replace(",", ""))
    return total


def count(normbench: str, backend: str, repro: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
               normbench, "exec", repro, "--backend", backend, "--iterations", "4", "--threads", "1"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        m = COLLECTED.search(res.stderr)
        if res.returncode != 0 or not m:
            raise SystemExit(f"instruction_counts.py: error: {' '.join(cmd)} failed:\n"
                             f"{res.stderr[-2000:]}")
        ann = subprocess.run(["callgrind_annotate", "--threshold=100", out], capture_output=True,
                             text=True)
        if ann.returncode != 0:
            raise SystemExit(f"instruction_counts.py: error: callgrind_annotate failed:\n"
                             f"{ann.stderr[-2000:]}")
        return int(m.group(1)) - allocator_instructions(ann.stdout)


def measure(normbench: str) -> dict[tuple[str, str], int]:
    out = {}
    for b in BACKENDS:
        for r in CASES:
            out[(b, r)] = count(normbench, b, r)
            print(f"{out[(b, r)]:>14,} instructions  {b:<10} {r}", file=sys.stderr)
    return out


def cpu_model(normbench: str) -> str:
    res = subprocess.run([normbench, "list"], capture_output=True, text=True)
    first = res.stdout.splitlines()[0] if res.returncode == 0 and res.stdout else ""
    if not first.startswith("machine: "):
        raise SystemExit(f"instruction_counts.py: error: {normbench} list: no machine line")
    return first.removeprefix("machine: ").split(",")[0].strip()


def read_baseline(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--normbench", default="build/normbench")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="CSV")
    g.add_argument("--check", metavar="CSV")
    ap.add_argument("--tolerance", type=float, default=0.02)
    a = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        raise SystemExit("instruction_counts.py: error: valgrind not found (apt-get install valgrind)")
    model = cpu_model(a.normbench)
    if a.write:
        counts = measure(a.normbench)
        kept = [r for r in read_baseline(a.write) if r.get("cpu_model", "") != model]
        with open(a.write, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["cpu_model", "backend", "repro", "instructions"])
            for r in kept:
                w.writerow([r.get("cpu_model", ""), r["backend"], r["repro"], r["instructions"]])
            for (b, r), n in counts.items():
                w.writerow([model, b, r, n])
        print(f"wrote {len(counts)} instruction counts of {model} to {a.write} "
              f"({len(kept)} of other CPU models kept)")
        return 0
    rows = read_baseline(a.check)
    if not rows:
        raise SystemExit(f"instruction_counts.py: error: {a.check}: no such file or no rows")
    mine = [r for r in rows if r.get("cpu_model", "") == model]
    informational = not mine
    if informational:
        other = sorted({r.get("cpu_model", "") for r in rows})
        print(f"instruction counts: the baseline has no counts of {model} (it has "
              f"{', '.join(other)}): compared with those for information only")
        mine = [r for r in rows if r.get("cpu_model", "") == other[0]]
    base = {(r["backend"], r["repro"]): int(r["instructions"]) for r in mine}
    counts = measure(a.normbench)
    worse = better = 0
    for key, n in counts.items():
        if key not in base:
            print(f"new      {key[0]:<10} {key[1]}: {n:,} (not in the baseline)")
            continue
        ratio = n / base[key]
        if ratio > 1 + a.tolerance:
            worse += 1
            print(f"slower   {key[0]:<10} {key[1]}: {base[key]:,} -> {n:,} instructions (x{ratio:.3f})")
        elif ratio < 1 - a.tolerance:
            better += 1
            print(f"faster   {key[0]:<10} {key[1]}: {base[key]:,} -> {n:,} instructions (x{ratio:.3f})")
    print(f"instruction counts: {len(counts)} cases, {worse} above the baseline by more than "
          f"{a.tolerance:.0%}, {better} below it")
    return 1 if worse and not informational else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
