// LayerNorm and RMSNorm over rows: each sample's C*H*W elements (a row of length D), forward and
// backward, in any dtype (fp32 arithmetic, fp32 saved statistics).
//
// Two sets of kernels. Register-resident rows (rows_forward_regs_kernel, rows_backward_regs_kernel,
// rows_regs_config; see there) whenever every row starts on a 16-byte boundary, gamma is not
// permuted and the row fits 1024 (backward 512) threads x 16-32 floats: x (and dy) read from DRAM
// once into registers, all of a thread's loads in flight together, gamma and the dgamma/dbeta
// columns held in registers across rows. Not yet timed on a GPU (kernels/cuda/README.md);
// NB_CUDA_ROWS=shared selects the kernels below instead, so one run can time both. Otherwise:
//
// Forward: one row per warp (D <= 1024, 4 rows per 128-thread block) or per block (larger D,
// 128..1024 threads, about 4 packs per thread). The row is read from global memory once with
// 128-bit loads (scalar head and tail) into fp32 shared memory; from there the statistics are
// exact two-pass (mean, then sum (x - mean)^2, no cancellation), and y is written with 128-bit
// stores. Each thread touches the same elements in every phase (one for_each_aligned split), so
// the phases need no barrier beyond the reductions.
// Backward: the same row mapping, a grid of at most 2 blocks per SM looping over rows. Per row:
// sum(g*dy) and sum(g*dy*xhat) (one pass over x and dy), then dx (x and dy re-read, from L2);
// dgamma/dbeta accumulate per element in the block's shared memory, are written as one partial
// row per block, and a column kernel sums the partials in block order (deterministic, no atomics).
// Rows of D <= 2 (one degree of freedom, dx ~ eps * invstd^2 * dy) take a fp64 thread-per-row
// backward (rows_backward_small_kernel), as fp32 loses var/eps of relative accuracy there.
// Limits: D <= max_shared/4 (forward) and D <= max_shared/8 (backward): rows_unsupported().
#pragma once

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.cuh"
#include "suites/core/problem.hpp"
#include "suites/core/registry.hpp"

namespace NB_CUDA_NAMESPACE {

struct RowsParams {
  const void* x = nullptr;
  void* y = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* mean = nullptr;
  float* invstd = nullptr;
  float* dgamma_partial = nullptr;  ///< [gridDim.x][D], bwd with affine
  float* dbeta_partial = nullptr;   ///< [gridDim.x][D], bwd LayerNorm with affine
  std::int64_t rows = 0, d = 0;
  float eps = 0.f;
  /// NHWC images: element i of a sample is channel i % c, pixel i / c; gamma is C-major.
  bool gamma_permuted = false;
  std::int64_t c = 1, hw = 1;
  bool vectorize = false;
};

NB_DEVICE std::int64_t gamma_index(const RowsParams& p, std::int64_t i) {
  return p.gamma_permuted ? (i % p.c) * p.hw + i / p.c : i;
}

/// Row reduction helper: a warp's or the whole block's sum.
/// Row `row` of the backward's [rows][d] tensors x, dy and dx (both backward kernels).
template <class T>
struct BackwardRow {
  const T* x;
  const T* dy;
  T* dx;
  NB_DEVICE BackwardRow(const RowsParams& p, std::int64_t row, std::int64_t d)
      : x(static_cast<const T*>(p.x) + row * d),
        dy(static_cast<const T*>(p.dy) + row * d),
        dx(static_cast<T*>(p.dx) + row * d) {}
};

template <bool kWarpPerRow>
NB_DEVICE float row_sum(float v, float* scratch) {
  if constexpr (kWarpPerRow)
    return warp_sum(v);
  else
    return block_sum(v, scratch);
}

/// The row's statistics from the team's sum of x (LayerNorm) or of x^2 (RMSNorm): RMSNorm's
/// invstd = 1/sqrt(mean(x^2) + eps); LayerNorm's mean, then invstd from the exact second pass
/// sum (x - mean)^2 that `deviations(mean)` returns for this thread's elements.
template <bool kRms, bool kWarpPerRow, class Deviations>
NB_DEVICE void row_statistics(float total, std::int64_t d, float eps, float* scratch,
                              Deviations deviations, float& mean, float& invstd) {
  const float inv_d = 1.f / static_cast<float>(d);
  mean = 0.f;
  if constexpr (kRms) {
    invstd = rsqrtf(total * inv_d + eps);
  } else {
    mean = total * inv_d;
    invstd = rsqrtf(row_sum<kWarpPerRow>(deviations(mean), scratch) * inv_d + eps);
  }
}

template <class T, bool kRms, bool kWarpPerRow>
__global__ void __launch_bounds__(1024) rows_forward_kernel(RowsParams p) {
  NB_DYNAMIC_SHARED(float, cache);
  NB_SHARED(float, scratch, 32);
  const int tpr = kWarpPerRow ? 32 : static_cast<int>(blockDim.x);
  const int group = static_cast<int>(threadIdx.x) / tpr;
  const int tid = static_cast<int>(threadIdx.x) % tpr;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / tpr) + group;
  if (kWarpPerRow && row >= p.rows) return;  // whole warps only; no block-wide barrier follows
  const std::int64_t d = p.d;
  float* s = cache + group * d;
  const T* x = static_cast<const T*>(p.x) + row * d;
  T* y = static_cast<T*>(p.y) + row * d;

  float acc = 0.f;  // sum x (LayerNorm) or sum x^2 (RMSNorm)
  for_each_aligned<T>(
      x, d, tid, tpr, p.vectorize,
      [&](std::int64_t i) {
        const float v = to_float(x[i]);
        s[i] = v;
        acc += kRms ? v * v : v;
      },
      [&](std::int64_t i) {
        const Pack<T> pk = load_pack(x + i);
        NB_UNROLL
        for (int k = 0; k < Pack<T>::size; ++k) {
          const float v = to_float(pk.v[k]);
          s[i + k] = v;
          acc += kRms ? v * v : v;
        }
      });
  float mean, invstd;
  auto deviations = [&](float m) {  // over this thread's own cached elements
    float m2 = 0.f;
    for_each_aligned<T>(
        x, d, tid, tpr, p.vectorize,
        [&](std::int64_t i) {
          const float c = s[i] - m;
          m2 += c * c;
        },
        [&](std::int64_t i) {
          NB_UNROLL
          for (int k = 0; k < Pack<T>::size; ++k) {
            const float c = s[i + k] - m;
            m2 += c * c;
          }
        });
    return m2;
  };
  row_statistics<kRms, kWarpPerRow>(row_sum<kWarpPerRow>(acc, scratch), d, p.eps, scratch,
                                    deviations, mean, invstd);
  auto out = [&](std::int64_t i) {
    float v = (s[i] - mean) * invstd;
    if (p.gamma) {
      const std::int64_t g = gamma_index(p, i);
      v = v * p.gamma[g] + (p.beta ? p.beta[g] : 0.f);
    }
    return from_float<T>(v);
  };
  for_each_aligned<T>(
      y, d, tid, tpr, p.vectorize, [&](std::int64_t i) { y[i] = out(i); },
      [&](std::int64_t i) {
        Pack<T> pk;
        NB_UNROLL
        for (int k = 0; k < Pack<T>::size; ++k) pk.v[k] = out(i + k);
        store_pack(y + i, pk);
      });
  if (tid == 0) {
    if (p.mean) p.mean[row] = mean;
    if (p.invstd) p.invstd[row] = invstd;
  }
}

template <class T, bool kRms, bool kWarpPerRow>
__global__ void __launch_bounds__(1024) rows_backward_kernel(RowsParams p) {
  NB_DYNAMIC_SHARED(float, acc);  // per row slot: dgamma[D], dbeta[D] (affine only)
  NB_SHARED(float, scratch, 32);
  const int tpr = kWarpPerRow ? 32 : static_cast<int>(blockDim.x);
  const int slots = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr;
  const int tid = static_cast<int>(threadIdx.x) % tpr;
  const std::int64_t d = p.d;
  const bool affine = p.gamma != nullptr;
  float* acc_g = acc + group * 2 * d;
  float* acc_b = acc_g + d;
  if (affine) {
    for (std::int64_t i = tid; i < 2 * d; i += tpr) acc_g[i] = 0.f;
    if constexpr (kWarpPerRow)
      __syncwarp();
    else
      __syncthreads();
  }
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * slots + group; row < p.rows;
       row += static_cast<std::int64_t>(gridDim.x) * slots) {
    const auto [x, dy, dx] = BackwardRow<T>(p, row, d);
    const float mean = kRms ? 0.f : p.mean[row], invstd = p.invstd[row];
    float s_gd = 0.f, s_gdx = 0.f;  // sum g*dy, sum g*dy*xhat
    auto accumulate = [&](std::int64_t i, float xv, float dyv) {
      const float xhat = (xv - mean) * invstd;
      const float g = affine ? p.gamma[gamma_index(p, i)] : 1.f;
      s_gd += g * dyv;
      s_gdx += g * dyv * xhat;
      if (affine) {
        acc_g[i] += dyv * xhat;
        acc_b[i] += dyv;
      }
    };
    for_each_aligned<T>(
        x, d, tid, tpr, p.vectorize,
        [&](std::int64_t i) { accumulate(i, to_float(x[i]), to_float(dy[i])); },
        [&](std::int64_t i) {
          const Pack<T> xp = load_pack(x + i), dp = load_pack(dy + i);
          NB_UNROLL
          for (int k = 0; k < Pack<T>::size; ++k)
            accumulate(i + k, to_float(xp.v[k]), to_float(dp.v[k]));
        });
    const float m_gd = kRms ? 0.f : row_sum<kWarpPerRow>(s_gd, scratch) * inv_d;
    const float m_gdx = row_sum<kWarpPerRow>(s_gdx, scratch) * inv_d;
    auto grad = [&](std::int64_t i, float xv, float dyv) {
      const float xhat = (xv - mean) * invstd;
      const float g = affine ? p.gamma[gamma_index(p, i)] : 1.f;
      return from_float<T>(invstd * (g * dyv - m_gd - xhat * m_gdx));
    };
    for_each_aligned<T>(
        x, d, tid, tpr, p.vectorize,
        [&](std::int64_t i) { dx[i] = grad(i, to_float(x[i]), to_float(dy[i])); },
        [&](std::int64_t i) {
          const Pack<T> xp = load_pack(x + i), dp = load_pack(dy + i);
          Pack<T> out;
          NB_UNROLL
          for (int k = 0; k < Pack<T>::size; ++k)
            out.v[k] = grad(i + k, to_float(xp.v[k]), to_float(dp.v[k]));
          store_pack(dx + i, out);
        });
    // The next row's split of acc among the lanes may differ (rows not 16-byte multiples).
    if constexpr (kWarpPerRow) __syncwarp();
  }
  if (!affine) return;
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float g = 0.f, b = 0.f;
    for (int s = 0; s < slots; ++s) {
      g += acc[s * 2 * d + i];
      b += acc[s * 2 * d + d + i];
    }
    const std::int64_t j = blockIdx.x * d + gamma_index(p, i);  // partials are C-major
    p.dgamma_partial[j] = g;
    if (p.dbeta_partial) p.dbeta_partial[j] = b;
  }
}

/// Backward of rows of D <= 2 elements, one thread per row, in fp64. With at most one degree of
/// freedom, dx is what the projection on xhat leaves: gamma*dy*invstd*(1 - xhat^2) with
/// 1 - xhat^2 = eps*invstd^2 (RMSNorm with D = 1, LayerNorm with D = 2); the fp32 formula loses
/// var/eps (about 1e5) of relative accuracy there. dgamma/dbeta partials: one row per row.
template <class T, bool kRms>
__global__ void __launch_bounds__(128) rows_backward_small_kernel(RowsParams p) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= p.rows) return;
  const std::int64_t d = p.d;
  const T* x = static_cast<const T*>(p.x) + row * d;
  const T* dy = static_cast<const T*>(p.dy) + row * d;
  T* dx = static_cast<T*>(p.dx) + row * d;
  const double mean = kRms ? 0.0 : p.mean[row], invstd = p.invstd[row];
  double s_gd = 0, s_gdxmu = 0;
  for (std::int64_t i = 0; i < d; ++i) {
    const double g = p.gamma ? p.gamma[gamma_index(p, i)] : 1.0;
    const double dyv = to_float(dy[i]), xmu = to_float(x[i]) - mean;
    s_gd += g * dyv;
    s_gdxmu += g * dyv * xmu;
    if (p.gamma) {
      p.dgamma_partial[row * d + gamma_index(p, i)] = static_cast<float>(dyv * xmu * invstd);
      if (p.dbeta_partial) p.dbeta_partial[row * d + gamma_index(p, i)] = static_cast<float>(dyv);
    }
  }
  const double inv_d = 1.0 / static_cast<double>(d);
  for (std::int64_t i = 0; i < d; ++i) {
    const double g = p.gamma ? p.gamma[gamma_index(p, i)] : 1.0;
    const double dyv = to_float(dy[i]), xmu = to_float(x[i]) - mean;
    double v = invstd * g * dyv - xmu * invstd * invstd * invstd * s_gdxmu * inv_d;
    if (!kRms) v -= invstd * s_gd * inv_d;
    dx[i] = from_float<T>(static_cast<float>(v));
  }
}

// ------------------------------------------------------------- register-resident rows
// Rows whose every start is 16-byte aligned (D * sizeof(T) a multiple of 16, x/y/dy/dx aligned),
// gamma/beta 16-byte aligned and not permuted: each thread holds kPacks 128-bit packs of its row
// in registers (pack j of a row belongs to thread j mod tpr, for every row alike), loaded all at
// once before the first reduction, so x (and dy) are read from DRAM exactly once and a thread has
// 2 * kPacks loads in flight; no shared-memory copy of the row. The backward keeps gamma and the
// thread's dgamma/dbeta columns in registers across the rows it loops over (the columns of a
// thread are the same in every row) and writes one partial row per block (the teams of a block
// merged in shared memory in team order). The design of QuACK's and Apex's row kernels (learnt
// from, not copied); chosen by rows_regs_config, which falls back to the kernels above.

/// Packs per thread that keep a row in registers: the forward holds at most 32 floats of x per
/// thread (64 registers at 1024 threads), the backward 16 of x and 16 of dy plus gamma and the
/// dgamma/dbeta accumulators (at most 512 threads: 128 registers).
template <class T>
constexpr int kRegsForwardPacks = 32 / Pack<T>::size;
template <class T>
constexpr int kRegsBackwardPacks = 16 / Pack<T>::size;

/// v[e] = p[e] for the kSize floats of one pack's gamma/beta (16-byte aligned).
template <int kSize>
NB_DEVICE void load_floats(const float* p, float (&v)[kSize]) {
  NB_UNROLL
  for (int q = 0; q < kSize / 4; ++q) {
    const Pack<float> pk = load_pack(p + 4 * q);
    NB_UNROLL
    for (int e = 0; e < 4; ++e) v[4 * q + e] = pk.v[e];
  }
}

template <class T, bool kRms, int kPacks, bool kWarpPerRow>
__global__ void __launch_bounds__(1024) rows_forward_regs_kernel(RowsParams p) {
  NB_SHARED(float, scratch, 32);
  constexpr int kSize = Pack<T>::size;
  const int tpr = kWarpPerRow ? 32 : static_cast<int>(blockDim.x);
  const int group = static_cast<int>(threadIdx.x) / tpr;
  const int tid = static_cast<int>(threadIdx.x) % tpr;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * (blockDim.x / tpr) + group;
  if (kWarpPerRow && row >= p.rows) return;  // whole warps only; no block-wide barrier follows
  const std::int64_t d = p.d, npacks = d / kSize;
  const T* x = static_cast<const T*>(p.x) + row * d;
  T* y = static_cast<T*>(p.y) + row * d;
  float v[kPacks][kSize];
  NB_UNROLL
  for (int k = 0; k < kPacks; ++k) {  // every load issued before the first use
    const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
    if (j < npacks) {
      const Pack<T> pk = load_pack(x + j * kSize);
      NB_UNROLL
      for (int e = 0; e < kSize; ++e) v[k][e] = to_float(pk.v[e]);
    } else {
      NB_UNROLL
      for (int e = 0; e < kSize; ++e) v[k][e] = 0.f;  // adds nothing to sum x or sum x^2
    }
  }
  float acc = 0.f;
  NB_UNROLL
  for (int k = 0; k < kPacks; ++k) {
    NB_UNROLL
    for (int e = 0; e < kSize; ++e) acc += kRms ? v[k][e] * v[k][e] : v[k][e];
  }
  float mean, invstd;
  auto deviations = [&](float m) {  // exact second pass over the registers
    float m2 = 0.f;
    NB_UNROLL
    for (int k = 0; k < kPacks; ++k) {
      if (tid + static_cast<std::int64_t>(k) * tpr >= npacks) continue;
      NB_UNROLL
      for (int e = 0; e < kSize; ++e) m2 += (v[k][e] - m) * (v[k][e] - m);
    }
    return m2;
  };
  row_statistics<kRms, kWarpPerRow>(row_sum<kWarpPerRow>(acc, scratch), d, p.eps, scratch,
                                    deviations, mean, invstd);
  NB_UNROLL
  for (int k = 0; k < kPacks; ++k) {
    const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
    if (j >= npacks) continue;
    float g[kSize], b[kSize];
    NB_UNROLL
    for (int e = 0; e < kSize; ++e) g[e] = 1.f, b[e] = 0.f;
    if (p.gamma) load_floats(p.gamma + j * kSize, g);
    if (p.beta) load_floats(p.beta + j * kSize, b);
    Pack<T> out;
    NB_UNROLL
    for (int e = 0; e < kSize; ++e)
      out.v[e] = from_float<T>((v[k][e] - mean) * invstd * g[e] + b[e]);
    store_pack(y + j * kSize, out);
  }
  if (tid == 0) {
    if (p.mean) p.mean[row] = mean;
    if (p.invstd) p.invstd[row] = invstd;
  }
}

template <class T, bool kRms, int kPacks, bool kWarpPerRow>
__global__ void __launch_bounds__(512) rows_backward_regs_kernel(RowsParams p) {
  NB_DYNAMIC_SHARED(float, merge);  // warp per row with affine: [slots][2][D]
  NB_SHARED(float, scratch, 32);
  constexpr int kSize = Pack<T>::size;
  const int tpr = kWarpPerRow ? 32 : static_cast<int>(blockDim.x);
  const int slots = static_cast<int>(blockDim.x) / tpr;
  const int group = static_cast<int>(threadIdx.x) / tpr;
  const int tid = static_cast<int>(threadIdx.x) % tpr;
  const std::int64_t d = p.d, npacks = d / kSize;
  const bool affine = p.gamma != nullptr;
  float g[kPacks][kSize], dg[kPacks][kSize], db[kPacks][kSize];
  NB_UNROLL
  for (int k = 0; k < kPacks; ++k) {
    const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
    NB_UNROLL
    for (int e = 0; e < kSize; ++e) g[k][e] = 1.f, dg[k][e] = 0.f, db[k][e] = 0.f;
    if (affine && j < npacks) load_floats(p.gamma + j * kSize, g[k]);
  }
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * slots + group; row < p.rows;
       row += static_cast<std::int64_t>(gridDim.x) * slots) {
    const auto [x, dy, dx] = BackwardRow<T>(p, row, d);
    float xv[kPacks][kSize], gv[kPacks][kSize];
    NB_UNROLL
    for (int k = 0; k < kPacks; ++k) {  // every load issued before the first use
      const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
      if (j < npacks) {
        const Pack<T> xp = load_pack(x + j * kSize), dp = load_pack(dy + j * kSize);
        NB_UNROLL
        for (int e = 0; e < kSize; ++e) xv[k][e] = to_float(xp.v[e]), gv[k][e] = to_float(dp.v[e]);
      } else {
        NB_UNROLL
        for (int e = 0; e < kSize; ++e) xv[k][e] = 0.f, gv[k][e] = 0.f;  // dy = 0: adds nothing
      }
    }
    const float mean = kRms ? 0.f : p.mean[row], invstd = p.invstd[row];
    float s_gd = 0.f, s_gdx = 0.f;  // sum g*dy, sum g*dy*xhat
    NB_UNROLL
    for (int k = 0; k < kPacks; ++k) {
      NB_UNROLL
      for (int e = 0; e < kSize; ++e) {
        xv[k][e] = (xv[k][e] - mean) * invstd;  // xhat from here on
        s_gd += g[k][e] * gv[k][e];
        s_gdx += g[k][e] * gv[k][e] * xv[k][e];
        dg[k][e] += gv[k][e] * xv[k][e];
        db[k][e] += gv[k][e];
      }
    }
    const float m_gd = kRms ? 0.f : row_sum<kWarpPerRow>(s_gd, scratch) * inv_d;
    const float m_gdx = row_sum<kWarpPerRow>(s_gdx, scratch) * inv_d;
    NB_UNROLL
    for (int k = 0; k < kPacks; ++k) {
      const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
      if (j >= npacks) continue;
      Pack<T> out;
      NB_UNROLL
      for (int e = 0; e < kSize; ++e)
        out.v[e] = from_float<T>(invstd * (g[k][e] * gv[k][e] - m_gd - xv[k][e] * m_gdx));
      store_pack(dx + j * kSize, out);
    }
  }
  if (!affine) return;
  // One partial row per block: a block of one team writes its registers; teams of one warp each
  // go through shared memory and are summed in team order (deterministic).
  float* dgamma = p.dgamma_partial + blockIdx.x * d;
  float* dbeta = p.dbeta_partial ? p.dbeta_partial + blockIdx.x * d : nullptr;
  float* mg = merge + group * 2 * d;
  NB_UNROLL
  for (int k = 0; k < kPacks; ++k) {
    const std::int64_t j = tid + static_cast<std::int64_t>(k) * tpr;
    if (j >= npacks) continue;
    NB_UNROLL
    for (int e = 0; e < kSize; ++e) {
      if (slots == 1) {
        dgamma[j * kSize + e] = dg[k][e];
        if (dbeta) dbeta[j * kSize + e] = db[k][e];
      } else {
        mg[j * kSize + e] = dg[k][e];
        mg[d + j * kSize + e] = db[k][e];
      }
    }
  }
  if (slots == 1) return;
  __syncthreads();
  for (std::int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float sg = 0.f, sb = 0.f;
    for (int s = 0; s < slots; ++s) {
      sg += merge[s * 2 * d + i];
      sb += merge[s * 2 * d + d + i];
    }
    dgamma[i] = sg;
    if (dbeta) dbeta[i] = sb;
  }
}

/// Threads of column_sum_kernel's blocks: 32 columns x kColumnSumSlices slices of the parts.
constexpr int kColumnSumSlices = 16;

/// out[j] = sum over parts of partial[part][j] for j < n: a block takes 32 consecutive columns
/// (coalesced reads of each part's row), its 16 warps the parts k = w, w + 16, ..., each summed in
/// part order, then the 16 slices in slice order (fixed order: deterministic, no atomics). One
/// thread per column summing all parts, as before, left most SMs idle and each thread a chain of
/// `parts` dependent loads. Block: 32 * kColumnSumSlices threads; grid: ceil(n / 32).
__global__ void __launch_bounds__(512)
    column_sum_kernel(const float* partial, std::int64_t parts, std::int64_t n, float* out) {
  NB_SHARED(float, slice, 32 * kColumnSumSlices);
  const int lane = static_cast<int>(threadIdx.x) % 32, w = static_cast<int>(threadIdx.x) / 32;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * 32 + lane;
  float s = 0.f;
  if (j < n)
    for (std::int64_t k = w; k < parts; k += kColumnSumSlices) s += partial[k * n + j];
  slice[w * 32 + lane] = s;
  __syncthreads();
  if (w != 0 || j >= n) return;
  float total = 0.f;
  for (int q = 0; q < kColumnSumSlices; ++q) total += slice[q * 32 + lane];
  out[j] = total;
}

// ---------------------------------------------------------------------------------- launchers

struct RowsConfig {
  bool warp_per_row;
  int threads;                ///< per block
  std::int64_t blocks;        ///< grid
  std::size_t shared;         ///< dynamic shared bytes
  std::int64_t partial_rows;  ///< rows of the dgamma/dbeta partials (backward)
};

/// Launch configuration from the shape: a warp per row for D <= 1024 (short rows would leave most
/// of a block idle), else a block per row with about 4 packs (64 bytes of x) per thread, between
/// 128 and 1024 threads. Backward: at most 2 blocks per SM, each looping over rows, so that the
/// dgamma/dbeta partials are [2 * SMs][D].
inline RowsConfig rows_config(const nb::Problem& p, const DeviceLimits& lim) {
  const std::int64_t d = p.c * p.h * p.w, rows = p.n;
  const std::int64_t pack = 16 / static_cast<std::int64_t>(nb::element_size(p.dtype));
  RowsConfig c{};
  c.warp_per_row = d <= 1024;
  const int slots = c.warp_per_row ? 4 : 1;
  if (c.warp_per_row) {
    c.threads = 128;
  } else {
    const std::int64_t t = (ceil_div(ceil_div(d, pack), 4) + 31) / 32 * 32;
    c.threads = static_cast<int>(std::min<std::int64_t>(1024, std::max<std::int64_t>(128, t)));
  }
  const bool bwd = p.pass == nb::Pass::bwd;
  if (bwd && d <= 2) {  // rows_backward_small_kernel: a thread per row, partials per row
    c.warp_per_row = false;
    c.threads = 128;
    c.blocks = ceil_div(rows, 128);
    c.shared = 0;
    c.partial_rows = rows;
    return c;
  }
  const std::int64_t row_blocks = ceil_div(rows, slots);
  c.blocks = bwd ? std::min<std::int64_t>(row_blocks, 2 * lim.sm_count) : row_blocks;
  c.shared = static_cast<std::size_t>(slots * d) * sizeof(float) * (bwd ? (p.affine ? 2 : 0) : 1);
  c.partial_rows = c.blocks;
  return c;
}

/// Launch configuration of the register-resident kernels, from the shape alone (rows_run also
/// needs the tensors 16-byte aligned, rows_regs_aligned). A warp per row, 4 rows per 128-thread
/// block, when the row is at most 32 threads x the most packs per thread (forward: 32 floats of
/// x per thread, D <= 1024 f32 / 2048 16-bit; backward 16 floats of x and of dy, D <= 512), with
/// the fewest packs (a power of two) that cover it; else a block per row with 16 floats per thread
/// (ptxas, sm_90: 40-50 registers; 32 floats at 1024 threads spill a few bytes), packs doubled
/// while the block would exceed 1024 (backward: 512) threads; rows longer than that (forward
/// D > 32768, backward D > 8192) take the shared-memory kernels. Backward grid: at most 512
/// threads per SM (what fits at 104-127 registers per thread), each block looping over rows
/// (the partials: one row per block). Nothing for LayerNorm of an NHWC image with affine (gamma
/// permuted), rows whose length is not a multiple of 16 bytes, backward rows of D <= 2, or
/// NB_CUDA_ROWS=shared (the kernels above, to compare both in one run).
struct RowsRegsConfig {
  bool warp_per_row;
  int packs;                  ///< 128-bit packs per thread (1, 2, 4, 8)
  int threads;                ///< per block
  std::int64_t blocks;        ///< grid
  std::size_t shared;         ///< dynamic shared bytes (backward, warp per row, affine)
  std::int64_t partial_rows;  ///< rows of the dgamma/dbeta partials (backward)
};

inline std::optional<RowsRegsConfig> rows_regs_config(const nb::Problem& p,
                                                      const DeviceLimits& lim) {
  const char* env = std::getenv("NB_CUDA_ROWS");
  if (env && std::string(env) == "shared") return std::nullopt;
  const std::int64_t d = p.c * p.h * p.w, rows = p.n;
  const auto e = static_cast<std::int64_t>(nb::element_size(p.dtype));
  const bool bwd = p.pass == nb::Pass::bwd;
  if ((p.layout == nb::Layout::nhwc && p.h * p.w > 1 && p.affine) || d * e % 16 != 0 ||
      (bwd && d <= 2))
    return std::nullopt;
  const std::int64_t size = 16 / e, npacks = d / size;
  const int max_packs = static_cast<int>((bwd ? 16 : 32) / size);
  const std::int64_t max_threads = bwd ? 512 : 1024;
  RowsRegsConfig c{};
  c.warp_per_row = npacks <= 32 * max_packs;
  if (c.warp_per_row) {
    c.packs = 1;
    while (32 * c.packs < npacks) c.packs *= 2;
    c.threads = 128;
  } else {
    c.packs = static_cast<int>(16 / size);  // 16 floats per thread: no spills at 1024 threads
    auto threads_for = [&](int packs) { return (ceil_div(npacks, packs) + 31) / 32 * 32; };
    while (threads_for(c.packs) > max_threads && c.packs < max_packs) c.packs *= 2;
    if (threads_for(c.packs) > max_threads) return std::nullopt;
    c.threads = static_cast<int>(threads_for(c.packs));
  }
  const int slots = c.warp_per_row ? c.threads / 32 : 1;
  const std::int64_t row_blocks = ceil_div(rows, slots);
  c.blocks = bwd ? std::min<std::int64_t>(row_blocks, lim.sm_count * std::max(1, 512 / c.threads))
                 : row_blocks;
  c.shared =
      bwd && p.affine && slots > 1 ? static_cast<std::size_t>(slots * 2 * d) * sizeof(float) : 0;
  if (c.shared > lim.max_shared_bytes || c.blocks > 0x7fffffff) return std::nullopt;
  c.partial_rows = c.blocks;
  return c;
}

/// Whether every row of the pass's tensors starts on a 16-byte boundary (with D * sizeof(T) a
/// multiple of 16, checked by rows_regs_config) and gamma/beta do: the register kernels' packs.
inline bool rows_regs_aligned(const nb::KernelArgs& a) {
  for (const void* q : {a.x, static_cast<const void*>(a.y), a.dy, static_cast<const void*>(a.dx),
                        static_cast<const void*>(a.gamma), static_cast<const void*>(a.beta)})
    if (reinterpret_cast<std::uintptr_t>(q) % 16 != 0) return false;
  return true;
}

inline std::optional<std::string> rows_unsupported(const nb::Problem& p, const DeviceLimits& lim) {
  const RowsConfig c = rows_config(p, lim);
  if (c.shared > lim.max_shared_bytes)
    return "row length " + std::to_string(p.c * p.h * p.w) + " needs " + std::to_string(c.shared) +
           " bytes of shared memory (more than " + std::to_string(lim.max_shared_bytes) + ")";
  if (c.blocks > 0x7fffffff) return "too many rows for one grid";
  return std::nullopt;
}

inline std::size_t rows_workspace_bytes(const nb::Problem& p, const DeviceLimits& lim) {
  if (p.pass != nb::Pass::bwd || !p.affine) return 0;
  // The larger of the two plans' partials: which one runs depends on the tensors' alignment.
  const RowsConfig c = rows_config(p, lim);
  const std::optional<RowsRegsConfig> r = rows_regs_config(p, lim);
  const std::int64_t parts = std::max(c.partial_rows, r ? r->partial_rows : 0);
  return static_cast<std::size_t>(parts * p.c * p.h * p.w) * sizeof(float) * 2;
}

/// Calls f(std::integral_constant<int, K>{}) for K = packs, one of 1, 2, 4, 8 up to kMax.
template <int kMax, class F>
void with_packs(int packs, F f) {
  switch (packs) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      if constexpr (kMax >= 2) return f(std::integral_constant<int, 2>{});
      break;
    case 4:
      if constexpr (kMax >= 4) return f(std::integral_constant<int, 4>{});
      break;
    case 8:
      if constexpr (kMax >= 8) return f(std::integral_constant<int, 8>{});
      break;
  }
  throw std::logic_error("rows: no register kernel for " + std::to_string(packs) + " packs");
}

template <class T>
void rows_run(const nb::Problem& p, const nb::KernelArgs& a, void* workspace,
              const DeviceLimits& lim, Stream stream) {
  const RowsConfig c = rows_config(p, lim);
  const bool rms = p.method == nb::Method::rmsnorm, bwd = p.pass == nb::Pass::bwd;
  RowsParams r;
  r.x = a.x;
  r.y = a.y;
  r.dy = a.dy;
  r.dx = a.dx;
  r.gamma = a.gamma;
  r.beta = a.beta;
  r.mean = a.mean;
  r.invstd = a.invstd;
  r.rows = p.n;
  r.d = p.c * p.h * p.w;
  r.eps = static_cast<float>(p.eps);
  r.gamma_permuted = p.layout == nb::Layout::nhwc && p.h * p.w > 1;
  r.c = p.c;
  r.hw = p.h * p.w;
  std::optional<RowsRegsConfig> regs = rows_regs_config(p, lim);
  if (!rows_regs_aligned(a)) regs.reset();
  const std::int64_t partial_rows = regs ? regs->partial_rows : c.partial_rows;
  if (bwd && p.affine) {
    r.dgamma_partial = static_cast<float*>(workspace);
    if (!rms) r.dbeta_partial = r.dgamma_partial + partial_rows * r.d;
  }
  if (regs) {
    const dim3 grid(static_cast<unsigned>(regs->blocks)),
        block(static_cast<unsigned>(regs->threads));
    const bool warp = regs->warp_per_row;
    if (!bwd) {
      with_packs<kRegsForwardPacks<T>>(regs->packs, [&](auto k) {
        constexpr int K = decltype(k)::value;
        auto kernel = rms ? (warp ? rows_forward_regs_kernel<T, true, K, true>
                                  : rows_forward_regs_kernel<T, true, K, false>)
                          : (warp ? rows_forward_regs_kernel<T, false, K, true>
                                  : rows_forward_regs_kernel<T, false, K, false>);
        launch_kernel("rows_forward_regs_kernel", kernel, grid, block, 0, stream, r);
      });
      return;
    }
    with_packs<kRegsBackwardPacks<T>>(regs->packs, [&](auto k) {
      constexpr int K = decltype(k)::value;
      auto kernel = rms ? (warp ? rows_backward_regs_kernel<T, true, K, true>
                                : rows_backward_regs_kernel<T, true, K, false>)
                        : (warp ? rows_backward_regs_kernel<T, false, K, true>
                                : rows_backward_regs_kernel<T, false, K, false>);
      launch_kernel("rows_backward_regs_kernel", kernel, grid, block, regs->shared, stream, r);
    });
  } else {
    // Rows of a length that is not a multiple of 16 bytes start at different alignments; each
    // row computes its own head, so only the tensors' relative alignment matters.
    const dim3 grid(static_cast<unsigned>(c.blocks)), block(static_cast<unsigned>(c.threads));
    if (!bwd) {
      r.vectorize = same_alignment(a.x, a.y);
      auto kernel = rms ? (c.warp_per_row ? rows_forward_kernel<T, true, true>
                                          : rows_forward_kernel<T, true, false>)
                        : (c.warp_per_row ? rows_forward_kernel<T, false, true>
                                          : rows_forward_kernel<T, false, false>);
      launch_kernel("rows_forward_kernel", kernel, grid, block, c.shared, stream, r);
      return;
    }
    r.vectorize = same_alignment(a.x, a.dy) && same_alignment(a.x, a.dx);
    if (r.d <= 2) {
      launch_kernel(
          "rows_backward_small_kernel",
          rms ? rows_backward_small_kernel<T, true> : rows_backward_small_kernel<T, false>, grid,
          block, 0, stream, r);
    } else {
      auto kernel = rms ? (c.warp_per_row ? rows_backward_kernel<T, true, true>
                                          : rows_backward_kernel<T, true, false>)
                        : (c.warp_per_row ? rows_backward_kernel<T, false, true>
                                          : rows_backward_kernel<T, false, false>);
      launch_kernel("rows_backward_kernel", kernel, grid, block, c.shared, stream, r);
    }
  }
  if (!p.affine) return;
  const dim3 col_grid(static_cast<unsigned>(ceil_div(r.d, 32))), col_block(32 * kColumnSumSlices);
  launch_kernel("column_sum_kernel", column_sum_kernel, col_grid, col_block, 0, stream,
                r.dgamma_partial, partial_rows, r.d, a.dgamma);
  if (!rms)
    launch_kernel("column_sum_kernel", column_sum_kernel, col_grid, col_block, 0, stream,
                  r.dbeta_partial, partial_rows, r.d, a.dbeta);
}

}  // namespace NB_CUDA_NAMESPACE
