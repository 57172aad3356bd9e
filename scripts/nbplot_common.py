"""Helpers shared by the normbench plotting scripts (scripts/plot.py, scripts/figures.py).

Loading and merging results CSVs (the schema is suites/core/results_csv.cpp), selecting and
labelling rows, and the figure scaffolding: panel grids, the fixed colour per backend, the
sectioned legend, log axes, and saving without the metadata (dates, software versions) that would
make two runs on the same CSVs differ. Importing this module selects matplotlib's Agg backend and
fixes the SVG hash salt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

matplotlib.rcParams["svg.hashsalt"] = "normbench"

# Metadata that would make files differ between runs (dates, library versions), removed on save.
SAVE_METADATA = {
    "png": {"Software": None},
    "svg": {"Creator": None, "Date": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
}

# Columns this script reads; a CSV without any of them is rejected.
REQUIRED_COLUMNS = (
    "threads", "backend", "method", "pass", "dtype", "layout", "n", "c", "h", "w", "num_groups",
    "eps", "momentum", "affine", "repro", "dist", "mode", "time_median_us", "time_p25_us",
    "time_p75_us", "bytes", "gbps", "copy_nt_gbps", "frac_copy_nt", "status", "max_rel_err",
    "threshold",
)
NUMERIC_COLUMNS = (
    "threads", "n", "c", "h", "w", "num_groups", "eps", "momentum", "affine", "time_median_us",
    "time_p25_us", "time_p75_us", "bytes", "gbps", "copy_nt_gbps", "frac_copy_nt", "max_rel_err",
    "threshold",
)
# A results row is identified by these; repeats across CSVs (re-run shards) are dropped.
ROW_KEY = ["backend", "repro", "dist", "mode", "threads"]
METHOD_ORDER = ["batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm"]
PASS_ORDER = ["fwd_train", "fwd_infer", "bwd"]
ROW_METHODS = {"layernorm", "rmsnorm"}  # shapes written t<T>d<D>: n is the token count
TIMED_MODES = {"hot", "cold"}
# Options that split lines/cases further; shown in labels only where they vary in the data.
VARIANT_COLUMNS = {
    "eps": lambda v: f"eps{v:g}",
    "momentum": lambda v: f"mom{v:g}",
    "affine": lambda v: "affine" if v else "noaffine",
    "dist": str,
    "mode": str,
    "threads": lambda v: f"{int(v)}thr",
}
MAX_CASES_PER_PANEL = 40  # frac_bandwidth keeps the largest cases (by bytes) beyond this
MIN_PANEL_CASES = 6  # frac_bandwidth panels are at least this many cases wide
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p"]
DIST_COLORS = {"normal": "tab:blue", "large_offset": "tab:orange"}
FAIL_COLOR = "tab:red"


class InputError(Exception):
    """A CSV that cannot be used: missing, unreadable, or without the required columns."""


class Skip(Exception):
    """A figure whose data is missing; the message says why."""


# ---------------------------------------------------------------------------------------------
# Loading and selecting rows


def load_results(paths: Sequence[Path]) -> pd.DataFrame:
    """Concatenates the CSVs (strings kept as written, NUMERIC_COLUMNS as floats, empty = NaN)
    and drops rows repeated across files, keeping the last."""
    frames = [read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True)
    for col in NUMERIC_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    before = len(df)
    df = df.drop_duplicates(subset=ROW_KEY, keep="last").reset_index(drop=True)
    if len(df) < before:
        print(f"note: dropped {before - len(df)} repeated rows (same {', '.join(ROW_KEY)})")
    return df


def read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing required columns: {', '.join(missing)}")
    return df


def timed_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a timing result (mode hot/cold and a median time)."""
    return df[df["mode"].isin(TIMED_MODES) & df["time_median_us"].notna()].copy()


def panel_rows(df: pd.DataFrame, key: tuple[str, str]) -> pd.DataFrame:
    """The rows of one (method, pass) panel."""
    return df[(df["method"] == key[0]) & (df["pass"] == key[1])]


def varying(df: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    return [c for c in columns if df[c].nunique(dropna=False) > 1]


def variant_label(row: pd.Series, columns: Sequence[str]) -> str:
    """Labels of the VARIANT_COLUMNS in `columns` for one row, e.g. 'cold 1thr'."""
    return " ".join(VARIANT_COLUMNS[c](row[c]) for c in columns)


def shape_label(row: pd.Series) -> str:
    """The shape without n: d<D> for a layernorm/rmsnorm row tensor, else c..h..w..[g..]."""
    c, h, w = int(row["c"]), int(row["h"]), int(row["w"])
    if row["method"] in ROW_METHODS and h == 1 and w == 1:
        return f"d{c}"
    g = f"g{int(row['num_groups'])}" if row["method"] == "groupnorm" else ""
    return f"c{c}h{h}w{w}{g}"


def short_case(repro: str, keep_options: bool = False) -> str:
    """A repro without method and pass (the panel says those), and without its eps/mom options
    unless keep_options: 'f32 nchw n8c64h56w56'."""
    fields = repro.split(":")[2:]
    if not keep_options:
        fields = [f for f in fields if not f.startswith(("eps", "mom"))]
    return " ".join(fields)


# ---------------------------------------------------------------------------------------------
# Figure scaffolding shared by all figures


def save_figure(fig: Figure, out_dir: Path, name: str, formats: Sequence[str],
                dpi: float | None = 120) -> list[Path]:
    """Writes fig as out_dir/name.<fmt> for each format, without varying metadata, and closes it
    (dpi None: rcParams["savefig.dpi"])."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=dpi, metadata=SAVE_METADATA[fmt])
        paths.append(path)
    plt.close(fig)
    return paths


def panel_keys(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, pass) pairs present, in the project's method and pass order."""
    def order(key: tuple[str, str]) -> tuple:
        m, p = key
        return (rank(METHOD_ORDER, m), rank(PASS_ORDER, p), m, p)
    return sorted({(m, p) for m, p in zip(df["method"], df["pass"])}, key=order)


def rank(order: list[str], value: str) -> int:
    return order.index(value) if value in order else len(order)


def panel_grid(keys: Sequence[tuple[str, str]], ncols: int, panel_size: tuple[float, float],
               extra_width: float = 0.0) -> tuple[Figure, dict[tuple[str, str], Axes]]:
    """A figure with one titled axes per (method, pass) key, ncols wide; spare cells removed."""
    ncols = max(1, min(ncols, len(keys)))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(panel_size[0] * ncols + extra_width,
                                      panel_size[1] * nrows))
    flat = list(axes.flat)
    for ax in flat[len(keys):]:
        ax.remove()
    panels = dict(zip(keys, flat))
    for key, ax in panels.items():
        style_panel(ax, key)
    return fig, panels


def flow_grid(spans: dict[tuple[str, str], int], capacity: int, unit_width: float,
              row_height: float, extra_width: float = 0.0, stretch: bool = True
              ) -> tuple[Figure, dict[tuple[str, str], Axes]]:
    """A figure whose panels take widths proportional to their spans (e.g. bars), packed left to
    right into rows of `capacity` units, one subfigure per row (so that one row's tick labels do
    not squeeze another's panels); each row's panels are stretched to fill it, or, with
    stretch=False, keep their widths and leave the rest of the row blank."""
    rows: list[list[tuple[tuple[str, str], int]]] = [[]]
    for key, span in spans.items():
        if rows[-1] and sum(s for _, s in rows[-1]) + span > capacity:
            rows.append([])
        rows[-1].append((key, span))
    fig = plt.figure(figsize=(capacity * unit_width + extra_width, row_height * len(rows)),
                     layout="constrained")
    panels = {}
    for subfig, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        ratios = [s for _, s in row]
        blank = capacity - sum(ratios) if not stretch else 0
        axes = subfig.subplots(1, len(row) + (blank > 0), squeeze=False,
                               width_ratios=ratios + ([blank] if blank > 0 else []))[0]
        if blank > 0:
            axes[-1].remove()
        for (key, _), ax in zip(row, axes):
            panels[key] = ax
            style_panel(ax, key)
    return fig, panels


def style_panel(ax: Axes, key: tuple[str, str]) -> None:
    ax.set_title(f"{key[0]} {key[1]}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def backend_colors(df: pd.DataFrame) -> dict[str, str]:
    """A fixed colour per backend (sorted names, tab10), the same in every figure."""
    cmap = plt.get_cmap("tab10")
    return {b: matplotlib.colors.to_hex(cmap(i % 10))
            for i, b in enumerate(sorted(df["backend"].unique()))}


def cycle(items: Iterable, styles: Sequence) -> dict:
    return {item: styles[i % len(styles)] for i, item in enumerate(items)}


def section_legend(fig: Figure, sections: dict[str, list[tuple[str, Line2D]]]) -> None:
    """One legend at the figure's right, in titled sections (e.g. backend, dtype/layout, shape),
    so that a line's colour, dash and marker are each explained once."""
    handles, labels, headers = [], [], []
    for title, entries in sections.items():
        if not entries:
            continue
        headers.append(len(labels))
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(title)
        for label, handle in entries:
            handles.append(handle)
            labels.append(label)
    legend = fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False,
                        handlelength=3)
    for i in headers:
        legend.get_texts()[i].set_fontweight("bold")


def log2_batch_axis(ax: Axes, ns: Iterable[float]) -> None:
    """Log2 x axis ticked at exactly the batch sizes plotted, as plain integers."""
    ticks = sorted({int(n) for n in ns})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def plain_log_y(ax: Axes) -> None:
    """Log y axis with plain numbers (0.5, 20, 300) instead of powers of ten where they fit."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    if hi / lo < 1e6:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


# ---------------------------------------------------------------------------------------------
# Case labels (bar and heatmap figures)


def case_labels(timed: pd.DataFrame) -> pd.Series:
    """Short case labels ('bf16 nhwc n16c64h7w7', + 'cold' etc. where modes or dists vary),
    with eps/mom kept only where dropping them would merge cases of one (method, pass)."""
    labels = timed["repro"].map(short_case)
    full = timed["repro"].map(lambda r: short_case(r, keep_options=True))
    panel = timed["method"] + ":" + timed["pass"]
    clash = (pd.DataFrame({"p": panel, "s": labels, "f": full}).groupby(["p", "s"])["f"]
             .transform("nunique") > 1)
    labels = labels.where(~clash, full)
    variants = varying(timed, [c for c in VARIANT_COLUMNS if c not in ("eps", "momentum",
                                                                       "affine")])
    if variants:
        labels = labels + " " + timed.apply(lambda r: variant_label(r, variants), axis=1)
    return labels


def cases_in_panel(timed: pd.DataFrame, key: tuple[str, str]) -> tuple[list[str], int]:
    """The cases of one (method, pass) to draw, in (dtype, layout, shape, n) order, capped at the
    MAX_CASES_PER_PANEL largest by traffic bytes; also returns how many there are in all."""
    rows = panel_rows(timed, key)
    order = ["dtype", "layout", "c", "h", "w", "num_groups", "n", "eps", "momentum", "case"]
    cases = rows.groupby("case").agg({**{c: "first" for c in order[:-1]}, "bytes": "max"})
    kept = cases.nlargest(MAX_CASES_PER_PANEL, "bytes") if len(cases) > MAX_CASES_PER_PANEL \
        else cases
    kept = kept.reset_index().sort_values(order)
    return list(kept["case"]), len(cases)
