"""Golden fixtures for the fp64 reference: an independent, vectorised NumPy implementation of the
five normalisation methods (BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm), each pass
(fwd_train, fwd_infer, bwd), written from the formulas of CONVENTIONS section 1 (Ioffe & Szegedy
2015; Ba et al. 2016; Wu & He 2018; Ulyanov et al. 2016; Zhang & Sennrich 2019; PyTorch
aten/src/ATen/native/Normalization.cpp, layer_norm.cpp, group_norm.cpp), not a port of the C++
loops: it reshapes x so that each reduction group is a set of axes and reduces with mean/var.

Regenerate (writes tests/golden/*.json, overwriting; the seed is fixed so the output is stable):

    .venv/bin/python scripts/make_golden.py

Each fixture is {"repro": canonical repro string (suites/core/problem.hpp), "inputs": {name: [..]},
"outputs": {name: [..]}}, floats written with repr (full double precision). x, dy, y, dx are in the
memory order of the layout; gamma/beta have param_count() elements (C, or C*H*W in C-major order for
layernorm/rmsnorm); mean/invstd are in stats order ((C), (N), (N, G), (N, C)). Inputs are rounded to
fp32 values so the same fixtures can feed fp32 buffers. bwd fixtures carry the saved mean/invstd of
NumPy's forward rounded to fp32 (as a kernel saves them), and the backward uses exactly those: a
reference that recomputes the statistics from x instead would differ by ~1e-8, far above the 1e-12
that tests/test_reference_golden.cpp allows.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, replace

import numpy as np

GOLDEN_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden"


@dataclass(frozen=True)
class Case:
    method: str  # batchnorm | layernorm | groupnorm | instancenorm | rmsnorm
    pass_: str  # fwd_train | fwd_infer | bwd
    layout: str  # nchw | nhwc
    n: int
    c: int
    h: int = 1
    w: int = 1
    groups: int = 1
    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True
    rows: bool = False  # print the shape as t<N>d<C> (layernorm/rmsnorm with H = W = 1)

    def repro(self) -> str:
        if self.rows:
            shape = f"t{self.n}d{self.c}"
        else:
            shape = f"n{self.n}c{self.c}h{self.h}w{self.w}"
            if self.method == "groupnorm":
                shape += f"g{self.groups}"
        s = f"{self.method}:{self.pass_}:f32:{self.layout}:{shape}:eps{self.eps!r}"
        if self.method == "batchnorm":
            s += f":mom{self.momentum!r}"
        if not self.affine:
            s += ":noaffine"
        return s

    def name(self) -> str:
        return self.repro().replace(":", "_").replace(".", "p").replace("-", "m")


# ---------------------------------------------------------------------------------------------
# Reduction geometry. Every tensor is handled in logical NCHW; x of shape (N, C, H, W) is viewed
# as (N, G, C/G, H, W) for groupnorm/instancenorm, and the reduction axes and the broadcast shape
# of gamma are chosen per method.


def grouped(case: Case, a: np.ndarray) -> np.ndarray:
    """View of an (N, C, H, W) array in which each statistic reduces over axes reduce_axes()."""
    if case.method in ("groupnorm", "instancenorm"):
        g = case.c if case.method == "instancenorm" else case.groups
        return a.reshape(case.n, g, case.c // g, case.h, case.w)
    return a


def reduce_axes(case: Case) -> tuple[int, ...]:
    return {
        "batchnorm": (0, 2, 3),
        "layernorm": (1, 2, 3),
        "rmsnorm": (1, 2, 3),
        "groupnorm": (2, 3, 4),
        "instancenorm": (2, 3, 4),
    }[case.method]


def param_shape(case: Case) -> tuple[int, ...]:
    """Broadcast shape of gamma/beta against logical (N, C, H, W)."""
    if case.method in ("layernorm", "rmsnorm"):
        return (1, case.c, case.h, case.w)
    return (1, case.c, 1, 1)


def param_count(case: Case) -> int:
    return int(np.prod(param_shape(case)))


def flat_stats(case: Case, s: np.ndarray) -> np.ndarray:
    """Statistics (kept-dims array) in the saved order: (C), (N), (N, G) or (N, C)."""
    return s.reshape(-1)


def stats_keepdims(case: Case, flat: np.ndarray) -> np.ndarray:
    """Inverse of flat_stats: the saved statistics broadcastable against grouped(x)."""
    if case.method == "batchnorm":
        return flat.reshape(1, case.c, 1, 1)
    if case.method in ("layernorm", "rmsnorm"):
        return flat.reshape(case.n, 1, 1, 1)
    g = case.c if case.method == "instancenorm" else case.groups
    return flat.reshape(case.n, g, 1, 1, 1)


def to_memory(case: Case, a: np.ndarray) -> np.ndarray:
    """Logical (N, C, H, W) -> flat memory order of the layout."""
    return (a if case.layout == "nchw" else a.transpose(0, 2, 3, 1)).reshape(-1)


# ---------------------------------------------------------------------------------------------
# The methods.


def statistics(case: Case, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Training statistics of logical x: (mean or None for rmsnorm, invstd), kept dims."""
    xg = grouped(case, x)
    axes = reduce_axes(case)
    if case.method == "rmsnorm":
        return None, 1.0 / np.sqrt(np.mean(xg * xg, axis=axes, keepdims=True) + case.eps)
    mean = np.mean(xg, axis=axes, keepdims=True)
    var = np.var(xg, axis=axes, keepdims=True)  # biased (ddof=0), two-pass in NumPy
    return mean, 1.0 / np.sqrt(var + case.eps)


def normalise(case: Case, x, mean, invstd, gamma, beta) -> np.ndarray:
    xg = grouped(case, x)
    xhat = (xg if mean is None else xg - mean) * invstd
    return xhat.reshape(x.shape) * gamma.reshape(param_shape(case)) + beta.reshape(param_shape(case))


def forward(case: Case, x, gamma, beta, running_mean, running_var):
    """Returns y and a dict of the other outputs of the pass."""
    if case.method == "batchnorm" and case.pass_ == "fwd_infer":
        mean = running_mean.reshape(1, case.c, 1, 1)
        invstd = 1.0 / np.sqrt(running_var.reshape(1, case.c, 1, 1) + case.eps)
        return normalise(case, x, mean, invstd, gamma, beta), {}
    mean, invstd = statistics(case, x)
    y = normalise(case, x, mean, invstd, gamma, beta)
    if case.pass_ == "fwd_infer":
        return y, {}
    out = {"invstd": flat_stats(case, invstd)}
    if mean is not None:
        out["mean"] = flat_stats(case, mean)
    if case.method == "batchnorm":
        m = case.n * case.h * case.w
        var = np.var(x, axis=(0, 2, 3))
        mom = case.momentum
        out["running_mean"] = (1 - mom) * running_mean + mom * mean.reshape(-1)
        out["running_var"] = (1 - mom) * running_var + mom * var * m / (m - 1)
    return y, out


def backward(case: Case, x, dy, gamma, mean_flat, invstd_flat):
    """Training-mode backward from the given saved statistics: (dx, dgamma, dbeta), logical."""
    invstd = stats_keepdims(case, invstd_flat)
    xg = grouped(case, x)
    if case.method == "rmsnorm":
        xhat = xg * invstd
    else:
        xhat = (xg - stats_keepdims(case, mean_flat)) * invstd
    xhat = xhat.reshape(x.shape)
    g = grouped(case, dy * gamma.reshape(param_shape(case)))
    xhat_g = grouped(case, xhat)
    axes = reduce_axes(case)
    if case.method == "rmsnorm":
        dx = invstd * (g - xhat_g * np.mean(g * xhat_g, axis=axes, keepdims=True))
    else:
        # dx = invstd * (g - mean(g) - xhat * mean(g * xhat)), the 1/M form of the convention.
        dx = invstd * (
            g
            - np.mean(g, axis=axes, keepdims=True)
            - xhat_g * np.mean(g * xhat_g, axis=axes, keepdims=True)
        )
    # Parameter gradients: sum over every axis that gamma is broadcast along.
    param_axes = (0,) if case.method in ("layernorm", "rmsnorm") else (0, 2, 3)
    dgamma = np.sum(dy * xhat, axis=param_axes).reshape(-1)
    dbeta = np.sum(dy, axis=param_axes).reshape(-1)
    return dx.reshape(x.shape), dgamma, dbeta


# ---------------------------------------------------------------------------------------------
# Fixtures.


def f32(a: np.ndarray) -> np.ndarray:
    """Rounds to fp32 values, kept as float64."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def make_fixture(case: Case, rng: np.random.Generator) -> dict:
    shape = (case.n, case.c, case.h, case.w)
    # Per-channel offsets and scales so batch, group and sample statistics all differ.
    x = f32(rng.normal(0.5, 2.0, shape) + rng.normal(0.0, 1.0, (1, case.c, 1, 1)))
    pc = param_count(case)
    if case.affine:
        gamma = f32(rng.uniform(0.5, 1.5, pc))
        beta = f32(rng.normal(0.0, 0.5, pc)) if case.method != "rmsnorm" else np.zeros(pc)
    else:
        gamma, beta = np.ones(pc), np.zeros(pc)
    inputs: dict[str, np.ndarray] = {"x": to_memory(case, x)}
    if case.affine:
        inputs["gamma"] = gamma
        if case.method != "rmsnorm":
            inputs["beta"] = beta
    outputs: dict[str, np.ndarray] = {}

    if case.pass_ in ("fwd_train", "fwd_infer"):
        running_mean = running_var = None
        if case.method == "batchnorm":
            running_mean = f32(rng.normal(0.0, 0.5, case.c))
            running_var = f32(rng.uniform(0.5, 2.0, case.c))
            inputs["running_mean"] = running_mean
            inputs["running_var"] = running_var
        y, rest = forward(case, x, gamma, beta, running_mean, running_var)
        outputs["y"] = to_memory(case, y)
        outputs.update(rest)
    else:
        train = replace(case, pass_="fwd_train")
        mean, invstd = statistics(train, x)
        invstd_saved = f32(flat_stats(case, invstd))
        mean_saved = None if mean is None else f32(flat_stats(case, mean))
        dy = f32(rng.normal(0.0, 1.0, shape))
        inputs["dy"] = to_memory(case, dy)
        if mean_saved is not None:
            inputs["mean"] = mean_saved
        inputs["invstd"] = invstd_saved
        dx, dgamma, dbeta = backward(case, x, dy, gamma, mean_saved, invstd_saved)
        outputs["dx"] = to_memory(case, dx)
        if case.affine:
            outputs["dgamma"] = dgamma
            if case.method != "rmsnorm":
                outputs["dbeta"] = dbeta

    def as_list(a: np.ndarray) -> list[float]:
        return [float(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]

    return {
        "repro": case.repro(),
        "inputs": {k: as_list(v) for k, v in inputs.items()},
        "outputs": {k: as_list(v) for k, v in outputs.items()},
    }


def cases() -> list[Case]:
    out: list[Case] = []
    for layout in ("nchw", "nhwc"):
        for pass_ in ("fwd_train", "fwd_infer", "bwd"):
            out.append(Case("batchnorm", pass_, layout, 3, 4, 2, 3))
    out.append(Case("batchnorm", "fwd_train", "nhwc", 2, 3, 2, 2, eps=1e-3, momentum=0.3))
    out.append(Case("batchnorm", "bwd", "nchw", 2, 3, 2, 2, affine=False))
    for pass_ in ("fwd_train", "fwd_infer", "bwd"):
        out.append(Case("layernorm", pass_, "nchw", 5, 7, rows=True))
    for layout in ("nchw", "nhwc"):
        for pass_ in ("fwd_train", "bwd"):
            out.append(Case("layernorm", pass_, layout, 2, 3, 2, 2))
    out.append(Case("layernorm", "fwd_train", "nchw", 3, 6, rows=True, affine=False))
    for layout in ("nchw", "nhwc"):
        for pass_ in ("fwd_train", "bwd"):
            out.append(Case("groupnorm", pass_, layout, 2, 6, 3, 2, groups=3))
    out.append(Case("groupnorm", "fwd_infer", "nhwc", 2, 6, 3, 2, groups=3))
    for layout in ("nchw", "nhwc"):
        for pass_ in ("fwd_train", "bwd"):
            out.append(Case("instancenorm", pass_, layout, 2, 3, 2, 3))
    out.append(Case("instancenorm", "fwd_train", "nchw", 2, 3, 2, 3, affine=False))
    out.append(Case("instancenorm", "bwd", "nhwc", 2, 3, 2, 3, affine=False))
    for pass_ in ("fwd_train", "fwd_infer", "bwd"):
        out.append(Case("rmsnorm", pass_, "nchw", 4, 8, eps=1e-6, rows=True))
    for pass_ in ("fwd_train", "bwd"):
        out.append(Case("rmsnorm", pass_, "nhwc", 2, 3, 2, 2, eps=1e-6))
    return out


def to_json(fixture: dict) -> str:
    """JSON with one tensor per line (json.dumps writes floats with repr: full precision)."""
    lines = ["{", f' "repro": {json.dumps(fixture["repro"])},']
    for i, group in enumerate(("inputs", "outputs")):
        tensors = list(fixture[group].items())
        lines.append(f' "{group}": {{')
        for k, (name, values) in enumerate(tensors):
            comma = "," if k + 1 < len(tensors) else ""
            lines.append(f"  {json.dumps(name)}: {json.dumps(values)}{comma}")
        lines.append(" }," if i == 0 else " }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    rng = np.random.default_rng(20240607)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN_DIR.glob("*.json"):
        old.unlink()
    for case in cases():
        path = GOLDEN_DIR / f"{case.name()}.json"
        path.write_text(to_json(make_fixture(case, rng)))
    print(f"wrote {len(cases())} fixtures to {GOLDEN_DIR}")


if __name__ == "__main__":
    main()
