"""Writes the synthetic results CSVs under tests/figures/ that the figure tests read.

The numbers are invented (seeded, so the files are reproducible) but follow the schema of
suites/core/results_csv.cpp and the traffic model, so that every figure of scripts/figures.py has
data: several batch sizes, peers (onednn, pytorch) and ours (openmp, avx512), both layouts, both
input distributions, one FAIL and one SKIP row, and a GPU file under gpu/.

    .venv/bin/python tests/figures/make_sample.py      # rewrites sample_cpu.csv, gpu/sample_gpu.csv

These are test inputs only: real results go under results/.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

COLUMNS = [
    "utc_time", "git_commit", "cpu_model", "compiler", "threads", "backend", "impl_info", "method",
    "pass", "dtype", "layout", "n", "c", "h", "w", "num_groups", "eps", "momentum", "affine",
    "repro", "dist", "mode", "repetitions", "iterations", "time_median_us", "time_min_us",
    "time_max_us", "time_p25_us", "time_p75_us", "bytes", "traffic_model", "gbps", "copy_gbps",
    "copy_nt_gbps", "frac_copy_nt", "status", "worst_output", "max_abs_err", "max_rel_err",
    "threshold", "reason",
]
ESIZE = {"f32": 4, "bf16": 2, "f16": 2}
UNIT = {"f32": 2.0**-24, "bf16": 2.0**-8, "f16": 2.0**-11}
WORST = {"fwd_train": "y", "fwd_infer": "y", "bwd": "dx"}
# Fraction of the copy bandwidth each backend reaches (before per-case noise).
EFFICIENCY = {"openmp": 0.55, "avx512": 0.75, "onednn": 0.65, "pytorch": 0.45, "cuda": 0.8,
              "reference": 0.05}


def g(v: float) -> str:
    return f"{v:.6g}"


def case_rows(rng, meta, backends, method, pass_, dtype, layout, n, c, h, w, groups, rows_shape,
              copy_nt, device_copy=None):
    """The rows of one problem for each backend. With device_copy (GB/s), the backends run on a
    GPU: as the harness does today, copy_nt_gbps and frac_copy_nt are against the host copy, and
    the device copy bandwidth is only named in impl_info ('..., device copy N GB/s')."""
    eps = 1e-6 if method == "rmsnorm" else 1e-5
    shape = f"t{n}d{c}" if rows_shape else f"n{n}c{c}h{h}w{w}" + (
        f"g{groups}" if method == "groupnorm" else "")
    opts = f":eps{eps:g}" + (":mom0.1" if method == "batchnorm" else "")
    repro = f"{method}:{pass_}:{dtype}:{layout}:{shape}{opts}"
    num_groups = {"groupnorm": groups, "instancenorm": c}.get(method, 1)
    numel = n * c * h * w
    e = ESIZE[dtype]
    bytes_ = (3 if pass_ == "bwd" else 2) * numel * e + 4 * 4 * c
    out = []
    for backend in backends:
        base = dict(zip(COLUMNS, [""] * len(COLUMNS)))
        base.update(meta)
        base.update(backend=backend, method=method, dtype=dtype, layout=layout, n=n, c=c, h=h,
                    w=w, num_groups=num_groups, eps=g(eps), affine=1, repro=repro)
        base["pass"] = pass_
        base["momentum"] = "0.1" if method == "batchnorm" else "0"
        base["impl_info"] = "jit:avx512_core" if backend == "onednn" else ""
        if device_copy:
            base["impl_info"] = f"Synthetic GPU sm_90, device copy {device_copy:.0f} GB/s"
        if backend == "avx512" and method == "instancenorm" and layout == "nhwc":
            for dist in ("normal", "large_offset"):
                out.append({**base, "dist": dist, "mode": "hot" if dist == "normal" else "-",
                            "status": "SKIP", "reason": "not implemented by this backend"})
            continue
        frac = EFFICIENCY[backend] * float(rng.uniform(0.8, 1.15))
        frac *= 0.8 if layout == "nhwc" and method in ("groupnorm", "instancenorm") else 1.0
        frac *= 0.85 if pass_ == "bwd" else 1.0
        frac *= min(1.0, 0.35 + 0.1 * n)  # small batches do not fill the machine
        copy = copy_nt * float(rng.uniform(0.9, 1.1))
        gbps = frac * (device_copy or copy)
        t = bytes_ / gbps / 1e3
        spread = float(rng.uniform(0.01, 0.08))
        for dist in ("normal", "large_offset"):
            kappa = 1.0 if dist == "normal" else (1e4 if dtype == "f32" else 32.0)
            dthr = 4 * UNIT[dtype] + 8 * 2.0**-24 * (1 + kappa) * np.log2(2 + numel / max(1, n))
            rel = dthr * float(rng.uniform(0.02, 0.6)) if backend != "reference" else 0.0
            status = "PASS"
            reason = ""
            if backend == "pytorch" and dtype == "bf16" and dist == "large_offset" \
                    and method == "batchnorm" and pass_ == "fwd_train" and n == 2:
                rel, status = dthr * 3.5, "FAIL"
                reason = "y[17]: got 1.5 ref 0.25 (rel err beyond threshold)"
            row = {**base, "dist": dist, "status": status, "worst_output": WORST[pass_],
                   "max_abs_err": g(rel * 0.9), "max_rel_err": g(rel), "threshold": g(dthr),
                   "reason": reason}
            if dist == "normal":
                row.update(mode="hot", repetitions=5, iterations=max(1, int(2e5 / t)),
                           time_median_us=g(t), time_min_us=g(t * (1 - spread)),
                           time_max_us=g(t * (1 + 1.5 * spread)),
                           time_p25_us=g(t * (1 - spread / 3)),
                           time_p75_us=g(t * (1 + spread / 2)), bytes=bytes_,
                           traffic_model="3x" if pass_ == "bwd" else "2x", gbps=g(gbps),
                           copy_gbps=g(copy * 0.7), copy_nt_gbps=g(copy),
                           frac_copy_nt=g(gbps / copy))
            else:
                row["mode"] = "-"
            out.append(row)
    return out


def cpu_rows(rng) -> list[dict]:
    meta = {"utc_time": "2026-01-01T00:00:00Z", "git_commit": "0123456789ab",
            "cpu_model": "Synthetic CPU", "compiler": "GNU 12.2.0", "threads": 2}
    backends = ["avx512", "onednn", "openmp", "pytorch"]
    rows = []
    for method in ("batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm"):
        passes = ["fwd_train", "fwd_infer", "bwd"] if method == "batchnorm" else ["fwd_train",
                                                                                   "bwd"]
        dtypes = ["f32", "bf16"] if method == "batchnorm" else ["f32"]
        layouts = ["nchw"] if method == "rmsnorm" else ["nchw", "nhwc"]
        for pass_ in passes:
            for dtype in dtypes:
                for layout in layouts:
                    for n in (2, 8):
                        bk = backends + (["reference"] if (method, pass_, n, layout) == (
                            "batchnorm", "fwd_train", 2, "nchw") and dtype == "f32" else [])
                        if method in ("instancenorm", "rmsnorm"):
                            bk = [b for b in bk if b != "onednn"]  # a peer without the method
                        rows += case_rows(rng, meta, bk, method, pass_, dtype, layout, n, 64, 28,
                                          28, 32, False, 60.0)
        if method in ("layernorm", "rmsnorm"):
            for pass_ in ("fwd_train", "bwd"):
                for t in (256, 1024):
                    rows += case_rows(rng, meta, backends, method, pass_, "f32", "nchw", t, 768,
                                      1, 1, 1, True, 60.0)
    return rows


def gpu_rows(rng) -> list[dict]:
    meta = {"utc_time": "2026-01-01T00:00:00Z", "git_commit": "0123456789ab",
            "cpu_model": "Synthetic CPU + Synthetic GPU", "compiler": "GNU 12.2.0 / nvcc 12.4",
            "threads": 16}
    rows = []
    for method in ("batchnorm", "layernorm", "rmsnorm"):
        for pass_ in ("fwd_train", "bwd"):
            for dtype in ("f32", "bf16"):
                for n in (8, 32, 128):
                    rows += case_rows(rng, meta, ["cuda"], method, pass_, dtype, "nchw", n, 256,
                                      28, 28, 32, False, 60.0, device_copy=2500.0)
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{path}: {len(rows)} rows")


def main() -> None:
    here = Path(__file__).resolve().parent
    write(here / "sample_cpu.csv", cpu_rows(np.random.default_rng(7)))
    write(here / "gpu" / "sample_gpu.csv", gpu_rows(np.random.default_rng(8)))


if __name__ == "__main__":
    main()
