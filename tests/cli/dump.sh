#!/usr/bin/env bash
# --dump output loads with numpy.load and its manifest names every array; the dumped arrays
# reproduce the agreement check independently. Usage: dump.sh NORMBENCH WORKDIR PYTHON
set -u
nb=$1; work=$2; py=$3
"$py" -c "import numpy" 2>/dev/null || { echo "numpy not available in $py: skipped"; exit 77; }
rm -rf "$work"; mkdir -p "$work"; cd "$work" || exit 1
for repro in batchnorm:fwd_train:bf16:nhwc:n2c5h3w3:eps1e-05:mom0.1 \
             groupnorm:bwd:f32:nchw:n2c6h4w4g3:eps1e-05 rmsnorm:fwd_infer:f16:nchw:t4d33:eps1e-06; do
  "$nb" run "$repro" --backends reference --repetitions 1 --min-time 0.001 --dump dump \
    --out /dev/null --quiet || exit 1
done
"$py" - dump <<'PY'
import json, pathlib, sys
import numpy as np
cases = sorted(pathlib.Path(sys.argv[1]).iterdir())
assert len(cases) == 6, cases  # 3 cases x 2 distributions
for case in cases:
    m = json.loads((case / "manifest.json").read_text())
    assert m["repro"] and m["problem"]["method"] in m["repro"]
    for name, info in m["files"].items():
        a = np.load(case / name)
        assert list(a.shape) == info["shape"], (name, a.shape, info)
        assert info["role"] and info["produced_by"]
    def load(name):
        a = np.load(case / name)
        if m["files"][name]["dtype"] == "bf16_bits":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float64)
    # Recompute the agreement from the files alone: err = |got - ref| / max(|ref|, rms(ref)).
    out = "dx" if m["problem"]["pass"] == "bwd" else "y"
    ref, got = load(f"ref64.{out}.npy"), load(f"reference.{out}.npy")
    err = np.abs(got - ref) / np.maximum(np.abs(ref), np.sqrt(np.mean(ref**2)))
    ag = m["agreement"]["reference"]
    assert ag["status"] == "PASS" and err.max() <= ag["threshold"], (case.name, err.max(), ag)
    if m["problem"]["method"] == "batchnorm" and m["problem"]["pass"] == "fwd_train":
        # NHWC x: (N, H, W, C); statistics over N, H, W per channel, from the raw input.
        x = load("x.npy")
        mean = x.mean(axis=(0, 1, 2))
        assert np.allclose(load("ref64.mean.npy"), mean, rtol=1e-12, atol=1e-12)
    print(f"{case.name}: {len(m['files'])} arrays, {out} max err {err.max():.3g} <= {ag['threshold']:.3g}")
PY
