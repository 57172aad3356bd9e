// BatchNorm, GroupNorm and InstanceNorm on the `cuda` backend: the launch plan of each pass
// (chosen from the shape and the device's SM count), its workspace, and the launches.
// Kernels: planes.cuh (NCHW), columns.cuh (NHWC), channels.cuh (second-stage merges).
//
// Paths (M = elements per statistic, U = number of statistics):
//  NCHW fwd_train, and fwd_infer of GroupNorm/InstanceNorm:
//    fused      one team per unit: statistics, then y            nchw_forward_kernel
//    two-stage  teams per (unit, split) write partial statistics  nchw_forward_kernel
//               merge per unit in split order                      stats_finalize_kernel
//               y per (n, c) plane                                 nchw_map_kernel
//  NCHW bwd:
//    fused      one team per unit: sums, coefficients, dx          nchw_backward_kernel
//               (+ dgamma/dbeta summed over n for GroupNorm/InstanceNorm with affine:
//                grad_finalize_kernel)
//    two-stage  teams per (BatchNorm channel or (n, c) plane, split) write partial sums
//                                                                  nchw_backward_kernel
//               per-unit coefficients and dgamma/dbeta             grad_finalize_kernel
//               dx per (n, c) plane                                nchw_map_kernel
//  NHWC, every method: partials per (batch, row split, channel) (nhwc_reduce_kernel), merge
//    (stats_finalize_kernel / grad_finalize_kernel), y or dx (nhwc_map_kernel).
//  BatchNorm fwd_infer: nchw_map_kernel / nhwc_map_kernel with the running statistics.
//
// Launch configuration (plane_walk, column_walk): 256-thread blocks. NCHW teams: the whole block
// when a segment has >= 2 packs per thread (>= 2048 f32 or 4096 16-bit elements), else the
// smallest power of two <= 32 lanes covering a segment's packs (1 lane for H*W = 1..4 f32).
// Splits per unit: enough that a lane walks at most 32 packs (reductions; bounds the length of
// each lane's Welford chain) or 16 packs (maps), and more, down to 4 packs per lane, while the
// grid has fewer than 2 blocks per SM. A reduction with one split per unit is fused. NHWC: bx =
// the smallest power of two >= the column slots, at most 32, by = 256 / bx; row splits so that a
// thread walks at most 32 rows (reductions) or 64 rows (maps), and more, down to one row per
// thread, while the grid has fewer than 2 blocks per SM.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "columns.cuh"
#include "planes.cuh"
#include "suites/core/registry.hpp"

namespace NB_CUDA_NAMESPACE {

constexpr int kChannelThreads = 256;
constexpr std::int64_t kReducePacksPerLane = 32, kMapPacksPerLane = 16, kMinPacksPerLane = 4;
constexpr std::int64_t kReduceRowsPerThread = 32, kMapRowsPerThread = 64;

inline bool is_channel_method(nb::Method m) {
  return m == nb::Method::batchnorm || m == nb::Method::groupnorm || m == nb::Method::instancenorm;
}

inline std::int64_t pack_elements(const nb::Problem& p) {
  return 16 / static_cast<std::int64_t>(nb::element_size(p.dtype));
}

/// Team size for segments of `piece` elements (see the header).
inline int team_for(std::int64_t piece, std::int64_t pack) {
  if (piece >= 2 * kChannelThreads * pack) return kChannelThreads;
  return pow2_at_least(ceil_div(piece, pack));
}

/// Sets w.team, w.splits and w.chunk for w's units (see the header). A unit split in several
/// pieces is cut at segment boundaries when its segments are shorter than a piece.
inline void plan_splits(PlaneWalk& w, std::int64_t pack, std::int64_t packs_per_lane,
                        const DeviceLimits& lim, std::int64_t piece) {
  w.team = team_for(piece, pack);
  const std::int64_t len = w.length();
  const std::int64_t per_block = kChannelThreads / w.team;
  const std::int64_t fill = 2 * static_cast<std::int64_t>(lim.sm_count);
  std::int64_t splits = std::max<std::int64_t>(1, ceil_div(len, w.team * pack * packs_per_lane));
  if (ceil_div(w.units * splits, per_block) < fill) {
    const std::int64_t most = std::max(splits, ceil_div(len, w.team * pack * kMinPacksPerLane));
    splits = std::min(most, std::max(splits, ceil_div(fill * per_block, w.units)));
  }
  std::int64_t chunk = ceil_div(len, splits);
  if (w.segments > 1 && chunk > w.seg_len)
    chunk = ceil_div(chunk, w.seg_len) * w.seg_len;
  else
    chunk = ceil_div(chunk, pack) * pack;
  w.chunk = std::max<std::int64_t>(1, chunk);
  w.splits = ceil_div(len, w.chunk);
}

/// NCHW units: GroupNorm/InstanceNorm slices (n, g) of (C/G)*H*W contiguous elements (as
/// `per_plane` segments: C/G planes of H*W), or BatchNorm channels (N planes, C*H*W apart).
inline PlaneWalk unit_walk(const ChannelGeometry& g, bool per_plane) {
  PlaneWalk w;
  w.units = g.units();
  if (g.pooled) {  // BatchNorm
    w.segments = g.n;
    w.seg_len = g.hw;
    w.seg_stride = g.c * g.hw;
    w.unit_stride = g.hw;
  } else {
    w.segments = per_plane ? g.cpg : 1;
    w.seg_len = per_plane ? g.hw : g.cpg * g.hw;
    w.seg_stride = g.hw;
    w.unit_stride = g.cpg * g.hw;
  }
  w.ch_mod = g.groups;
  w.ch_mul = g.cpg;
  w.ch_seg = per_plane ? 1 : 0;
  w.ch_len = g.hw;
  return w;
}

/// NCHW (n, c) planes (BatchNorm: N*C planes too; the statistic is then c).
inline PlaneWalk plane_walk(const ChannelGeometry& g) {
  PlaneWalk w;
  w.units = g.n * g.c;
  w.segments = 1;
  w.seg_len = g.hw;
  w.seg_stride = g.hw;
  w.unit_stride = g.hw;
  w.stat_div = g.cpg;
  w.stat_mod = g.pooled ? g.c : INT64_MAX;
  w.ch_mod = g.c;
  return w;
}

/// NHWC columns; `x` (nullptr: assume aligned) sets the scalar head of the slot plan.
inline ColumnWalk column_walk(const ChannelGeometry& g, std::int64_t pack, std::size_t esize,
                              bool vectorize, const void* x, std::int64_t rows_per_thread,
                              const DeviceLimits& lim) {
  ColumnWalk w;
  w.batches = g.batches;
  w.rows = g.pooled ? g.n * g.hw : g.hw;
  w.cols = g.c;
  const bool rows_aligned = (g.c * static_cast<std::int64_t>(esize)) % 16 == 0;
  const bool vec = vectorize && rows_aligned;
  // The block shape and splits come from the shape alone (the aligned plan), so that the
  // workspace does not depend on the pointers; only the head/pack split of the slots does.
  const std::int64_t nominal_slots = rows_aligned ? g.c / pack : g.c;
  w.bx = pow2_at_least(nominal_slots);
  w.by = kChannelThreads / w.bx;
  while (w.by > 1 && w.by / 2 >= w.rows) w.by /= 2;  // no more row lanes than rows
  if (vec) {
    const auto mis = x ? reinterpret_cast<std::uintptr_t>(x) % 16 : 0;
    w.head = std::min<std::int64_t>(g.c, mis ? static_cast<std::int64_t>((16 - mis) / esize) : 0);
    w.packs = (g.c - w.head) / pack;
  } else {
    w.head = g.c;
    w.packs = 0;
  }
  w.slots = g.c - w.packs * (pack - 1);
  w.slot_blocks = ceil_div(w.slots, w.bx);
  const std::int64_t nominal_blocks = ceil_div(nominal_slots, w.bx) * w.batches;
  std::int64_t splits = std::max<std::int64_t>(1, ceil_div(w.rows, w.by * rows_per_thread));
  const std::int64_t fill = 2 * static_cast<std::int64_t>(lim.sm_count);
  if (nominal_blocks * splits < fill)
    splits = std::min(ceil_div(w.rows, w.by), std::max(splits, ceil_div(fill, nominal_blocks)));
  w.rows_per_split = ceil_div(w.rows, splits);
  w.splits = ceil_div(w.rows, w.rows_per_split);
  return w;
}

/// The plan of one problem: which path, the walks, and the workspace layout (in floats).
struct ChannelPlan {
  ChannelGeometry geo;
  bool nhwc = false, backward = false, infer_bn = false;
  bool fused = false;               ///< NCHW: one team per unit, no partials
  bool per_segment_sums = false;    ///< fused GroupNorm backward with affine
  PlaneWalk reduce, map;            ///< NCHW
  ColumnWalk col_reduce, col_map;   ///< NHWC
  std::int64_t partial_floats = 0;  ///< partial statistics (3 floats each) or sums (2 each)
  std::int64_t unit_floats = 0;     ///< per-unit pairs: mean/invstd or m1/m2
  std::int64_t plane_floats = 0;    ///< fused backward: (n, c) plane sums for dgamma/dbeta
  std::int64_t max_blocks = 0;      ///< largest grid of the plan
};

inline std::int64_t round4(std::int64_t v) { return (v + 3) / 4 * 4; }

/// x: the data pointer when known (sets the NHWC head; nullptr for sizing), vectorize: whether
/// all tensors share one address mod 16.
inline ChannelPlan channel_plan(const nb::Problem& p, const DeviceLimits& lim,
                                const void* x = nullptr, bool vectorize = true) {
  ChannelPlan c;
  c.geo = channel_geometry(p);
  const ChannelGeometry& g = c.geo;
  c.nhwc = p.layout == nb::Layout::nhwc;
  c.backward = p.pass == nb::Pass::bwd;
  c.infer_bn = p.method == nb::Method::batchnorm && p.pass == nb::Pass::fwd_infer;
  const std::int64_t pack = pack_elements(p);
  const std::size_t esize = nb::element_size(p.dtype);
  const std::int64_t units = g.units();
  auto grid_of = [](const PlaneWalk& w) {
    return ceil_div(w.units * w.splits, kChannelThreads / w.team);
  };
  if (c.nhwc) {
    c.col_map = column_walk(g, pack, esize, vectorize, x, kMapRowsPerThread, lim);
    c.max_blocks = c.col_map.slot_blocks * c.col_map.splits * c.col_map.batches;
    if (c.infer_bn) return c;
    c.col_reduce = column_walk(g, pack, esize, vectorize, x, kReduceRowsPerThread, lim);
    c.max_blocks = std::max(c.max_blocks,
                            c.col_reduce.slot_blocks * c.col_reduce.splits * c.col_reduce.batches);
    c.partial_floats = (c.backward ? 2 : 3) * g.batches * c.col_reduce.splits * g.c;
    c.unit_floats = 2 * units;
    return c;
  }
  c.map = plane_walk(g);
  plan_splits(c.map, pack, kMapPacksPerLane, lim, g.hw);
  c.max_blocks = grid_of(c.map);
  if (c.infer_bn) return c;
  if (!c.backward) {
    c.reduce = unit_walk(g, false);
    plan_splits(c.reduce, pack, kReducePacksPerLane, lim, c.reduce.seg_len);
    c.fused = c.reduce.splits == 1;
    if (!c.fused) {
      c.partial_floats = 3 * units * c.reduce.splits;
      c.unit_floats = 2 * units;
    }
  } else {
    // Fused candidate: whole units (GroupNorm with affine: plane by plane, for dgamma/dbeta).
    const bool per_plane = !g.pooled && g.cpg > 1 && p.affine;
    c.reduce = unit_walk(g, per_plane);
    plan_splits(c.reduce, pack, kReducePacksPerLane, lim, c.reduce.seg_len);
    c.fused = c.reduce.splits == 1;
    if (c.fused) {
      c.per_segment_sums = per_plane;
      if (!g.pooled && p.affine) c.plane_floats = 2 * g.n * g.c;
    } else {
      // Two-stage: BatchNorm channels, or (n, c) planes, split.
      if (!g.pooled) c.reduce = plane_walk(g);
      plan_splits(c.reduce, pack, kReducePacksPerLane, lim, c.reduce.seg_len);
      c.partial_floats = 2 * c.reduce.units * c.reduce.splits;
      c.unit_floats = 2 * units;
    }
  }
  c.max_blocks = std::max(c.max_blocks, grid_of(c.reduce));
  return c;
}

/// nullopt when p (BatchNorm, GroupNorm or InstanceNorm) can be launched on a device with these
/// limits, else the reason: an invalid problem (nb::validate), or a grid of more than 2^31 - 1
/// blocks. Every valid problem of a realistic size is supported (no shared-memory limit).
inline std::optional<std::string> channel_unsupported(const nb::Problem& p,
                                                      const DeviceLimits& lim) {
  if (nb::validate(p)) return std::string("invalid problem: ") + *nb::validate(p);
  const ChannelPlan c = channel_plan(p, lim);
  if (c.max_blocks > 0x7fffffff) return std::string("too many blocks for one grid");
  return std::nullopt;
}

/// Bytes of device scratch memory channel_run needs for p (partials, per-unit pairs, plane sums;
/// 0 for the fused forward and BatchNorm fwd_infer). Depends on the shape and the SM count only;
/// the contents need no initialisation.
inline std::size_t channel_workspace_bytes(const nb::Problem& p, const DeviceLimits& lim) {
  const ChannelPlan c = channel_plan(p, lim);
  return static_cast<std::size_t>(round4(c.partial_floats) + round4(c.unit_floats) +
                                  round4(c.plane_floats)) *
         sizeof(float);
}

inline dim3 grid_1d(std::int64_t blocks) { return dim3(static_cast<unsigned>(blocks)); }

/// Enqueues the kernels of p's pass (BatchNorm, GroupNorm or InstanceNorm; T = float, bf16_t or
/// f16_t per p.dtype) on `stream`. `a` holds device pointers (host pointers in emulation) with the
/// shapes of nb::KernelArgs: x, y, dy, dx (N, C, H, W) in p.layout; gamma, beta, dgamma, dbeta (C)
/// fp32, nullptr without affine; mean, invstd fp32 in the order (C), (N, G), (N, C), written by
/// fwd_train and read by bwd; running_mean/running_var (C), BatchNorm only, updated by fwd_train
/// (unbiased variance) and read by fwd_infer. workspace: channel_workspace_bytes(p, lim) bytes.
/// Formulas: CONVENTIONS section 1 (reference/batchnorm.cpp, reference/groupnorm.cpp).
/// Throws std::runtime_error when a launch is rejected (nbemu::Error in emulation).
template <class T>
void channel_run(const nb::Problem& p, const nb::KernelArgs& a, void* workspace,
                 const DeviceLimits& lim, Stream stream) {
  const bool bwd = p.pass == nb::Pass::bwd;
  const bool vectorize =
      bwd ? same_alignment(a.x, a.dy) && same_alignment(a.x, a.dx) : same_alignment(a.x, a.y);
  const ChannelPlan c = channel_plan(p, lim, a.x, vectorize);
  const ChannelGeometry& g = c.geo;
  const std::int64_t units = g.units();
  float* ws = static_cast<float*>(workspace);
  float* partial = ws;
  float* unit_a = partial + round4(c.partial_floats);  // mean or m1
  float* unit_b = unit_a + units;                      // invstd or m2
  float* planes = unit_a + round4(c.unit_floats);
  const dim3 block(kChannelThreads);
  const float eps = static_cast<float>(p.eps);

  // Second stage, shared by the layouts: statistics of unit (b, g) from partials at
  // b * batch_stride + g * group_stride + s * split_stride + k * part_stride.
  auto finalize_stats = [&](std::int64_t splits, std::int64_t parts, std::int64_t batch_stride,
                            std::int64_t group_stride, std::int64_t split_stride,
                            std::int64_t part_stride) {
    StatsFinalizeParams f;
    f.partial = reinterpret_cast<const Welford*>(partial);
    f.units = units;
    f.groups = g.groups;
    f.batch_stride = batch_stride;
    f.group_stride = group_stride;
    f.split_stride = split_stride;
    f.part_stride = part_stride;
    f.splits = splits;
    f.parts = parts;
    f.m = g.m;
    f.eps = eps;
    f.momentum = static_cast<float>(p.momentum);
    f.mean = unit_a;
    f.invstd = unit_b;
    f.mean_out = a.mean;
    f.invstd_out = a.invstd;
    f.running_mean = p.pass == nb::Pass::fwd_train ? a.running_mean : nullptr;
    f.running_var = p.pass == nb::Pass::fwd_train ? a.running_var : nullptr;
    launch_kernel("stats_finalize_kernel", stats_finalize_kernel<>, grid_1d(ceil_div(units, 4)),
                  dim3(128), 0, stream, f);
  };
  auto finalize_grads = [&](const float* sums, std::int64_t splits, std::int64_t batch_stride,
                            std::int64_t channel_stride, std::int64_t split_stride,
                            bool coefficients) {
    GradFinalizeParams f;
    f.partial = sums;
    f.batch_stride = batch_stride;
    f.channel_stride = channel_stride;
    f.split_stride = split_stride;
    f.splits = splits;
    f.geo = g;
    f.gamma = a.gamma;
    f.m1 = coefficients ? unit_a : nullptr;
    f.m2 = coefficients ? unit_b : nullptr;
    f.dgamma = a.dgamma;
    f.dbeta = a.dbeta;
    const std::int64_t items = (coefficients ? units : 0) + (a.dgamma ? g.c : 0);
    if (items > 0)
      launch_kernel("grad_finalize_kernel", grad_finalize_kernel<>, grid_1d(ceil_div(items, 4)),
                    dim3(128), 0, stream, f);
  };

  if (c.nhwc) {
    ColumnParams cp;
    cp.geo = g;
    cp.x = a.x;
    cp.y = a.y;
    cp.dy = a.dy;
    cp.dx = a.dx;
    cp.gamma = a.gamma;
    cp.beta = a.beta;
    cp.eps = eps;
    auto blocks = [](const ColumnWalk& w) { return w.slot_blocks * w.splits * w.batches; };
    auto threads = [](const ColumnWalk& w) { return dim3(static_cast<unsigned>(w.bx * w.by)); };
    if (c.infer_bn) {
      cp.walk = c.col_map;
      cp.mean = a.running_mean;
      cp.invstd = a.running_var;
      cp.invstd_is_var = true;
      launch_kernel("nhwc_map_kernel", nhwc_map_kernel<T, false>, grid_1d(blocks(cp.walk)),
                    threads(cp.walk), 0, stream, cp);
      return;
    }
    cp.walk = c.col_reduce;
    const std::size_t shared =
        static_cast<std::size_t>(cp.walk.bx * cp.walk.by) * (2 * Pack<T>::size + 1) * sizeof(float);
    const std::int64_t splits = c.col_reduce.splits;
    if (!bwd) {
      cp.partial_stats = reinterpret_cast<Welford*>(partial);
      launch_kernel("nhwc_reduce_kernel", nhwc_reduce_kernel<T, false>, grid_1d(blocks(cp.walk)),
                    threads(cp.walk), shared, stream, cp);
      // partial[b][s][c]: unit (b, grp) = columns grp*cpg .. + cpg of every split of batch b.
      finalize_stats(splits, g.cpg, splits * g.c, g.cpg, g.c, 1);
      cp.walk = c.col_map;
      cp.mean = unit_a;
      cp.invstd = unit_b;
      launch_kernel("nhwc_map_kernel", nhwc_map_kernel<T, false>, grid_1d(blocks(cp.walk)),
                    threads(cp.walk), 0, stream, cp);
      return;
    }
    cp.mean = a.mean;
    cp.invstd = a.invstd;
    cp.partial_sums = partial;
    launch_kernel("nhwc_reduce_kernel", nhwc_reduce_kernel<T, true>, grid_1d(blocks(cp.walk)),
                  threads(cp.walk), shared, stream, cp);
    finalize_grads(partial, splits, splits * g.c, 1, g.c, true);
    cp.walk = c.col_map;
    cp.m1 = unit_a;
    cp.m2 = unit_b;
    launch_kernel("nhwc_map_kernel", nhwc_map_kernel<T, true>, grid_1d(blocks(cp.walk)),
                  threads(cp.walk), 0, stream, cp);
    return;
  }

  PlaneParams pp;
  pp.x = a.x;
  pp.y = a.y;
  pp.dy = a.dy;
  pp.dx = a.dx;
  pp.gamma = a.gamma;
  pp.beta = a.beta;
  pp.eps = eps;
  pp.vectorize = vectorize;
  auto blocks = [](const PlaneWalk& w) {
    return ceil_div(w.units * w.splits, kChannelThreads / w.team);
  };
  if (c.infer_bn) {
    pp.walk = c.map;
    pp.mean = a.running_mean;
    pp.invstd = a.running_var;
    pp.invstd_is_var = true;
    launch_kernel("nchw_map_kernel", nchw_map_kernel<T, false>, grid_1d(blocks(pp.walk)), block, 0,
                  stream, pp);
    return;
  }
  pp.walk = c.reduce;
  if (!bwd) {
    if (c.fused) {
      pp.mean_out = a.mean;
      pp.invstd_out = a.invstd;
      if (p.pass == nb::Pass::fwd_train) {
        pp.running_mean = a.running_mean;
        pp.running_var = a.running_var;
      }
      pp.momentum = static_cast<float>(p.momentum);
      pp.fused = true;
      launch_kernel("nchw_forward_kernel", nchw_forward_kernel<T>, grid_1d(blocks(pp.walk)), block,
                    0, stream, pp);
      return;
    }
    pp.partial_stats = reinterpret_cast<Welford*>(partial);
    launch_kernel("nchw_forward_kernel", nchw_forward_kernel<T>, grid_1d(blocks(pp.walk)), block, 0,
                  stream, pp);
    finalize_stats(c.reduce.splits, 1, g.groups * c.reduce.splits, c.reduce.splits, 1, 0);
    pp.walk = c.map;
    pp.mean = unit_a;
    pp.invstd = unit_b;
    launch_kernel("nchw_map_kernel", nchw_map_kernel<T, false>, grid_1d(blocks(pp.walk)), block, 0,
                  stream, pp);
    return;
  }
  pp.mean = a.mean;
  pp.invstd = a.invstd;
  if (c.fused) {
    pp.per_segment_sums = c.per_segment_sums;
    pp.fused = true;
    if (g.pooled) {
      pp.dgamma = a.dgamma;
      pp.dbeta = a.dbeta;
    } else if (c.plane_floats > 0) {
      pp.plane_sums = planes;
    }
    launch_kernel("nchw_backward_kernel", nchw_backward_kernel<T>, grid_1d(blocks(pp.walk)), block,
                  0, stream, pp);
    // dgamma/dbeta of GroupNorm/InstanceNorm: plane sums [n][c] summed over n.
    if (pp.plane_sums) finalize_grads(planes, 1, g.c, 1, 1, false);
    return;
  }
  pp.partial_sums = partial;
  launch_kernel("nchw_backward_kernel", nchw_backward_kernel<T>, grid_1d(blocks(pp.walk)), block, 0,
                stream, pp);
  // partial[(b * C + c) * splits + s] (BatchNorm: b = 0, units are channels).
  finalize_grads(partial, c.reduce.splits, g.c * c.reduce.splits, c.reduce.splits, 1, true);
  pp.walk = c.map;
  pp.m1 = unit_a;
  pp.m2 = unit_b;
  launch_kernel("nchw_map_kernel", nchw_map_kernel<T, true>, grid_1d(blocks(pp.walk)), block, 0,
                stream, pp);
}

}  // namespace NB_CUDA_NAMESPACE
