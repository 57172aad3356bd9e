#!/usr/bin/env python3
"""Tests of scripts/compare.py on synthetic result sets whose verdicts are known by construction.

Each scenario writes a baseline and a new CSV, runs compare.py and checks its exit status and the
per-case verdicts (--out). Usage: compare_test.py SCRATCH_DIR
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
COMPARE = ROOT / "scripts" / "compare.py"
MIB = 2**20


def rows(times: dict[str, float], spread: float = 0.02, copy_nt: float = 60.0,
         big: set[str] = frozenset(), status: dict[str, str] | None = None,
         cpu: str = "cpu A") -> pd.DataFrame:
    """One hot row per repro (backend b), median t, quartiles t(1 -+ spread), plus an
    agreement-only large_offset row per repro."""
    out = []
    for repro, t in times.items():
        base = dict(repro=repro, backend="b", threads="2", repetitions="5", reason="", cpu_model=cpu,
                    bytes=str(256 * MIB if repro in big else MIB), copy_nt_gbps=str(copy_nt),
                    status=(status or {}).get(repro, "PASS"))
        out.append(base | dict(dist="normal", mode="hot", time_median_us=t,
                               time_p25_us=t * (1 - spread), time_p75_us=t * (1 + spread),
                               time_min_us=t * (1 - 2 * spread), time_max_us=t * (1 + 2 * spread)))
        out.append(base | dict(dist="large_offset", mode="-", time_median_us="", time_p25_us="",
                               time_p75_us="", time_min_us="", time_max_us=""))
    return pd.DataFrame(out)


def run(tmp: Path, name: str, base: pd.DataFrame, new: pd.DataFrame, *extra: str):
    b, n, v = tmp / f"{name}_base.csv", tmp / f"{name}_new.csv", tmp / f"{name}_verdicts.csv"
    base.to_csv(b, index=False)
    new.to_csv(n, index=False)
    p = subprocess.run([sys.executable, str(COMPARE), str(b), str(n), "--out", str(v), *extra],
                       capture_output=True, text=True)
    verdicts = dict(zip(*pd.read_csv(v)[["repro", "verdict"]].T.values)) if v.exists() else {}
    return p.returncode, verdicts, p.stdout + p.stderr


FAILURES: list[str] = []


def expect(name: str, cond: bool, detail: str) -> None:
    print(f"{'ok  ' if cond else 'FAIL'} {name}")
    if not cond:
        FAILURES.append(f"{name}: {detail}")


def main() -> int:
    tmp = Path(sys.argv[1])
    tmp.mkdir(parents=True, exist_ok=True)
    cases = {f"case{i}": 10.0 + i for i in range(20)}

    rc, v, log = run(tmp, "unchanged", rows(cases), rows(cases))
    expect("unchanged: exit 0, all same", rc == 0 and set(v.values()) == {"same"}, log)

    slow = dict(cases, case3=cases["case3"] * 1.25)
    rc, v, log = run(tmp, "slower", rows(cases), rows(slow))
    expect("one case 25 % slower with tight quartiles: exit 1, only it slower",
           rc == 1 and v["case3"] == "slower" and list(v.values()).count("slower") == 1, log)

    rc, v, log = run(tmp, "below", rows(cases), rows(dict(cases, case3=cases["case3"] * 1.10)))
    expect("10 % slower is below the 15 % threshold: same", rc == 0 and v["case3"] == "same", log)

    rc, v, log = run(tmp, "noisy", rows(cases, spread=0.2), rows(slow, spread=0.2))
    expect("25 % slower but overlapping quartiles: same (noise)", rc == 0 and v["case3"] == "same",
           log)

    fast = dict(cases, case5=cases["case5"] * 0.6)
    rc, v, log = run(tmp, "faster", rows(cases), rows(fast))
    expect("a faster case: exit 0, faster", rc == 0 and v["case5"] == "faster", log)

    uniform = {k: t * 1.5 for k, t in cases.items()}
    rc, v, log = run(tmp, "drift", rows(cases), rows(uniform))
    expect("every case 1.5x slower (slower machine): drift, exit 0, warning",
           rc == 0 and set(v.values()) == {"same"} and "x1.500" in log and "warning" in log, log)

    drift_plus = {k: t * 1.5 for k, t in slow.items()}
    rc, v, log = run(tmp, "drift_plus_one", rows(cases), rows(drift_plus))
    expect("slower machine and one regressed case: that case is still found",
           rc == 1 and v["case3"] == "slower" and list(v.values()).count("slower") == 1, log)

    big = {"case0", "case1", "case2"}
    halved_bw = {k: (t * 2 if k in big else t) for k, t in cases.items()}
    rc, v, log = run(tmp, "bandwidth", rows(cases, big=big),
                     rows(halved_bw, big=big, copy_nt=30.0))
    expect("DRAM-sized cases 2x slower with the copy bandwidth halved: same",
           rc == 0 and set(v.values()) == {"same"}, log)

    rc, v, log = run(tmp, "bandwidth_cached", rows(cases), rows(cases, copy_nt=30.0))
    expect("cache-resident cases unchanged while the DRAM copy halves: same (not faster)",
           rc == 0 and set(v.values()) == {"same"}, log)

    rc, v, log = run(tmp, "fail", rows(cases), rows(cases, status={"case7": "FAIL"}))
    expect("an agreement FAIL fails the comparison", rc == 1 and "FAIL" in log, log)

    rc, v, log = run(tmp, "new_gone", rows({"a": 1.0, "b": 1.0}), rows({"b": 1.0, "c": 1.0}))
    expect("new and gone cases", rc == 0 and v == {"a": "gone", "b": "same", "c": "new"}, log)

    rc, v, log = run(tmp, "other_cpu", rows(cases, cpu="cpu B"), rows(slow))
    expect("baseline of another CPU model, one case slower: reported, informational, exit 0",
           rc == 0 and v["case3"] == "slower" and "cpu A" in log and "informational" in log, log)

    rc, v, log = run(tmp, "other_cpu_fail", rows(cases, cpu="cpu B"),
                     rows(cases, status={"case7": "FAIL"}))
    expect("baseline of another CPU model: an agreement FAIL still fails", rc == 1, log)

    two = pd.concat([rows(cases), rows(slow, cpu="cpu B")], ignore_index=True)
    rc, v, log = run(tmp, "two_cpus_a", two, rows(slow))
    expect("baseline of two CPU models: this model's rows are used (case3 slower on cpu A)",
           rc == 1 and v["case3"] == "slower" and "informational" not in log, log)
    rc, v, log = run(tmp, "two_cpus_b", two, rows(slow, cpu="cpu B"))
    expect("baseline of two CPU models: this model's rows are used (same on cpu B)",
           rc == 0 and set(v.values()) == {"same"}, log)

    # Kernels: method:pass groups of cases (here 4 kernels of 6 shapes each).
    kcases = {f"k{j}:fwd:f32:nchw:s{i}": 10.0 + i + j for j in range(4) for i in range(6)}
    k1 = [r for r in kcases if r.startswith("k1:")]
    kslow = {r: t * (1.25 if r in k1 else 1.0) for r, t in kcases.items()}
    rc, v, log = run(tmp, "kernel_slower", rows(kcases), rows(kslow))
    expect("every case of one kernel 25 % slower: that kernel slower, exit 1",
           rc == 1 and "kernel slower" in log and "k1:fwd" in log
           and all(v[r] == "slower" for r in k1), log)

    one = dict(kcases, **{k1[2]: kcases[k1[2]] * 1.25})
    rc, v, log = run(tmp, "case_alone", rows(kcases), rows(one))
    expect("one case of a kernel 25 % slower: case slower, kernel same, reported, exit 0",
           rc == 0 and v[k1[2]] == "slower" and "kernel slower" not in log
           and "not failed" in log, log)

    rc, v, log = run(tmp, "case_alone_big", rows(kcases),
                     rows(dict(kcases, **{k1[2]: kcases[k1[2]] * 1.6})))
    expect("one case of a kernel 60 % slower (beyond --case-threshold): exit 1",
           rc == 1 and v[k1[2]] == "slower", log)

    # --recheck of a kernel: a stand-in for `normbench run` that writes the prepared re-run rows.
    for name, rerun, want_rc in [("kernel_recheck_noise", kcases, 0),
                                 ("kernel_recheck_confirmed", kslow, 1)]:
        prepared = tmp / f"{name}_rerun.csv"
        rows(rerun).to_csv(prepared, index=False)
        fake = tmp / f"{name}_normbench"
        fake.write_text("#!/bin/sh\nrepro=$2\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && "
                        f"{{ head -1 {prepared}; grep \"^$repro,\" {prepared}; }} > \"$2\"; "
                        "shift; done\n")
        fake.chmod(0o755)
        rc, v, log = run(tmp, name, rows(kcases), rows(kslow), "--recheck", str(fake))
        want = "kernel slower" if want_rc else "kernel noise"
        expect(f"--recheck of a slower kernel, re-runs {'slower' if want_rc else 'unchanged'}: "
               f"{want}, exit {want_rc}", rc == want_rc and want in log, log)

    # --recheck: a stand-in for `normbench run` that writes a prepared CSV to --out.
    for name, rerun, want_rc, want in [("recheck_noise", cases, 0, "noise"),
                                       ("recheck_confirmed", slow, 1, "slower")]:
        prepared = tmp / f"{name}_rerun.csv"
        rows(rerun).to_csv(prepared, index=False)
        fake = tmp / f"{name}_normbench"
        fake.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && cp "
                        f"{prepared} \"$2\"; shift; done\n")
        fake.chmod(0o755)
        rc, v, log = run(tmp, name, rows(cases), rows(slow), "--recheck", str(fake))
        expect(f"--recheck, re-runs {'slower' if want_rc else 'unchanged'}: case3 {want}",
               rc == want_rc and v["case3"] == want, log)

    p = subprocess.run([sys.executable, str(COMPARE), str(tmp / "missing.csv"),
                        str(tmp / "unchanged_new.csv")], capture_output=True, text=True)
    expect("a missing file: exit 2, one line naming it",
           p.returncode == 2 and "missing.csv" in p.stderr and p.stderr.count("\n") == 1, p.stderr)

    for f in FAILURES:
        print(f, file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
