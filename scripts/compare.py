#!/usr/bin/env python3
"""Compare two normbench result sets and give each case a verdict: faster, same, slower, new, gone.

Usage:
  compare.py BASELINE.csv NEW.csv
  compare.py --base a.csv b.csv --new c.csv d.csv     (sharded runs are merged)
  options: --threshold 0.15     relative slowdown that counts (per case and per kernel)
           --case-threshold 0.5 a confirmed slowdown of one case alone fails only above this
           --recheck NORMBENCH  re-measure every `slower` case with this binary (`normbench run`)
                                and keep the verdict only if every re-run is slower too
                                (--recheck-runs 2, --recheck-min-time: the sweep's min_time)
           --out report.csv     the per-case verdicts

Rows are paired by (repro, backend, mode) over the timed rows (mode hot/cold).

Normalisation, so that a slower machine does not read as a regression:
  1. A case whose traffic reaches DRAM (bytes >= --dram-bytes, default 64 MiB) is timed against
     the non-temporal copy bandwidth measured paired with the same row: time_us x copy_nt_gbps.
     A case that lives in the caches keeps its raw time: the DRAM copy says nothing about it (on
     these hosts DRAM bandwidth swings 2x while cache-resident kernels do not move).
  2. The median over all paired cases of new/base is the run's drift (clock, cache sizes, a
     different CPU model); each case is judged on (new/base)/drift. A uniform change of every case
     is reported as drift, with a warning when it exceeds the threshold, but is not attributed to
     any case: from timings alone it cannot be told apart from a slower machine.
A case is `slower` only when its drift-corrected median grew by more than the threshold AND its
interquartile ranges do not overlap (new p25 > base p75, both drift-corrected), so the change is
beyond the run-to-run noise; `faster` symmetrically; otherwise `same`. With --recheck, a `slower`
case is re-measured --recheck-runs times (same repetitions and threads as the new row) and stays
`slower` only if every re-run passes the same test; otherwise it is reported as `noise`.

Kernels: the cases of one (backend, mode, method:pass) exercise one kernel over several shapes,
dtypes and layouts. A kernel is `slower` when the median of its cases' drift-corrected ratios
exceeds 1 + threshold and more than half of its cases are `slower` by the test above; with --recheck all its cases are re-measured --recheck-runs times and the
verdict stays only if each re-run's median does too. This is what fails a run: in unchanged runs
on these hosts, a single case of a few microseconds was confirmed 17-24 % slower by its re-runs
(2 of 252 cases), while no kernel's median moved by more than 11 %. A single case fails the run
only when it is confirmed slower by more than --case-threshold (default 50 %); below that it is
reported and not failed, so a regression confined to one shape is seen but not enforced.

Per-kernel speed is not comparable across CPU models (one kernel gains more from a wider core or
a larger cache than another, which the drift does not correct). So when the rows carry a
`cpu_model`, the baseline may hold runs of several models (scripts/regression.sh --refresh
replaces only this machine's), and only the baseline rows of the new run's model are used. When
the baseline has none of that model, every verdict is still printed, but slowdowns are
informational (a warning says so) and only agreement FAILs fail.

Exit status: 1 if the new results contain any agreement FAIL, or (when the baseline was measured
on the same CPU model) a `slower` kernel or a case `slower` beyond --case-threshold, else 0; 2 on a usage error (missing file, missing
columns).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

KEY = ["repro", "backend", "mode"]
TIMES = ["time_median_us", "time_p25_us", "time_p75_us", "time_min_us", "time_max_us"]
NEEDED = KEY + TIMES + ["status", "copy_nt_gbps", "bytes", "reason", "dist", "repetitions",
                        "threads"]


def usage_error(message: str) -> None:
    print(f"compare.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load(paths: list[str]) -> pd.DataFrame:
    frames = []
    for p in paths:
        if not Path(p).is_file():
            usage_error(f"{p}: no such file")
        df = pd.read_csv(p, keep_default_na=False, dtype=str)
        missing = [c for c in NEEDED if c not in df.columns]
        if missing:
            usage_error(f"{p}: missing columns {', '.join(missing)}")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    model = ["cpu_model"] if "cpu_model" in df.columns else []
    return df.drop_duplicates(subset=KEY + ["dist"] + model, keep="last")


def same_cpu(bdf: pd.DataFrame, ndf: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The baseline rows measured on the new run's CPU model(s), and "" ; or, when the baseline
    has none of them, all its rows and the new model's name (the comparison is then
    informational). Rows without a cpu_model column count as one unknown model."""
    if "cpu_model" not in bdf.columns or "cpu_model" not in ndf.columns:
        return bdf, ""
    models = set(ndf["cpu_model"])
    same = bdf[bdf["cpu_model"].isin(models)]
    if len(same):
        return same, ""
    return bdf, ", ".join(sorted(models))


def timed(df: pd.DataFrame, dram_bytes: float) -> pd.DataFrame:
    """Timed rows indexed by KEY, with norm_{median,p25,p75} (see the module docstring)."""
    t = df[(df["mode"] != "-") & (df["time_median_us"] != "")].copy()
    for c in TIMES + ["copy_nt_gbps", "bytes"]:
        t[c] = t[c].astype(float)
    scale = t["copy_nt_gbps"].where(t["bytes"] >= dram_bytes, 1.0)
    for q in ["median", "p25", "p75"]:
        t[f"norm_{q}"] = t[f"time_{q}_us"] * scale
    return t.set_index(KEY)


def judge(rb: pd.Series, rn: pd.Series, drift: float, threshold: float) -> tuple[str, float]:
    ratio = rn["norm_median"] / rb["norm_median"] / drift
    if ratio > 1 + threshold and rn["norm_p25"] / drift > rb["norm_p75"]:
        return "slower", ratio
    if ratio < 1 / (1 + threshold) and rn["norm_p75"] / drift < rb["norm_p25"]:
        return "faster", ratio
    return "same", ratio


def verdicts(b: pd.DataFrame, n: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, float]:
    common = b.index.intersection(n.index)
    ratios = n.loc[common, "norm_median"] / b.loc[common, "norm_median"]
    drift = float(ratios.median()) if len(ratios) else 1.0
    rows = []
    for key in b.index.union(n.index):
        if key not in n.index:
            rows.append((*key, "gone", float("nan")))
        elif key not in b.index:
            rows.append((*key, "new", float("nan")))
        else:
            rows.append((*key, *judge(b.loc[key], n.loc[key], drift, threshold)))
    return pd.DataFrame(rows, columns=KEY + ["verdict", "normalised_time_ratio"]), drift


def kernel_of(repro: str) -> str:
    """The kernel a case exercises: method:pass of its repro string (the whole string if it has
    no such fields)."""
    parts = repro.split(":")
    return ":".join(parts[:2]) if len(parts) >= 2 else repro


def kernel_verdicts(v: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per (backend, mode, kernel): the median drift-corrected ratio over its paired cases;
    `slower` when it exceeds 1 + threshold and more than half its cases are `slower` (beyond their
    noise), `faster` symmetrically."""
    paired = v[v["normalised_time_ratio"].notna()].assign(kernel=v["repro"].map(kernel_of))
    paired["is_slower"] = paired["verdict"] == "slower"
    paired["is_faster"] = paired["verdict"] == "faster"
    g = (paired.groupby(["backend", "mode", "kernel"])
         .agg(median=("normalised_time_ratio", "median"), count=("normalised_time_ratio", "size"),
              slower=("is_slower", "sum"), faster=("is_faster", "sum")).reset_index())
    g["verdict"] = "same"
    g.loc[(g["median"] > 1 + threshold) & (2 * g["slower"] > g["count"]), "verdict"] = "slower"
    g.loc[(g["median"] < 1 / (1 + threshold)) & (2 * g["faster"] > g["count"]), "verdict"] = "faster"
    return g.drop(columns=["slower", "faster"])


class Rerun:
    """Re-measures cases with `normbench run` (same repetitions and threads as the new row)."""

    def __init__(self, binary: str, min_time: float | None, dram_bytes: float):
        self.binary, self.min_time, self.dram_bytes = binary, min_time, dram_bytes

    def __call__(self, key: tuple, row: pd.Series) -> pd.Series:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "recheck.csv")
            cmd = [self.binary, "run", key[0], "--backends", key[1], "--modes", key[2],
                   "--dists", "normal", "--repetitions", str(row["repetitions"]),
                   "--threads", str(row["threads"]), "--quiet", "--out", out]
            if self.min_time:
                cmd += ["--min-time", str(self.min_time)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"compare.py: error: re-run failed: {' '.join(cmd)}\n"
                                 f"{res.stderr[-2000:]}")
            return timed(load([out]), self.dram_bytes).loc[key]


def recheck(rerun: Rerun, runs: int, b: pd.DataFrame, n: pd.DataFrame, v: pd.DataFrame,
            drift: float, threshold: float) -> None:
    """Re-measures each `slower` case; keeps `slower` only if every re-run is slower too."""
    for i in v.index[v["verdict"] == "slower"]:
        key = tuple(v.loc[i, KEY])
        for _ in range(runs):
            if judge(b.loc[key], rerun(key, n.loc[key]), drift, threshold)[0] != "slower":
                v.loc[i, "verdict"] = "noise"
                break


def recheck_kernels(rerun: Rerun, runs: int, b: pd.DataFrame, n: pd.DataFrame, v: pd.DataFrame,
                    k: pd.DataFrame, drift: float, threshold: float) -> None:
    """Re-measures every case of each `slower` kernel; keeps `slower` only if, in every re-run,
    the median ratio over its cases is still above 1 + threshold."""
    kernels = v["repro"].map(kernel_of)
    for i in k.index[k["verdict"] == "slower"]:
        sel = v[(v["backend"] == k.loc[i, "backend"]) & (v["mode"] == k.loc[i, "mode"])
                & (kernels == k.loc[i, "kernel"]) & v["normalised_time_ratio"].notna()]
        for _ in range(runs):
            ratios = []
            for key in map(tuple, sel[KEY].values):
                again = rerun(key, n.loc[key])
                ratios.append(again["norm_median"] / b.loc[key, "norm_median"] / drift)
            if float(pd.Series(ratios).median()) <= 1 + threshold:
                k.loc[i, "verdict"] = "noise"
                break


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="BASELINE.csv NEW.csv")
    ap.add_argument("--base", nargs="+", default=[], help="baseline CSVs (merged)")
    ap.add_argument("--new", nargs="+", default=[], help="new CSVs (merged)")
    ap.add_argument("--threshold", type=float, default=0.15)
    ap.add_argument("--case-threshold", type=float, default=0.5,
                    help="a confirmed slowdown of a single case fails only above this")
    ap.add_argument("--dram-bytes", type=float, default=64 * 2**20,
                    help="cases moving at least this many bytes are normalised by the copy bandwidth")
    ap.add_argument("--recheck", metavar="NORMBENCH", help="re-measure slower cases with this binary")
    ap.add_argument("--recheck-runs", type=int, default=2)
    ap.add_argument("--recheck-min-time", type=float,
                    help="seconds per repetition of a re-run (the sweep's min_time)")
    ap.add_argument("--out", help="write the per-case verdicts here as CSV")
    a = ap.parse_args(argv)
    base, new = list(a.base), list(a.new)
    if a.files:
        if len(a.files) != 2 or base or new:
            ap.error("give BASELINE.csv NEW.csv, or --base ... --new ...")
        base, new = [a.files[0]], [a.files[1]]
    if not base or not new:
        ap.error("need a baseline and a new result set")
    if a.recheck and not os.access(a.recheck, os.X_OK):
        ap.error(f"--recheck {a.recheck}: not an executable")
    bdf, ndf = load(base), load(new)
    bdf, foreign = same_cpu(bdf, ndf)
    b, n = timed(bdf, a.dram_bytes), timed(ndf, a.dram_bytes)
    v, drift = verdicts(b, n, a.threshold)
    k = kernel_verdicts(v, a.threshold)
    if a.recheck:
        rerun = Rerun(a.recheck, a.recheck_min_time, a.dram_bytes)
        recheck(rerun, a.recheck_runs, b, n, v, drift, a.threshold)
        recheck_kernels(rerun, a.recheck_runs, b, n, v, k, drift, a.threshold)
    if a.out:
        v.to_csv(a.out, index=False)
    fails = ndf[ndf["status"] == "FAIL"]
    for _, r in fails.iterrows():
        print(f"FAIL     {r['backend']:<14} {r['repro']} [{r['dist']}]: {r['reason']}")
    for _, r in v[v["verdict"].isin(["slower", "faster", "noise"])].iterrows():
        what = {"noise": "slower, not confirmed by re-runs"}.get(r["verdict"], r["verdict"])
        print(f"{r['verdict']:<8} {r['backend']:<14} {r['repro']} [{r['mode']}]: "
              f"x{r['normalised_time_ratio']:.3f} after drift ({what})")
    for _, r in k[k["verdict"] != "same"].iterrows():
        what = {"noise": "slower, not confirmed by re-runs"}.get(r["verdict"], r["verdict"])
        print(f"kernel {r['verdict']:<8} {r['backend']:<14} {r['kernel']} [{r['mode']}]: median "
              f"x{r['median']:.3f} after drift over {r['count']} cases ({what})")
    counts = v["verdict"].value_counts().to_dict()
    summary = ", ".join(f"{counts.get(key, 0)} {key}"
                        for key in ["faster", "same", "slower", "noise", "new", "gone"])
    kcounts = k["verdict"].value_counts().to_dict()
    ksummary = ", ".join(f"{kcounts.get(key, 0)} {key}"
                         for key in ["faster", "same", "slower", "noise"])
    print(f"compare: {len(v)} timed cases: {summary}; {len(k)} kernels: {ksummary}; "
          f"{len(fails)} agreement FAIL; run drift x{drift:.3f} (median new/base)")
    if abs(drift - 1) > a.threshold:
        print(f"compare: warning: every case moved by x{drift:.3f} together: a different or busier "
              "machine, or a change common to all cases; not judged per case")
    if foreign:
        print(f"compare: warning: the baseline has no row measured on this CPU model ({foreign}): "
              "timing verdicts are informational, only agreement FAILs fail; record one on this "
              "kind of machine with scripts/regression.sh --refresh")
        return 1 if len(fails) else 0
    big = v[(v["verdict"] == "slower") & (v["normalised_time_ratio"] > 1 + a.case_threshold)]
    slow_kernels = set(map(tuple, k.loc[k["verdict"] == "slower", ["backend", "mode", "kernel"]]
                           .values))
    in_slow_kernel = [(r["backend"], r["mode"], kernel_of(r["repro"])) in slow_kernels
                      for _, r in v.iterrows()]
    alone = int(((v["verdict"] == "slower") & ~pd.Series(in_slow_kernel, index=v.index)
                 & (v["normalised_time_ratio"] <= 1 + a.case_threshold)).sum())
    if alone:
        print(f"compare: {alone} case(s) slower by up to {a.case_threshold:.0%} while their "
              "kernel is not: reported, not failed (single cases of a few microseconds move by "
              "that much for minutes on these hosts)")
    return 1 if len(fails) or len(big) or kcounts.get("slower", 0) else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
