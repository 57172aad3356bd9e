"""The paper's figures, regenerated from committed normbench results CSVs (no benchmark is run).

    .venv/bin/python scripts/figures.py [INPUT ...] [--out DIR] [--formats png,svg,pdf]
    make figures                     # the same with the defaults: results/ -> figures/

INPUT is a results CSV or a directory searched recursively for *.csv (default: results/ of the
repository). All CSVs are merged, in path order, as scripts/plot.py merges them (the shards of a
split sweep, or the peers' run beside ours); a row repeated across files (same backend, repro,
dist, mode, threads) is kept once, the last. CSVs under a directory named `gpu` (results/gpu/) are
the GPU data: they feed figure 6 only, the others feed figures 1 to 5.

Writes, into DIR (default: figures/ of the repository), <name>.png, .svg and .pdf for each figure:

  fig1_frac_vs_batch        frac_copy_nt (effective GB/s / paired non-temporal copy GB/s) against
                            batch size n; a panel per (method, pass), a line per backend (and
                            dtype / layout / shape)
  fig2_speedup_vs_peers     heatmap of the speed-up over the best peer (onednn, pytorch): best
                            peer time_median_us / our time_median_us, same repro, mode hot, PASS
                            rows; a row per backend of ours (all but the peers and reference), a
                            column per case, a panel per (method, pass)
  fig3_agreement            max_rel_err / threshold per backend, dtype and input distribution,
                            against the threshold (1)
  fig4_method_cost          median time of each method at equal tensor size (numel = n*c*h*w,
                            same dtype and layout), fwd_train and bwd, a panel per backend and pass
  fig5_layout_nhwc_vs_nchw  time NHWC / time NCHW of pairs equal but for the layout; a panel per
                            method, points per backend and pass
  fig6_gpu_frac_vs_batch    figure 1 on the GPU data, against the device copy bandwidth that a
                            device backend names in impl_info ('..., device copy 3000 GB/s'; the
                            paired host copy for rows that name none)
  fig6_gpu_frac_per_case    the same fraction per case and backend on the GPU data (bars)
  fig6_gpu_agreement        figure 3 on the GPU data

A figure whose data is missing is not drawn: 'skipped: <name>: <why>' says so, and an older file of
that name in DIR is removed, so DIR holds exactly the figures the CSVs support. Every other figure
prints '<name>: <files>'.

Deterministic: matplotlib is reset to its defaults (a user's matplotlibrc is ignored) and styled
with scripts/normbench.mplstyle (DejaVu Sans, which matplotlib ships; fixed SVG hash salt), jitter
is seeded, and dates and software versions are stripped from the files, so the same CSVs give
byte-identical files with the same matplotlib. tests/figures/check_deterministic.sh proves it.

Exit status: 0 on success (including skipped figures, and no CSV at all), 1 when an input is
missing or a CSV is unreadable or lacks required columns, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# Shared helpers (importing them first selects the Agg backend), and plot.py's vs-batch,
# frac_bandwidth and agreement figures, reused here.
from nbplot_common import (
    METHOD_ORDER, PASS_ORDER, InputError, Skip, backend_colors, case_labels, cases_in_panel,
    flow_grid, load_results, panel_grid, panel_keys, plain_log_y, rank, save_figure,
    section_legend, timed_rows,
)
from plot import BatchMetric, plot_agreement, plot_frac_bandwidth, plot_vs_batch

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedLocator, FuncFormatter, LogFormatter, NullFormatter, NullLocator,
)

ROOT = Path(__file__).resolve().parent.parent
STYLE = Path(__file__).resolve().parent / "normbench.mplstyle"
DEFAULT_INPUT = ROOT / "results"
DEFAULT_OUT = ROOT / "figures"
FORMATS = ("png", "svg", "pdf")
GPU_DIR = "gpu"  # CSVs under a directory of this name are GPU data (results/gpu/)

PEERS = ("onednn", "pytorch")  # the libraries we compare against
NOT_OURS = {"reference", *PEERS}  # every other backend is one of ours
COST_PASSES = ("fwd_train", "bwd")
MAX_COST_GROUPS = 8  # fig4: at most this many tensor sizes per panel
HEATMAP_ROW_CASES = 40  # fig2: cases per row of panels
METHOD_COLORS = {"batchnorm": "#1f77b4", "layernorm": "#ff7f0e", "groupnorm": "#2ca02c",
                 "instancenorm": "#9467bd", "rmsnorm": "#8c564b"}
PASS_COLORS = {"fwd_train": "#1f77b4", "fwd_infer": "#2ca02c", "bwd": "#d62728"}
DTYPE_MARKERS = {"f32": "o", "bf16": "s", "f16": "^"}


# ---------------------------------------------------------------------------------------------
# Figures 1 and 6: fraction of the measured bandwidth


# frac_copy_nt and its bounds from the p75/p25 times (with_frac_bounds); fraction_axes then draws
# it on a linear axis from 0 with a line at 1.
FRAC_METRIC = BatchMetric(
    "frac_copy_nt", "frac_low", "frac_high", "GB/s / paired NT copy GB/s",
    "Fraction of the measured copy bandwidth against batch size (bars: from p75/p25 time)")
# A device backend names the device's copy bandwidth in impl_info ('H100 sm_90, device copy
# 3000 GB/s', kernels/cuda); the harness pairs every row with a host copy (copy_nt_gbps).
DEVICE_COPY = re.compile(r"device copy\s+([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*GB/s")


def with_frac_bounds(df: pd.DataFrame) -> pd.DataFrame:
    """Adds frac_low/frac_high: the traffic-model bytes over the p75 and p25 times, over the
    row's paired copy bandwidth."""
    df = df.copy()
    df["frac_low"] = df["bytes"] / df["time_p75_us"] / 1e3 / df["copy_nt_gbps"]
    df["frac_high"] = df["bytes"] / df["time_p25_us"] / 1e3 / df["copy_nt_gbps"]
    return df


def with_device_roofline(df: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """The rows whose impl_info names a device copy bandwidth get it as their roofline
    (copy_nt_gbps, and frac_copy_nt = gbps / it); the others keep the paired host copy. Also
    returns, for the labels, which copy that is and a note when the rows differ."""
    df = df.copy()
    info = df["impl_info"] if "impl_info" in df.columns else pd.Series("", index=df.index)
    device = pd.to_numeric(info.astype(str).str.extract(DEVICE_COPY)[0], errors="coerce")
    has = (device > 0).fillna(False).astype(bool)
    df.loc[has, "copy_nt_gbps"] = device[has]
    df.loc[has, "frac_copy_nt"] = df.loc[has, "gbps"] / device[has]
    timed = df["time_median_us"].notna()
    if (has | ~timed).all():
        return df, "device copy", ""
    if not has.any():
        return df, "host NT copy", " (no device copy named in impl_info)"
    return df, "device copy", " (host NT copy where impl_info names none)"


def fraction_axes(fig: Figure) -> None:
    """Turns the log y axes of a *_vs_batch figure into linear fractions from 0, with a dashed
    line at 1 (the copy's speed)."""
    for ax in fig.axes:
        top = max(1.1, float(ax.dataLim.y1) * 1.08)
        ax.set_yscale("linear")
        ax.set_ylim(0, top)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")


def fig_frac_vs_batch(df: pd.DataFrame, colors: dict[str, str],
                      metric: BatchMetric = FRAC_METRIC) -> Figure:
    fig = plot_vs_batch(with_frac_bounds(df), colors, metric, copy_reference=False)
    fraction_axes(fig)
    return fig


def fig_gpu_frac_vs_batch(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    df, roof, note = with_device_roofline(df)
    metric = BatchMetric("frac_copy_nt", "frac_low", "frac_high", f"GB/s / {roof} GB/s",
                         f"GPU: effective bandwidth / {roof} bandwidth{note} against batch "
                         "size (bars: from p75/p25 time)")
    return fig_frac_vs_batch(df, colors, metric)


def fig_gpu_frac_per_case(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    df, roof, note = with_device_roofline(df)
    fig = plot_frac_bandwidth(df, colors)
    for ax in fig.axes:
        ax.set_ylabel(f"GB/s / {roof} GB/s", fontsize=9)
    fig.suptitle(f"GPU: effective bandwidth / {roof} bandwidth{note}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures 3 and 6: agreement


def fig_agreement(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    return plot_agreement(df, colors)


def fig_gpu_agreement(df: pd.DataFrame, colors: dict[str, str]) -> Figure:
    fig = plot_agreement(df, colors)
    ax = fig.axes[0]
    ax.set_title("GPU: " + ax.get_title(), fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------
# Figure 2: speed-up over the best peer


def speedup_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Our PASS rows (mode hot) joined with the fastest PASS peer row of the same case (repro,
    dist, threads): columns peer, peer_time_us and speedup = peer time / our time."""
    timed = timed_rows(df)
    timed = timed[(timed["mode"] == "hot") & (timed["status"] == "PASS")
                  & (timed["time_median_us"] > 0)]
    key = ["repro", "dist", "threads"]
    peers = timed[timed["backend"].isin(PEERS)]
    ours = timed[~timed["backend"].isin(NOT_OURS)]
    if peers.empty:
        raise Skip(f"no timed PASS row (mode hot) of a peer ({', '.join(PEERS)})")
    if ours.empty:
        raise Skip("no timed PASS row (mode hot) of our backends (all but "
                   f"{', '.join(sorted(NOT_OURS))})")
    best = (peers.sort_values(["time_median_us", "backend"], kind="stable")
            .drop_duplicates(key, keep="first")[[*key, "backend", "time_median_us"]]
            .rename(columns={"backend": "peer", "time_median_us": "peer_time_us"}))
    rows = ours.merge(best, on=key, how="inner")
    if rows.empty:
        raise Skip("no case timed (PASS, mode hot) by both a peer and one of our backends")
    rows["speedup"] = rows["peer_time_us"] / rows["time_median_us"]
    return rows


def fig_speedup(df: pd.DataFrame, _colors: dict[str, str]) -> Figure:
    rows = speedup_rows(df)
    rows["case"] = case_labels(rows)
    ours = sorted(rows["backend"].unique())
    cases = {key: cases_in_panel(rows, key) for key in panel_keys(rows)}
    spans = {key: max(3, len(kept)) for key, (kept, _) in cases.items()}
    # Rows of up to HEATMAP_ROW_CASES cases (fewer when the sweep is small); cells keep one width.
    capacity = max(max(spans.values()), min(HEATMAP_ROW_CASES, sum(spans.values())))
    fig, panels = flow_grid(spans, capacity, unit_width=0.34, row_height=2.7 + 0.3 * len(ours),
                            extra_width=1.6, stretch=False)
    norm = speedup_norm(rows["speedup"])
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#e0e0e0")
    mesh = None
    for key, ax in panels.items():
        mesh = draw_speedup_panel(ax, rows, key, *cases[key], ours, norm, cmap)
    first = next(iter(panels.values()))
    bar = first.get_figure().colorbar(mesh, ax=[a for a in panels.values()
                                                if a.get_figure() is first.get_figure()],
                                      pad=0.01, fraction=0.04, aspect=12)
    ticks = [t for t in 2.0 ** np.arange(-8, 9) if norm.vmin <= t <= norm.vmax]
    bar.set_ticks(ticks, labels=[f"{t:g}x" for t in ticks])
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.set_label("speed-up over the best peer", fontsize=8)
    fig.suptitle("Speed-up over the best peer (" + ", ".join(PEERS) + "): its median time / "
                 "ours, same case, mode hot, PASS rows\n(in brackets: the fastest peer of the "
                 "case; grey: no result of that backend)", fontsize=11)
    return fig


def speedup_norm(speedup: pd.Series) -> LogNorm:
    """A log colour scale symmetric about 1 (no change), reaching the next power of two beyond
    the largest speed-up or slow-down, at least 2x."""
    extreme = float(np.nanmax(np.abs(np.log2(speedup.to_numpy(dtype=float)))))
    top = 2.0 ** max(1, int(np.ceil(extreme)))
    return LogNorm(vmin=1 / top, vmax=top)


def draw_speedup_panel(ax: Axes, rows: pd.DataFrame, key: tuple[str, str], cases: list[str],
                       total: int, ours: list[str], norm: LogNorm, cmap) -> object:
    """A heatmap of one (method, pass): a row per backend of ours, a column per case, the
    speed-up written in each cell (grey: that backend has no result there)."""
    sel = rows[(rows["method"] == key[0]) & (rows["pass"] == key[1]) & rows["case"].isin(cases)]
    values = sel.pivot_table(index="backend", columns="case", values="speedup",
                             aggfunc="median").reindex(index=ours, columns=cases)
    peer = sel.groupby("case")["peer"].first().reindex(cases)
    data = values.to_numpy(dtype=float)
    mesh = ax.pcolormesh(np.ma.masked_invalid(data), cmap=cmap, norm=norm, edgecolors="white",
                         linewidth=0.5)
    limit = np.log2(norm.vmax)
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            dark = abs(np.log2(v)) > 0.6 * limit
            ax.text(j + 0.5, i + 0.5, f"{v:.2f}" if v < 9.95 else f"{v:.0f}", ha="center",
                    va="center", fontsize=6, rotation=90 if len(cases) > 20 else 0,
                    color="white" if dark else "black")
        else:
            ax.text(j + 0.5, i + 0.5, "-", ha="center", va="center", fontsize=6, color="dimgrey")
    ax.set_xticks(np.arange(len(cases)) + 0.5,
                  [f"{c} ({p})" for c, p in zip(cases, peer)], rotation=90,
                  fontsize=7 if len(cases) > 12 else 8)
    ax.set_yticks(np.arange(len(ours)) + 0.5, ours, fontsize=8)
    ax.set_xlim(0, len(cases))
    ax.set_ylim(len(ours), 0)
    ax.tick_params(length=0)
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if total > len(cases):
        ax.set_title(f"{key[0]} {key[1]} (largest {len(cases)} of {total} cases by bytes)",
                     fontsize=10)
    return mesh


# ---------------------------------------------------------------------------------------------
# Figure 4: the methods side by side at equal tensor size


def cost_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Median time per (backend, pass, size group, method), where a size group is (numel, dtype,
    layout, threads) and holds at least two methods for that backend and pass."""
    timed = timed_rows(df)
    timed = timed[(timed["mode"] == "hot") & (timed["status"] == "PASS")
                  & timed["pass"].isin(COST_PASSES)].copy()
    if timed.empty:
        raise Skip(f"no timed PASS rows (mode hot) of {' or '.join(COST_PASSES)}")
    timed["numel"] = (timed["n"] * timed["c"] * timed["h"] * timed["w"]).astype("int64")
    group = ["numel", "dtype", "layout", "threads"]
    cost = (timed.groupby(["backend", "pass", *group, "method"], sort=True)["time_median_us"]
            .median().reset_index())
    methods = cost.groupby(["backend", "pass", *group])["method"].transform("nunique")
    cost = cost[methods >= 2]
    if cost.empty:
        raise Skip("no two methods timed at the same tensor size (numel, dtype, layout) by one "
                   "backend and pass")
    return cost


def fig_method_cost(df: pd.DataFrame, _colors: dict[str, str]) -> Figure:
    cost = cost_rows(df)
    threads_vary = cost["threads"].nunique() > 1
    backends = sorted(cost["backend"].unique())
    passes = [p for p in COST_PASSES if p in set(cost["pass"])]
    methods = sorted(cost["method"].unique(), key=lambda m: (rank(METHOD_ORDER, m), m))
    keys = [(b, p) for b in backends for p in passes]
    fig, panels = panel_grid(keys, ncols=len(passes), panel_size=(5.2, 3.3), extra_width=1.6)
    for key, ax in panels.items():
        sel = cost[(cost["backend"] == key[0]) & (cost["pass"] == key[1])]
        if sel.empty:
            ax.remove()  # no equal-size cases for this backend and pass: no empty panel
            continue
        draw_cost_panel(ax, sel, methods, threads_vary)
    fig.suptitle("Cost of the methods at equal tensor size (numel = n·c·h·w): median time, "
                 "hot, PASS rows", fontsize=11)
    section_legend(fig, {"method": [(m, Line2D([], [], color=METHOD_COLORS.get(m, "grey"),
                                                linestyle="none", marker="o", markersize=6,
                                                markeredgecolor="black", markeredgewidth=0.4))
                                     for m in methods]})
    return fig


def draw_cost_panel(ax: Axes, sel: pd.DataFrame, methods: list[str], threads_vary: bool) -> None:
    """A column per tensor size (the MAX_COST_GROUPS with the most methods, then the largest),
    in it a dot per method at its median time; log time axis, so dots rather than bars."""
    group = ["numel", "dtype", "layout", "threads"]
    sizes = sel.groupby(group, sort=True)["method"].nunique().reset_index(name="count")
    sizes = sizes.sort_values(["count", "numel", "dtype", "layout", "threads"],
                              ascending=[False, False, True, True, True], kind="stable")
    sizes = sizes.head(MAX_COST_GROUPS).sort_values(["dtype", "layout", "threads", "numel"],
                                                    kind="stable")
    labels = [size_label(r, threads_vary) for _, r in sizes.iterrows()]
    slot = 0.8 / len(methods)
    for gi, (_, size) in enumerate(sizes.iterrows()):
        if gi % 2:
            ax.axvspan(gi - 0.5, gi + 0.5, color="#f2f2f2", zorder=0, linewidth=0)
        in_group = sel[(sel[group] == size[group]).all(axis=1)].set_index("method")
        for mi, m in enumerate(methods):
            if m in in_group.index:
                ax.scatter(gi + (mi - (len(methods) - 1) / 2) * slot,
                           float(in_group.loc[m, "time_median_us"]), s=36,
                           color=METHOD_COLORS.get(m, "grey"), edgecolors="black",
                           linewidths=0.4, zorder=3)
    ax.set_xticks(range(len(labels)), labels, fontsize=7 if len(labels) > 5 else 8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    plain_log_y(ax)
    # Within a decade the minor ticks carry the labels: plain numbers (60), not 6x10^1.
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.set_ylabel("median time (us)", fontsize=9)
    ax.tick_params(axis="y", which="both", labelsize=8)
    ax.grid(False, axis="x")
    ax.grid(True, axis="y", which="minor", alpha=0.15)


def size_label(size: pd.Series, threads_vary: bool) -> str:
    numel = int(size["numel"])
    human = next(f"{numel / d:.3g}{s}" for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""))
                 if numel >= d or d == 1)
    label = f"{human} elem.\n{size['dtype']} {size['layout']}"
    return label + (f"\n{int(size['threads'])}thr" if threads_vary else "")


# ---------------------------------------------------------------------------------------------
# Figure 5: NCHW against NHWC

PAIR_KEY = ["backend", "method", "pass", "dtype", "n", "c", "h", "w", "num_groups", "eps",
            "momentum", "affine", "dist", "mode", "threads"]


def layout_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """PASS rows timed in both layouts and equal but for the layout, with ratio = NHWC time /
    NCHW time."""
    timed = timed_rows(df)
    timed = timed[(timed["status"] == "PASS") & (timed["time_median_us"] > 0)]
    nchw = timed[timed["layout"] == "nchw"][[*PAIR_KEY, "time_median_us"]]
    nhwc = timed[timed["layout"] == "nhwc"][[*PAIR_KEY, "time_median_us"]]
    if nchw.empty or nhwc.empty:
        raise Skip("no timed PASS rows in " + ("either layout" if nchw.empty and nhwc.empty else
                                               "nhwc" if nhwc.empty else "nchw"))
    pairs = nchw.merge(nhwc, on=PAIR_KEY, suffixes=("_nchw", "_nhwc"))
    if pairs.empty:
        raise Skip("no case timed in both nchw and nhwc (same method, pass, dtype, shape, "
                   "backend)")
    pairs["ratio"] = pairs["time_median_us_nhwc"] / pairs["time_median_us_nchw"]
    return pairs.sort_values(PAIR_KEY, kind="stable").reset_index(drop=True)


def fig_layout(df: pd.DataFrame, _colors: dict[str, str]) -> Figure:
    pairs = layout_pairs(df)
    methods = sorted(pairs["method"].unique(), key=lambda m: (rank(METHOD_ORDER, m), m))
    widest = int(pairs.groupby("method")["backend"].nunique().max())
    passes = sorted(pairs["pass"].unique(), key=lambda p: (rank(PASS_ORDER, p), p))
    dtypes = sorted(pairs["dtype"].unique(), key=lambda d: (rank(list(DTYPE_MARKERS), d), d))
    extreme = float(np.max(np.abs(np.log2(pairs["ratio"].to_numpy(dtype=float)))))
    limit = 2.0 ** max(np.log2(1.25), extreme * 1.15)
    fig, panels = panel_grid([(m, "") for m in methods], ncols=3,
                             panel_size=(max(3.4, 0.9 * widest + 1.4), 3.4),
                             extra_width=1.6)
    rng = np.random.default_rng(0)  # jitter: fixed seed keeps the output deterministic
    slot = 0.8 / len(passes)
    for (method, _), ax in panels.items():
        backends = sorted(pairs.loc[pairs["method"] == method, "backend"].unique())
        for bi, backend in enumerate(backends):
            for pi, pass_ in enumerate(passes):
                sel = pairs[(pairs["method"] == method) & (pairs["backend"] == backend)
                            & (pairs["pass"] == pass_)]
                if sel.empty:
                    continue
                x0 = bi + (pi - (len(passes) - 1) / 2) * slot
                draw_ratio_strip(ax, sel, x0, slot, PASS_COLORS.get(pass_, "grey"), rng)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_yscale("log", base=2)
        ax.set_ylim(1 / limit, limit)
        ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 1 / 1.5, 1, 1.5, 2, 4, 8)
                 if 1 / limit <= t <= limit]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(backends)), backends, fontsize=8)
        ax.set_xlim(-0.6, len(backends) - 0.4)
        ax.set_ylabel("time NHWC / time NCHW", fontsize=9)
        ax.set_title(method, fontsize=10)
        ax.grid(False, axis="x")
    fig.suptitle("NHWC against NCHW: time ratio of cases equal but for the layout (above 1: NHWC "
                 "slower); bar: median", fontsize=11)
    section_legend(fig, {
        "pass": [(p, Line2D([], [], color=PASS_COLORS.get(p, "grey"), linestyle="none",
                            marker="o", markersize=5)) for p in passes],
        "dtype": [(d, Line2D([], [], color="dimgrey", linestyle="none",
                             marker=DTYPE_MARKERS.get(d, "D"), markersize=5)) for d in dtypes],
    })
    return fig


def draw_ratio_strip(ax: Axes, sel: pd.DataFrame, x0: float, slot: float, color: str,
                     rng: np.random.Generator) -> None:
    """The ratios of one (method, backend, pass), jittered about x0 with a marker per dtype, and
    their median as a short black bar."""
    x = x0 + rng.uniform(-0.3, 0.3, len(sel)) * slot
    for dtype, marker in DTYPE_MARKERS.items():
        mask = (sel["dtype"] == dtype).to_numpy()
        if mask.any():
            ax.scatter(x[mask], sel["ratio"].to_numpy()[mask], s=14, marker=marker, color=color,
                       alpha=0.75, linewidths=0, zorder=3)
    other = ~sel["dtype"].isin(list(DTYPE_MARKERS)).to_numpy()
    if other.any():
        ax.scatter(x[other], sel["ratio"].to_numpy()[other], s=14, marker="D", color=color,
                   alpha=0.75, linewidths=0, zorder=3)
    median = float(sel["ratio"].median())
    ax.plot([x0 - 0.4 * slot, x0 + 0.4 * slot], [median, median], color="black", linewidth=1.5,
            zorder=4)


# ---------------------------------------------------------------------------------------------
# Command line

FigureFn = Callable[[pd.DataFrame, dict[str, str]], Figure]
# name -> (data set, function); "cpu": CSVs outside gpu/ directories, "gpu": those inside.
FIGURES: dict[str, tuple[str, FigureFn]] = {
    "fig1_frac_vs_batch": ("cpu", fig_frac_vs_batch),
    "fig2_speedup_vs_peers": ("cpu", fig_speedup),
    "fig3_agreement": ("cpu", fig_agreement),
    "fig4_method_cost": ("cpu", fig_method_cost),
    "fig5_layout_nhwc_vs_nchw": ("cpu", fig_layout),
    "fig6_gpu_frac_vs_batch": ("gpu", fig_gpu_frac_vs_batch),
    "fig6_gpu_frac_per_case": ("gpu", fig_gpu_frac_per_case),
    "fig6_gpu_agreement": ("gpu", fig_gpu_agreement),
}


def apply_style() -> None:
    """matplotlib's built-in defaults (not the user's matplotlibrc), then the project style; warns
    when the style's font resolves to a file other than the copy matplotlib ships."""
    matplotlib.rcdefaults()
    plt.style.use(STYLE)
    shipped = Path(matplotlib.get_data_path()).resolve() / "fonts"
    for weight in ("normal", "bold"):
        found = Path(font_manager.findfont(font_manager.FontProperties(
            family=matplotlib.rcParams["font.sans-serif"][0], weight=weight))).resolve()
        if shipped not in found.parents:
            print(f"figures.py: warning: font {found} is not matplotlib's own; the files may "
                  "differ from those made elsewhere", file=sys.stderr)


def find_csvs(inputs: Sequence[Path]) -> list[Path]:
    """The CSV files named, and every *.csv under the directories named (except under a
    `baseline/` directory: results/baseline holds the regression check's references, small
    shapes and callgrind counts, not a paper's data), sorted by path within each directory;
    duplicates dropped. The repository's results/ may be absent (a fresh clone before any result
    is committed: git keeps no empty directory): it then holds no CSV."""
    found: list[Path] = []
    for item in inputs:
        if not item.exists() and item.resolve() == DEFAULT_INPUT:
            continue
        if item.is_dir():
            found += sorted((p for p in item.rglob("*.csv")
                             if p.is_file() and BASELINE_DIR not in p.relative_to(item).parts),
                            key=lambda p: p.relative_to(item).as_posix())
        elif item.is_file():
            found.append(item)
        else:
            raise InputError(f"{item}: no such file or directory")
    return list(dict.fromkeys(found))


BASELINE_DIR = "baseline"


def is_gpu(path: Path) -> bool:
    return GPU_DIR in path.parent.parts


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise argparse.ArgumentTypeError(
            f"unsupported format(s) {', '.join(bad) or '(none)'}; choose from "
            f"{', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Regenerate the paper's figures from normbench results CSVs.")
    parser.add_argument("inputs", nargs="*", type=Path,
                        help="results CSVs or directories searched for *.csv (default: results/); "
                             "those under a 'gpu' directory feed the GPU figures")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: figures/)")
    parser.add_argument("--formats", type=parse_formats, default=list(FORMATS),
                        help="comma-separated image formats (default: png,svg,pdf)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = args.inputs or [DEFAULT_INPUT]
    try:
        csvs = find_csvs(inputs)
        data = {"cpu": [p for p in csvs if not is_gpu(p)], "gpu": [p for p in csvs if is_gpu(p)]}
        frames = {kind: load_results(paths) if paths else None for kind, paths in data.items()}
    except InputError as e:
        print(f"figures.py: error: {e}", file=sys.stderr)
        return 1
    where = " ".join(str(p) for p in inputs)
    print(f"inputs: {len(csvs)} CSV(s) from {where} ({len(data['gpu'])} under a {GPU_DIR}/ "
          "directory)")
    loaded = [f for f in frames.values() if f is not None]
    colors = backend_colors(pd.concat(loaded)) if loaded else {}
    apply_style()
    for name, (kind, draw) in FIGURES.items():
        df = frames[kind]
        try:
            if df is None:
                raise Skip(f"no {'GPU ' if kind == 'gpu' else ''}CSV in {where}"
                           + (f" (GPU data: CSVs under a {GPU_DIR}/ directory)"
                              if kind == "gpu" else ""))
            fig = draw(df, colors)
        except Skip as why:
            stale = [args.out / f"{name}.{fmt}" for fmt in FORMATS
                     if (args.out / f"{name}.{fmt}").is_file()]
            for path in stale:
                path.unlink()
            note = f" (removed {len(stale)} stale file(s))" if stale else ""
            print(f"skipped: {name}: {why}{note}")
            continue
        paths = save_figure(fig, args.out, name, args.formats, dpi=None)
        print(f"{name}: {' '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
