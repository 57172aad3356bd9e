// LayerNorm and RMSNorm over rows: each sample's C*H*W elements (a row of length D), forward and
// backward, in any dtype (fp32 arithmetic, fp32 saved statistics).
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
#include <optional>
#include <string>

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
template <bool kWarpPerRow>
NB_DEVICE float row_sum(float v, float* scratch) {
  if constexpr (kWarpPerRow)
    return warp_sum(v);
  else
    return block_sum(v, scratch);
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
  const float total = row_sum<kWarpPerRow>(acc, scratch);
  const float inv_d = 1.f / static_cast<float>(d);
  float mean = 0.f, invstd;
  if constexpr (kRms) {
    invstd = rsqrtf(total * inv_d + p.eps);
  } else {
    mean = total * inv_d;
    float m2 = 0.f;  // second pass over this thread's own cached elements
    for_each_aligned<T>(
        x, d, tid, tpr, p.vectorize,
        [&](std::int64_t i) {
          const float c = s[i] - mean;
          m2 += c * c;
        },
        [&](std::int64_t i) {
        NB_UNROLL
          for (int k = 0; k < Pack<T>::size; ++k) {
            const float c = s[i + k] - mean;
            m2 += c * c;
          }
        });
    invstd = rsqrtf(row_sum<kWarpPerRow>(m2, scratch) * inv_d + p.eps);
  }
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
    if constexpr (kWarpPerRow) __syncwarp();
    else __syncthreads();
  }
  const float inv_d = 1.f / static_cast<float>(d);
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * slots + group; row < p.rows;
       row += static_cast<std::int64_t>(gridDim.x) * slots) {
    const T* x = static_cast<const T*>(p.x) + row * d;
    const T* dy = static_cast<const T*>(p.dy) + row * d;
    T* dx = static_cast<T*>(p.dx) + row * d;
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

/// out[j] = sum over parts of partial[part][j], in part order (deterministic); j < n.
__global__ void __launch_bounds__(256)
    column_sum_kernel(const float* partial, std::int64_t parts, std::int64_t n, float* out) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float s = 0.f;
  for (std::int64_t k = 0; k < parts; ++k) s += partial[k * n + j];
  out[j] = s;
}

// ---------------------------------------------------------------------------------- launchers

struct RowsConfig {
  bool warp_per_row;
  int threads;             ///< per block
  std::int64_t blocks;     ///< grid
  std::size_t shared;      ///< dynamic shared bytes
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

inline std::optional<std::string> rows_unsupported(const nb::Problem& p, const DeviceLimits& lim) {
  const RowsConfig c = rows_config(p, lim);
  if (c.shared > lim.max_shared_bytes)
    return "row length " + std::to_string(p.c * p.h * p.w) + " needs " +
           std::to_string(c.shared) + " bytes of shared memory (more than " +
           std::to_string(lim.max_shared_bytes) + ")";
  if (c.blocks > 0x7fffffff) return "too many rows for one grid";
  return std::nullopt;
}

inline std::size_t rows_workspace_bytes(const nb::Problem& p, const DeviceLimits& lim) {
  if (p.pass != nb::Pass::bwd || !p.affine) return 0;
  const RowsConfig c = rows_config(p, lim);
  return static_cast<std::size_t>(c.partial_rows * p.c * p.h * p.w) * sizeof(float) * 2;
}

template <class T>
void rows_run(const nb::Problem& p, const nb::KernelArgs& a, void* workspace,
              const DeviceLimits& lim, Stream stream) {
  const RowsConfig c = rows_config(p, lim);
  const bool rms = p.method == nb::Method::rmsnorm;
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
  // Rows of a length that is not a multiple of 16 bytes start at different alignments; each row
  // computes its own head, so only the tensors' relative alignment matters.
  r.vectorize = true;
  const dim3 grid(static_cast<unsigned>(c.blocks)), block(static_cast<unsigned>(c.threads));
  if (p.pass != nb::Pass::bwd) {
    r.vectorize = r.vectorize && same_alignment(a.x, a.y);
    auto kernel = rms ? (c.warp_per_row ? rows_forward_kernel<T, true, true>
                                        : rows_forward_kernel<T, true, false>)
                      : (c.warp_per_row ? rows_forward_kernel<T, false, true>
                                        : rows_forward_kernel<T, false, false>);
    launch_kernel("rows_forward_kernel", kernel, grid, block, c.shared, stream, r);
    return;
  }
  r.vectorize = r.vectorize && same_alignment(a.x, a.dy) && same_alignment(a.x, a.dx);
  if (p.affine) {
    r.dgamma_partial = static_cast<float*>(workspace);
    if (!rms) r.dbeta_partial = r.dgamma_partial + c.partial_rows * r.d;
  }
  if (r.d <= 2) {
    launch_kernel("rows_backward_small_kernel",
                  rms ? rows_backward_small_kernel<T, true> : rows_backward_small_kernel<T, false>,
                  grid, block, 0, stream, r);
  } else {
    auto kernel = rms ? (c.warp_per_row ? rows_backward_kernel<T, true, true>
                                      : rows_backward_kernel<T, true, false>)
                    : (c.warp_per_row ? rows_backward_kernel<T, false, true>
                                      : rows_backward_kernel<T, false, false>);
    launch_kernel("rows_backward_kernel", kernel, grid, block, c.shared, stream, r);
  }
  if (!p.affine) return;
  const dim3 col_grid(static_cast<unsigned>(ceil_div(r.d, 256))), col_block(256);
  launch_kernel("column_sum_kernel", column_sum_kernel, col_grid, col_block, 0, stream,
                r.dgamma_partial, c.partial_rows, r.d, a.dgamma);
  if (!rms)
    launch_kernel("column_sum_kernel", column_sum_kernel, col_grid, col_block, 0, stream,
                  r.dbeta_partial, c.partial_rows, r.d, a.dbeta);
}

}  // namespace NB_CUDA_NAMESPACE
