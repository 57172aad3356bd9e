#!/usr/bin/env python3
"""The README's CPU roofline table, from a run of configs/cpu_roofline.toml.

    scripts/roofline_table.py [CSV ...]   (default: results/cpu/cpu_roofline.csv)

Per (method, pass, layout) and dtype: the fraction of the paired non-temporal copy bandwidth
(`frac_copy_nt`, bytes by the traffic model of CONVENTIONS section 3) reached by `openmp` and
`avx512`. Several rows of one case (repeated runs appended to one CSV) are summarised by their
median. Then the goals of the CPU issue, judged on the best of the two backends per case:
forward (fwd_train) 0.80, backward 0.70, BatchNorm inference 0.85, any 16-bit dtype 0.70 (the
16-bit goal replaces the others for bf16 and f16); other inference passes are held to the
forward goal. Lists the cases that miss, by how much. Prints Markdown; exits 1 on unreadable
input, 0 otherwise (a missed goal is a result, not an error).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

BACKENDS = ("openmp", "avx512")
DTYPES = ("f32", "bf16", "f16")
KEY = ["method", "pass", "layout"]
METHOD_ORDER = ["batchnorm", "layernorm", "rmsnorm", "groupnorm", "instancenorm"]
PASS_ORDER = ["fwd_train", "fwd_infer", "bwd"]


def goal(method: str, pass_: str, dtype: str) -> float:
    """The issue's goal for one case (fraction of the paired non-temporal copy)."""
    if dtype in ("bf16", "f16"):
        return 0.70
    if pass_ == "bwd":
        return 0.70
    if pass_ == "fwd_infer" and method == "batchnorm":
        return 0.85
    return 0.80


def load(paths: list[Path]) -> pd.DataFrame:
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    df = df[df["backend"].isin(BACKENDS) & (df["status"] != "SKIP")]
    if df.empty:
        raise ValueError("no openmp/avx512 rows")
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Median frac_copy_nt per (method, pass, layout, dtype, backend)."""
    return (df.groupby(KEY + ["dtype", "backend"], as_index=False)
              .agg(frac=("frac_copy_nt", "median"), rows=("frac_copy_nt", "size"),
                   fails=("status", lambda s: int((s == "FAIL").sum()))))


def order(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(_m=df["method"].map(METHOD_ORDER.index),
                     _p=df["pass"].map(PASS_ORDER.index)).sort_values(
                         ["_m", "_p", "layout"]).drop(columns=["_m", "_p"])


def table(s: pd.DataFrame) -> str:
    head = "| method | pass | layout | " + " | ".join(
        f"{d} {b}" for d in DTYPES for b in BACKENDS) + " |"
    lines = [head, "|" + "---|" * (3 + len(DTYPES) * len(BACKENDS))]
    keys = order(s[KEY].drop_duplicates())
    for _, k in keys.iterrows():
        sel = s[(s["method"] == k["method"]) & (s["pass"] == k["pass"]) &
                (s["layout"] == k["layout"])]
        cells = [k["method"], k["pass"], k["layout"]]
        for d in DTYPES:
            for b in BACKENDS:
                v = sel[(sel["dtype"] == d) & (sel["backend"] == b)]["frac"]
                cells.append(f"{v.iloc[0]:.2f}" if len(v) else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(s: pd.DataFrame) -> str:
    best = s.sort_values("frac", ascending=False).groupby(KEY + ["dtype"], as_index=False).first()
    best["goal"] = [goal(m, p, d) for m, p, d in zip(best["method"], best["pass"], best["dtype"])]
    best["met"] = best["frac"] >= best["goal"]
    missed = order(best[~best["met"]]).assign(short=lambda d: d["goal"] - d["frac"])
    out = [f"Goals met: {int(best['met'].sum())} of {len(best)} (method, pass, layout, dtype) "
           "cases, best of openmp/avx512."]
    if len(missed):
        out.append("")
        out.append("| method | pass | layout | dtype | best | backend | goal | short by |")
        out.append("|---|---|---|---|---|---|---|---|")
        for _, r in missed.iterrows():
            out.append(f"| {r['method']} | {r['pass']} | {r['layout']} | {r['dtype']} | "
                       f"{r['frac']:.2f} | {r['backend']} | {r['goal']:.2f} | "
                       f"{r['short']:.2f} |")
    return "\n".join(out)


def bandwidth(df: pd.DataFrame) -> str:
    nt, cp = df["copy_nt_gbps"], df["copy_gbps"]
    return (f"Paired copy over the run: non-temporal median {nt.median():.1f} GB/s "
            f"(range {nt.min():.1f}-{nt.max():.1f}), ordinary median {cp.median():.1f} GB/s; "
            f"{len(df)} rows, {int((df['status'] == 'FAIL').sum())} FAIL; "
            f"CPU {', '.join(sorted(df['cpu_model'].astype(str).unique()))}, "
            f"threads {', '.join(str(t) for t in sorted(df['threads'].unique()))}.")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path,
                    default=[Path(__file__).resolve().parent.parent / "results/cpu/cpu_roofline.csv"])
    args = ap.parse_args(argv)
    try:
        df = load(args.csv)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as e:
        print(f"roofline_table.py: error: {e}", file=sys.stderr)
        return 1
    s = summarise(df)
    print(table(s))
    print()
    print(bandwidth(df))
    print()
    print(goals(s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
