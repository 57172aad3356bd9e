// BatchNorm, GroupNorm and InstanceNorm as the kernels see them: which elements form one
// statistic (a "unit") and which channel's gamma/beta an element takes (ChannelGeometry), and the
// second-stage kernels that merge the partial results of a unit's pieces (written by the first
// stage, one per block or team) in a fixed order: deterministic, no float atomics.
//
//   stats_finalize_kernel  partial (count, mean, M2) -> mean, invstd (Chan et al. merge, no
//                          cancellation), BatchNorm running statistics (CONVENTIONS section 1)
//   grad_finalize_kernel   partial (sum dy, sum dy*xhat) per (sample, channel) -> the per-unit
//                          coefficients of dx and the per-channel dgamma/dbeta
//
// Formulas: CONVENTIONS section 1; reference/batchnorm.cpp and reference/groupnorm.cpp.
#pragma once

#include <cstdint>

#include "common.cuh"
#include "suites/core/problem.hpp"

namespace NB_CUDA_NAMESPACE {

/// Units and channels of a BatchNorm/GroupNorm/InstanceNorm problem (N, C, H, W):
///   BatchNorm     batches = 1, groups = C, cpg = 1, m = N*H*W   (a unit is a channel)
///   GroupNorm     batches = N, groups = G, cpg = C/G, m = (C/G)*H*W
///   InstanceNorm  batches = N, groups = C, cpg = 1, m = H*W
/// Unit index = b * groups + c / cpg with b = n (b = 0 for BatchNorm; note that GroupNorm and
/// InstanceNorm with N = 1 also have batches = 1, so `pooled` tells the methods apart): the order
/// of the saved mean/invstd of nb::KernelArgs ((C), (N, G), (N, C)).
struct ChannelGeometry {
  std::int64_t n = 1, c = 1, hw = 1;
  bool pooled = false;       ///< statistics pooled over the samples (BatchNorm)
  std::int64_t batches = 1;  ///< sample dimension of the statistics: 1 if pooled, else N
  std::int64_t groups = 1;   ///< statistics per sample
  std::int64_t cpg = 1;      ///< channels per statistic
  std::int64_t m = 1;        ///< elements per statistic (M of CONVENTIONS)

  NB_HOST_DEVICE std::int64_t units() const { return batches * groups; }
  /// The statistic of channel ic of sample in.
  NB_HOST_DEVICE std::int64_t unit_of(std::int64_t in, std::int64_t ic) const {
    return (pooled ? 0 : in) * groups + ic / cpg;
  }
};

inline ChannelGeometry channel_geometry(const nb::Problem& p) {
  ChannelGeometry g;
  g.n = p.n;
  g.c = p.c;
  g.hw = p.h * p.w;
  g.pooled = p.method == nb::Method::batchnorm;
  g.batches = g.pooled ? 1 : p.n;
  g.groups = p.method == nb::Method::groupnorm ? p.groups : p.c;
  g.cpg = p.c / g.groups;
  g.m = p.reduction_size();
  return g;
}

// ------------------------------------------------------------------------- statistics merge

/// Partial statistics of unit u = (b, g) = (u / groups, u % groups) lie at
///   partial[b * batch_stride + g * group_stride + s * split_stride + k * part_stride]
/// for s < splits, k < parts (e.g. the splits of a unit over blocks, and the columns of a group in
/// NHWC). Outputs left nullptr are not written.
struct StatsFinalizeParams {
  const Welford* partial = nullptr;
  std::int64_t units = 0, groups = 1;
  std::int64_t batch_stride = 0, group_stride = 0, split_stride = 0, part_stride = 0;
  std::int64_t splits = 1, parts = 1;
  std::int64_t m = 1;  ///< elements per unit
  float eps = 0.f, momentum = 0.f;
  float* mean = nullptr;    ///< workspace (U): what the apply kernel reads
  float* invstd = nullptr;  ///< workspace (U)
  float* mean_out = nullptr;
  float* invstd_out = nullptr;
  float* running_mean = nullptr;  ///< BatchNorm fwd_train: updated with the unbiased variance
  float* running_var = nullptr;
};

/// A warp per unit: lanes merge strided partials, then a butterfly merge (fixed order).
/// Launch: 128 threads, ceil(units / 4) blocks. (A template only so that the header can be
/// included by several translation units: kernels cannot be `inline`.)
template <int = 0>
__global__ void __launch_bounds__(128) stats_finalize_kernel(StatsFinalizeParams p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t u =
      static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (u >= p.units) return;  // whole warps
  const std::int64_t base = (u / p.groups) * p.batch_stride + (u % p.groups) * p.group_stride;
  Welford w;
  for (std::int64_t j = lane; j < p.splits * p.parts; j += 32)
    w = welford_merge(
        w, p.partial[base + (j / p.parts) * p.split_stride + (j % p.parts) * p.part_stride]);
  w = warp_welford(w);
  if (lane != 0) return;
  const float m = static_cast<float>(p.m);
  const float invstd = rsqrtf(w.m2 / m + p.eps);
  if (p.mean) p.mean[u] = w.mean;
  if (p.invstd) p.invstd[u] = invstd;
  if (p.mean_out) p.mean_out[u] = w.mean;
  if (p.invstd_out) p.invstd_out[u] = invstd;
  if (p.running_mean) {
    p.running_mean[u] = (1.f - p.momentum) * p.running_mean[u] + p.momentum * w.mean;
    p.running_var[u] = (1.f - p.momentum) * p.running_var[u] + p.momentum * (w.m2 / (m - 1.f));
  }
}

// ---------------------------------------------------------------------------- gradient merge

/// Partial gradient sums (sum dy, sum dy * xhat) of sample b, channel c, piece s are the float
/// pair at 2 * (b * batch_stride + c * channel_stride + s * split_stride), b < geo.batches,
/// s < splits. Writes, when the pointers are set:
///   m1[u] = sum over the unit of gamma_c * dy / M,  m2[u] = sum of gamma_c * dy * xhat / M
///   dbeta[c] = sum over b, s of sum dy,  dgamma[c] = sum over b, s of sum dy * xhat
struct GradFinalizeParams {
  const float* partial = nullptr;
  std::int64_t batch_stride = 0, channel_stride = 0, split_stride = 0, splits = 1;
  ChannelGeometry geo;
  const float* gamma = nullptr;  ///< nullptr: gamma = 1
  float* m1 = nullptr;           ///< (U) or nullptr: the unit items are skipped
  float* m2 = nullptr;
  float* dgamma = nullptr;  ///< (C) or nullptr: the channel items are skipped
  float* dbeta = nullptr;
};

/// A warp per item: items [0, U) are units (when m1 is set), the next C items channels (when
/// dgamma is set). Lanes sum strided pieces, then a butterfly sum (fixed order).
/// Launch: 128 threads, ceil(items / 4) blocks. (A template: see stats_finalize_kernel.)
template <int = 0>
__global__ void __launch_bounds__(128) grad_finalize_kernel(GradFinalizeParams p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t item =
      static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const ChannelGeometry& g = p.geo;
  const std::int64_t unit_items = p.m1 ? g.units() : 0;
  const std::int64_t channel_items = p.dgamma ? g.c : 0;
  if (item >= unit_items + channel_items) return;  // whole warps
  auto at = [&](std::int64_t b, std::int64_t c, std::int64_t s) {
    return 2 * (b * p.batch_stride + c * p.channel_stride + s * p.split_stride);
  };
  float s1 = 0.f, s2 = 0.f;
  if (item < unit_items) {
    const std::int64_t b = item / g.groups, c0 = (item % g.groups) * g.cpg;
    for (std::int64_t j = lane; j < g.cpg * p.splits; j += 32) {
      const std::int64_t c = c0 + j / p.splits;
      const std::int64_t i = at(b, c, j % p.splits);
      const float gamma = p.gamma ? p.gamma[c] : 1.f;
      s1 += gamma * p.partial[i];
      s2 += gamma * p.partial[i + 1];
    }
    s1 = warp_sum(s1);
    s2 = warp_sum(s2);
    if (lane == 0) {
      const float inv_m = 1.f / static_cast<float>(g.m);
      p.m1[item] = s1 * inv_m;
      p.m2[item] = s2 * inv_m;
    }
    return;
  }
  const std::int64_t c = item - unit_items;
  for (std::int64_t j = lane; j < g.batches * p.splits; j += 32) {
    const std::int64_t i = at(j / p.splits, c, j % p.splits);
    s1 += p.partial[i];
    s2 += p.partial[i + 1];
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  if (lane == 0) {
    p.dgamma[c] = s2;
    if (p.dbeta) p.dbeta[c] = s1;
  }
}

}  // namespace NB_CUDA_NAMESPACE
