#!/usr/bin/env python3
"""The README's peers table, from a peers sweep CSV (results/peers/peers.csv by default).

    scripts/peers_table.py [CSV ...]

Per (method, pass, layout), over the cases of the sweep (repro, input distribution `normal`, mode
hot, every dtype): the median fraction of the paired non-temporal copy bandwidth reached by our
best CPU backend (the faster of `openmp` and `avx512` in each case), by `onednn` and by `pytorch`,
and the median and range of the speed-up of ours over each peer (peer time_median_us / ours, same
case). Timing rows count whatever their agreement status (a peer's FAIL row is still a time); the
peers' FAIL rows (both input distributions) are counted in the last column. Prints Markdown.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

OURS = ("openmp", "avx512")
PEERS = ("onednn", "pytorch")
KEY = ["method", "pass", "layout"]


def load(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def timed(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["dist"] == "normal") & (df["mode"] == "hot") & (df["status"] != "SKIP")]


def best_ours(df: pd.DataFrame) -> pd.DataFrame:
    ours = df[df["backend"].isin(OURS)].sort_values(["time_median_us", "backend"], kind="stable")
    return ours.groupby("repro", as_index=False).first()


def fmt_range(s: pd.Series) -> str:
    if s.empty:
        return "–"
    return f"{s.median():.2f} ({s.min():.2f}–{s.max():.2f})"


def table(full: pd.DataFrame) -> str:
    df = timed(full)
    ours = best_ours(df)
    fails = full[full["status"] == "FAIL"]
    lines = ["| method | pass | layout | cases | frac ours | frac oneDNN | frac PyTorch "
             "| ours / oneDNN | ours / PyTorch | peer FAIL rows |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, sel in ours.groupby(KEY, sort=True):
        cells = [*key, str(len(sel)), f"{sel['frac_copy_nt'].median():.2f}"]
        ratios = []
        for peer in PEERS:
            p = df[(df["backend"] == peer)].set_index("repro")
            joined = sel.join(p[["time_median_us", "frac_copy_nt"]], on="repro", rsuffix="_peer",
                              how="inner")
            cells.append(f"{joined['frac_copy_nt_peer'].median():.2f}" if len(joined) else "–")
            ratios.append(fmt_range(joined["time_median_us_peer"] / joined["time_median_us"]))
        nfail = fails[fails["backend"].isin(PEERS) & (fails[KEY] == pd.Series(key, index=KEY))
                      .all(axis=1)]
        cells += ratios + [str(len(nfail))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="*", type=Path, default=[Path("results/peers/peers.csv")])
    args = ap.parse_args(argv)
    try:
        df = load(args.csv)
    except (OSError, KeyError, pd.errors.ParserError) as e:
        print(f"peers_table.py: error: {e}", file=sys.stderr)
        return 2
    if not timed(df)["backend"].isin(OURS).any():
        print("peers_table.py: error: no timed row of openmp/avx512 (dist normal, mode hot)",
              file=sys.stderr)
        return 2
    print(table(df))
    copy = timed(df)["copy_nt_gbps"]
    print(f"\npaired NT copy over the run: median {copy.median():.1f} GB/s, "
          f"range {copy.min():.1f}-{copy.max():.1f}; threads {sorted(df['threads'].unique())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
