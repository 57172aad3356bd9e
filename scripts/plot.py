"""Figures from normbench results CSVs.

Reads one or more results CSVs written by `normbench run` / `normbench sweep` (one row per case x
backend x input distribution x timing mode; the schema is suites/core/results_csv.cpp). The files
are concatenated in the order given, so the shards of a split sweep can be plotted together; a
row repeated across files (same backend, repro, dist, mode and threads) is kept once, the last.

Writes one file per figure and format into the output directory (default: <dir of the first
CSV>/plots), e.g. time_vs_batch.png and time_vs_batch.svg:

  time_vs_batch    median time (p25-p75 bars) against batch size n, log-log, one panel per
                   (method, pass), one line per backend / dtype / layout / shape
  gbps_vs_batch    the same with effective GB/s, plus the panel's median paired non-temporal
                   copy bandwidth as a dashed grey line
  frac_bandwidth   effective bandwidth as a fraction of the paired NT copy, bars per case and
                   backend, one panel per (method, pass)
  agreement        max_rel_err / threshold per backend, dtype and input distribution, FAIL rows
                   highlighted

A figure whose data is missing (e.g. no shape timed at two batch sizes) is not drawn; a line
'skipped: <figure>: <why>' says so. Output is deterministic (fixed SVG hash salt, no dates or
software versions in the files), so re-running on the same CSVs gives identical bytes.

Run with the project's virtual environment:

    .venv/bin/python scripts/plot.py results/run.csv [more.csv ...] [--out DIR] [--formats png,svg]

Exit status: 0 on success (including skipped figures), 1 when a CSV is missing, unreadable or
lacks required columns, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Shared with scripts/figures.py; importing it first selects the Agg backend and fixes the SVG
# hash salt.
from nbplot_common import (
    DIST_COLORS, FAIL_COLOR, LINESTYLES, MARKERS, MIN_PANEL_CASES, ROW_METHODS, VARIANT_COLUMNS,
    InputError, Skip, backend_colors, case_labels, cases_in_panel, cycle, flow_grid,
    load_results, log2_batch_axis, panel_grid, panel_keys, panel_rows, plain_log_y, rank,
    save_figure, section_legend, shape_label, timed_rows, variant_label, varying,
)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

FORMATS = ("png", "svg")  # what --formats accepts

# Everything but n that defines one line of a *_vs_batch figure.
LINE_KEY = ["method", "pass", "backend", "dtype", "layout", "c", "h", "w", "num_groups",
            *VARIANT_COLUMNS]


def batch_series(timed: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The lines of the *_vs_batch figures: rows grouped by LINE_KEY (same problem but for n),
    sorted by n, keeping groups timed at >= 2 batch sizes."""
    series = []
    for key, g in timed.groupby(LINE_KEY, sort=True):
        if g["n"].nunique() >= 2:
            series.append((key, g.sort_values("n")))
    return series


# ---------------------------------------------------------------------------------------------
# Figures 1 and 2: a value against batch size


@dataclass(frozen=True)
class BatchMetric:
    """What a *_vs_batch figure plots: the column and its p25/p75 bounds (derived columns)."""

    value: str
    low: str
    high: str
    ylabel: str
    title: str


TIME_METRIC = BatchMetric("time_median_us", "time_p25_us", "time_p75_us", "median time (us)",
                          "Median time against batch size (bars: p25-p75)")
GBPS_METRIC = BatchMetric("gbps", "gbps_low", "gbps_high", "effective GB/s",
                          "Effective bandwidth against batch size (bars: from p75/p25 time)")


def with_gbps_bounds(df: pd.DataFrame) -> pd.DataFrame:
    """Adds gbps_low/gbps_high: the traffic-model bytes over the p75 and p25 times."""
    df = df.copy()
    df["gbps_low"] = df["bytes"] / df["time_p75_us"] / 1e3
    df["gbps_high"] = df["bytes"] / df["time_p25_us"] / 1e3
    return df


def plot_time_vs_batch(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    return plot_vs_batch(df, colors, TIME_METRIC, copy_reference=False)


def plot_gbps_vs_batch(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    return plot_vs_batch(with_gbps_bounds(df), colors, GBPS_METRIC, copy_reference=True)


def plot_vs_batch(df: pd.DataFrame, colors: dict[str, str], metric: BatchMetric,
                  copy_reference: bool) -> Figure:
    timed = timed_rows(df)
    timed = timed[timed[metric.value].notna()]
    if timed.empty:
        raise Skip(f"no timed rows with {metric.value}")
    series = batch_series(timed)
    if not series:
        raise Skip("no shape was timed at >= 2 batch sizes n (with c, h, w, num_groups equal)")

    plotted = pd.concat([g for _, g in series])
    styles = LineStyles.of(series, plotted)
    fig, panels = panel_grid(panel_keys(plotted), ncols=3, panel_size=(4.4, 3.4),
                             extra_width=2.2)
    for key, g in series:
        first = g.iloc[0]
        y = g[metric.value].to_numpy()
        yerr = np.vstack([y - g[metric.low].to_numpy(), g[metric.high].to_numpy() - y])
        panels[(first["method"], first["pass"])].errorbar(
            g["n"], y, yerr=np.nan_to_num(np.clip(yerr, 0, None)),
            color=colors[first["backend"]],
            linestyle=styles.dash[(first["dtype"], first["layout"])],
            marker=styles.marker[styles.variant[key]],
            markersize=4, linewidth=1.2, capsize=2, elinewidth=0.8)
    for key, ax in panels.items():
        rows = panel_rows(plotted, key)
        if copy_reference:
            draw_copy_reference(ax, rows)
        log2_batch_axis(ax, rows["n"])
        plain_log_y(ax)
        ax.set_xlabel("tokens t" if key[0] in ROW_METHODS else "batch size n", fontsize=9)
        ax.set_ylabel(metric.ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(metric.title, fontsize=11)
    section_legend(fig, styles.legend(colors, sorted(plotted["backend"].unique()),
                                      copy_reference))
    return fig


@dataclass
class LineStyles:
    """How a *_vs_batch line is told apart within its panel: colour = backend (figure-wide
    `colors`), dash = (dtype, layout), marker = shape plus any varying option (e.g. 'cold')."""

    variant: dict[tuple, str]  # line key -> 'c64h56w56 cold'
    dash: dict[tuple[str, str], object]
    marker: dict[str, str]
    variant_title: str  # 'shape', or e.g. 'shape / mode' when modes vary

    @classmethod
    def of(cls, series: list[tuple[tuple, pd.DataFrame]], plotted: pd.DataFrame) -> LineStyles:
        variants = varying(plotted, VARIANT_COLUMNS)
        variant = {key: " ".join([shape_label(g.iloc[0]), variant_label(g.iloc[0], variants)])
                   .strip() for key, g in series}
        pairs = sorted({(g.iloc[0]["dtype"], g.iloc[0]["layout"]) for _, g in series})
        return cls(variant=variant, dash=cycle(pairs, LINESTYLES),
                   marker=cycle(sorted(set(variant.values())), MARKERS),
                   variant_title=" / ".join(["shape", *variants]))

    def legend(self, colors: dict[str, str], backends: list[str], copy_reference: bool
               ) -> dict[str, list[tuple[str, Line2D]]]:
        sections = {
            "backend": [(b, Line2D([], [], color=colors[b], linewidth=2)) for b in backends],
            "dtype / layout": [(f"{d} / {l}", Line2D([], [], color="black", linestyle=s))
                               for (d, l), s in self.dash.items()],
            self.variant_title: [(v, Line2D([], [], color="black", linestyle="none", marker=m,
                                            markersize=5)) for v, m in self.marker.items()],
        }
        if copy_reference:
            sections["reference"] = [("median paired\nNT copy GB/s",
                                      Line2D([], [], color="grey", linestyle="--"))]
        return sections


def draw_copy_reference(ax: Axes, rows: pd.DataFrame) -> None:
    """Dashed grey line at the median paired NT-copy bandwidth of the panel's rows."""
    copy = rows["copy_nt_gbps"].median()
    if np.isfinite(copy):
        ax.axhline(copy, color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"NT copy {copy:.3g}", (1, copy), xycoords=("axes fraction", "data"),
                    xytext=(-3, -3), textcoords="offset points", ha="right", va="top",
                    fontsize=7, color="dimgrey")


# ---------------------------------------------------------------------------------------------
# Figure 3: fraction of the NT copy bandwidth per case


def plot_frac_bandwidth(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    timed = timed_rows(df)
    timed = timed[timed["frac_copy_nt"].notna()]
    if timed.empty:
        raise Skip("no timed rows with frac_copy_nt")
    timed["case"] = case_labels(timed)
    backends = sorted(timed["backend"].unique())
    cases = {key: cases_in_panel(timed, key) for key in panel_keys(timed)}
    spans = {key: max(MIN_PANEL_CASES, len(kept)) for key, (kept, _) in cases.items()}
    capacity = max(max(spans.values()), 3 * MIN_PANEL_CASES)
    width = min(24.0, max(9.0, 0.11 * (len(backends) + 1) * capacity))  # inches, legend aside
    fig, panels = flow_grid(spans, capacity, unit_width=width / capacity, row_height=3.8,
                            extra_width=1.6)
    for key, ax in panels.items():
        draw_frac_panel(ax, timed, key, *cases[key], backends, colors)
    fig.suptitle("Effective bandwidth / paired non-temporal copy bandwidth", fontsize=11)
    section_legend(fig, {"backend": [(b, Line2D([], [], color=colors[b], linewidth=6))
                                     for b in backends]})
    return fig


def draw_frac_panel(ax: Axes, timed: pd.DataFrame, key: tuple[str, str], cases: list[str],
                    total: int, backends: list[str], colors: dict[str, str]) -> None:
    """Bars of frac_copy_nt for each case and backend, a dashed line at 1 (copy speed)."""
    rows = panel_rows(timed, key)
    values = rows[rows["case"].isin(cases)].pivot_table(
        index="case", columns="backend", values="frac_copy_nt", aggfunc="median"
    ).reindex(index=cases, columns=backends)
    x = np.arange(len(cases))
    bar = 0.8 / len(backends)
    for i, b in enumerate(backends):
        ax.bar(x + (i - (len(backends) - 1) / 2) * bar, values[b].to_numpy(), width=bar,
               color=colors[b], label=b)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, cases, rotation=90, fontsize=7 if len(cases) > 12 else 8)
    ax.set_xlim(-0.6, len(cases) - 0.4)
    ax.set_ylim(0, max(1.1, float(np.nanmax(values.to_numpy())) * 1.08))
    ax.set_ylabel("GB/s / NT copy GB/s", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(False, axis="x")
    if total > len(cases):
        ax.set_title(f"{key[0]} {key[1]} (largest {len(cases)} of {total} cases by bytes)",
                     fontsize=10)


# ---------------------------------------------------------------------------------------------
# Figure 4: agreement with the fp64 reference


def agreement_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One PASS/FAIL row per (backend, repro, dist) (the timing modes repeat the agreement
    columns), a FAIL preferred, with ratio = max_rel_err / threshold: NaN where there is no
    usable error (a backend that threw reports threshold 0), inf for a NaN/inf output."""
    rows = df[(df["status"] == "FAIL") | ((df["status"] == "PASS") & (df["threshold"] > 0))]
    rows = rows.copy()
    rows = rows.sort_values("status", key=lambda s: s == "FAIL", kind="stable")
    rows = rows.drop_duplicates(["backend", "repro", "dist"], keep="last")
    rows["ratio"] = (rows["max_rel_err"] / rows["threshold"]).where(rows["threshold"] > 0)
    return rows


def plot_agreement(df: pd.DataFrame, _colors: dict[str, str]) -> Figure:
    """Points coloured by input distribution (not backend: the backends are the x axis)."""
    rows = agreement_rows(df)
    if rows.empty:
        raise Skip("no PASS/FAIL rows with a threshold")
    categories = sorted({(b, d) for b, d in zip(rows["backend"], rows["dtype"])},
                        key=lambda bd: (bd[0], rank(["f32", "bf16", "f16"], bd[1]), bd[1]))
    dists = sorted(rows["dist"].unique(), key=lambda d: (rank(list(DIST_COLORS), d), d))
    floor, top = ratio_limits(rows["ratio"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 2.5), 4.6),
                           layout="constrained")
    rng = np.random.default_rng(0)  # jitter: fixed seed keeps the output deterministic
    slot = 0.8 / len(dists)
    for ci, (backend, dtype) in enumerate(categories):
        for di, dist in enumerate(dists):
            sel = rows[(rows["backend"] == backend) & (rows["dtype"] == dtype)
                       & (rows["dist"] == dist)]
            x0 = ci + (di - (len(dists) - 1) / 2) * slot
            draw_strip(ax, sel, x0, slot, floor, top, dist, rng)
    ax.axhline(1.0, color=FAIL_COLOR, linewidth=1, linestyle="--")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, top * 2)
    ax.set_xticks(range(len(categories)), [f"{b}\n{d}" for b, d in categories], fontsize=8)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_ylabel("max_rel_err / threshold", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    nfail = int((rows["status"] == "FAIL").sum())
    ax.set_title(f"Agreement with the fp64 reference: {len(rows)} results, {nfail} FAIL",
                 fontsize=11)
    ax.legend(handles=agreement_legend(rows, dists, floor), fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def ratio_limits(ratio: pd.Series) -> tuple[float, float]:
    """The floor where exact (0) results are drawn, and the top where results without a finite
    ratio are drawn: a decade beyond the finite positive ratios (and the threshold, 1)."""
    positive = ratio[np.isfinite(ratio) & (ratio > 0)]
    low = min(float(positive.min()), 1.0) if len(positive) else 1.0
    high = max(float(positive.max()), 1.0) if len(positive) else 1.0
    return low / 10, high * 10


def draw_strip(ax: Axes, sel: pd.DataFrame, x0: float, slot: float, floor: float, top: float,
               dist: str, rng: np.random.Generator) -> None:
    """One dist's results of one (backend, dtype): a box when there are >= 5 finite values, the
    points jittered over it, FAIL points as large red crosses."""
    y = sel["ratio"].to_numpy(dtype=float)
    y = np.where(~np.isfinite(y), top, np.where(y <= 0, floor, y))
    finite = sel["ratio"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if len(finite) >= 5:
        ax.boxplot(finite, positions=[x0], widths=slot * 0.8, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "grey"},
                   whiskerprops={"color": "grey"}, capprops={"color": "grey"},
                   manage_ticks=False)
    x = x0 + rng.uniform(-0.3, 0.3, len(y)) * slot
    fail = (sel["status"] == "FAIL").to_numpy()
    ax.scatter(x[~fail], y[~fail], s=10, color=DIST_COLORS.get(dist, "tab:green"), alpha=0.7,
               linewidths=0, zorder=3)
    ax.scatter(x[fail], y[fail], s=40, marker="X", color=FAIL_COLOR, edgecolors="black",
               linewidths=0.5, zorder=4)


def agreement_legend(rows: pd.DataFrame, dists: list[str], floor: float) -> list[Line2D]:
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=4,
                      color=DIST_COLORS.get(d, "tab:green"), label=f"PASS, {d}") for d in dists]
    handles.append(Line2D([], [], linestyle="none", marker="X", markersize=7, color=FAIL_COLOR,
                          markeredgecolor="black", label="FAIL"))
    handles.append(Line2D([], [], color=FAIL_COLOR, linestyle="--", label="threshold"))
    if not np.isfinite(rows["ratio"]).all():
        handles.append(Line2D([], [], linestyle="none", label="at top: no finite error\n"
                              "(exception, NaN or inf)"))
    if (rows["ratio"] == 0).any():
        handles.append(Line2D([], [], linestyle="none", label=f"at {floor:.0e}: exact (0)"))
    return handles


# ---------------------------------------------------------------------------------------------
# Command line

FIGURES: dict[str, Callable[[pd.DataFrame, dict[str, str]], Figure]] = {
    "time_vs_batch": plot_time_vs_batch,
    "gbps_vs_batch": plot_gbps_vs_batch,
    "frac_bandwidth": plot_frac_bandwidth,
    "agreement": plot_agreement,
}


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise argparse.ArgumentTypeError(
            f"unsupported format(s) {', '.join(bad) or '(none)'}; choose from "
            f"{', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Plot normbench results CSVs.")
    parser.add_argument("csv", nargs="+", type=Path, help="results CSV(s), concatenated")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: <first CSV's directory>/plots)")
    parser.add_argument("--formats", type=parse_formats, default=["png", "svg"],
                        help="comma-separated image formats (png, svg; default: png,svg)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        df = load_results(args.csv)
    except InputError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    out_dir = args.out if args.out is not None else args.csv[0].parent / "plots"
    colors = backend_colors(df)
    for name, plot in FIGURES.items():
        try:
            fig = plot(df, colors)
        except Skip as why:
            print(f"skipped: {name}: {why}")
            continue
        paths = save_figure(fig, out_dir, name, args.formats)
        print(f"{name}: {' '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
