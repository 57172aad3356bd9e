#!/usr/bin/env python3
"""Compare two normbench result sets and give each case a verdict: faster, same, slower, new, gone.

Usage:
  compare.py BASELINE.csv NEW.csv
  compare.py --base a.csv b.csv --new c.csv d.csv     (sharded runs are merged)
  options: --threshold 0.15 (relative slowdown that counts), --out report.csv

Rows are paired by (repro, backend, mode) over the timed rows (mode hot/cold). Times are
normalised by the non-temporal copy bandwidth measured paired with the same row
(time_us * copy_nt_gbps), so a machine whose memory bandwidth is lower today does not read as a
regression. A case is `slower` only when its normalised median grew by more than the threshold
AND the normalised [min, max] intervals of the repetitions do not overlap (the change is beyond
the run-to-run noise); `faster` symmetrically; otherwise `same`.

Exit status: 1 if the new results contain any agreement FAIL or any `slower` case, else 0;
2 on a usage error (missing file, missing columns).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

KEY = ["repro", "backend", "mode"]
NEEDED = KEY + ["status", "time_median_us", "time_min_us", "time_max_us", "copy_nt_gbps",
                "reason", "dist"]


def load(paths: list[str]) -> pd.DataFrame:
    frames = []
    for p in paths:
        if not Path(p).is_file():
            raise SystemExit(f"compare.py: error: {p}: no such file")
        df = pd.read_csv(p, keep_default_na=False, dtype=str)
        missing = [c for c in NEEDED if c not in df.columns]
        if missing:
            raise SystemExit(f"compare.py: error: {p}: missing columns {', '.join(missing)}")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates(subset=KEY + ["dist"], keep="last")


def timed(df: pd.DataFrame) -> pd.DataFrame:
    t = df[(df["mode"] != "-") & (df["time_median_us"] != "")].copy()
    for c in ["time_median_us", "time_min_us", "time_max_us", "copy_nt_gbps"]:
        t[c] = t[c].astype(float)
    bw = t["copy_nt_gbps"]
    t["norm_median"] = t["time_median_us"] * bw
    t["norm_min"] = t["time_min_us"] * bw
    t["norm_max"] = t["time_max_us"] * bw
    return t.set_index(KEY)


def verdicts(base: pd.DataFrame, new: pd.DataFrame, threshold: float) -> pd.DataFrame:
    b, n = timed(base), timed(new)
    rows = []
    for key in b.index.union(n.index):
        if key not in n.index:
            rows.append((*key, "gone", float("nan")))
            continue
        if key not in b.index:
            rows.append((*key, "new", float("nan")))
            continue
        rb, rn = b.loc[key], n.loc[key]
        ratio = rn["norm_median"] / rb["norm_median"]
        if ratio > 1 + threshold and rn["norm_min"] > rb["norm_max"]:
            v = "slower"
        elif ratio < 1 / (1 + threshold) and rn["norm_max"] < rb["norm_min"]:
            v = "faster"
        else:
            v = "same"
        rows.append((*key, v, ratio))
    return pd.DataFrame(rows, columns=KEY + ["verdict", "normalised_time_ratio"])


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="BASELINE.csv NEW.csv")
    ap.add_argument("--base", nargs="+", default=[], help="baseline CSVs (merged)")
    ap.add_argument("--new", nargs="+", default=[], help="new CSVs (merged)")
    ap.add_argument("--threshold", type=float, default=0.15)
    ap.add_argument("--out", help="write the per-case verdicts here as CSV")
    a = ap.parse_args(argv)
    base, new = list(a.base), list(a.new)
    if a.files:
        if len(a.files) != 2 or base or new:
            ap.error("give BASELINE.csv NEW.csv, or --base ... --new ...")
        base, new = [a.files[0]], [a.files[1]]
    if not base or not new:
        ap.error("need a baseline and a new result set")
    b, n = load(base), load(new)
    v = verdicts(b, n, a.threshold)
    if a.out:
        v.to_csv(a.out, index=False)
    fails = n[n["status"] == "FAIL"]
    for _, r in fails.iterrows():
        print(f"FAIL     {r['backend']:<14} {r['repro']} [{r['dist']}]: {r['reason']}")
    for _, r in v[v["verdict"].isin(["slower", "faster"])].iterrows():
        print(f"{r['verdict']:<8} {r['backend']:<14} {r['repro']} [{r['mode']}]: "
              f"normalised time x{r['normalised_time_ratio']:.3f}")
    counts = v["verdict"].value_counts().to_dict()
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ["faster", "same", "slower", "new", "gone"])
    print(f"compare: {len(v)} timed cases: {summary}; {len(fails)} agreement FAIL")
    return 1 if len(fails) or counts.get("slower", 0) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
