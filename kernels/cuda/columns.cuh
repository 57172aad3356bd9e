// BatchNorm, GroupNorm and InstanceNorm in NHWC: kernels over the columns (channels) of a matrix.
//
// NHWC x is viewed as [batches][rows][C]: BatchNorm one batch of N*H*W rows (a channel's unit is
// its whole column), GroupNorm/InstanceNorm N batches of H*W rows (a unit is C/G adjacent columns,
// or one, of one batch). A block is bx x by threads: threadIdx.x % bx picks a column slot (a
// 128-bit pack of adjacent channels, or a single channel in the scalar head/tail or when the rows
// cannot be vectorised), threadIdx.x / bx a row; a block covers bx slots of one batch and one
// split of its rows. Neighbouring lanes read neighbouring slots: every warp access is coalesced.
//
//   nhwc_reduce_kernel  per thread: per-channel Welford over its rows (one division per row for
//                       the whole pack, the count is shared), or sum dy and sum dy*xhat (backward);
//                       then a fixed-order tree over the block's rows in shared memory; one partial
//                       per (batch, split, channel) for stats_finalize_kernel/grad_finalize_kernel.
//   nhwc_map_kernel     y or dx from finished statistics: per-channel coefficients in registers,
//                       a loop over the rows.
// Formulas as in planes.cuh ((x - mean) kept explicit).
#pragma once

#include <cstdint>
#include <type_traits>

#include "channels.cuh"

namespace NB_CUDA_NAMESPACE {

/// Column slots of a row of `cols` elements: `head` single columns (up to the first 16-byte
/// boundary), `packs` packs of Pack<T>::size columns, then single columns to the end; vectorised
/// only when every row starts at the same address mod 16 (C * sizeof(T) % 16 == 0) and all
/// tensors share it, else head = cols. Block b of the grid covers slot block b % slot_blocks,
/// split (b / slot_blocks) % splits, batch b / (slot_blocks * splits); a split is rows_per_split
/// rows.
struct ColumnWalk {
  std::int64_t batches = 1, rows = 1, cols = 1;
  std::int64_t head = 0, packs = 0, slots = 1;
  std::int64_t slot_blocks = 1, splits = 1, rows_per_split = 1;
  int bx = 32, by = 8;
};

struct ColumnParams {
  ColumnWalk walk;
  ChannelGeometry geo;
  const void* x = nullptr;
  void* y = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  const float* gamma = nullptr;  ///< (C) or nullptr (affine off)
  const float* beta = nullptr;
  const float* mean = nullptr;  ///< statistics read (as PlaneParams)
  const float* invstd = nullptr;
  bool invstd_is_var = false;
  const float* m1 = nullptr;
  const float* m2 = nullptr;
  Welford* partial_stats = nullptr;  ///< [batches][splits][C]
  float* partial_sums = nullptr;     ///< [batches][splits][C] pairs (sum dy, sum dy*xhat)
  float eps = 0.f;
};

/// This thread's place: batch, split, first column and width (1 or Pack size) of its slot, and
/// its row lane.
struct ColumnSlot {
  std::int64_t batch, split, col;
  int width, row_lane;
  bool active;
};

template <class T>
NB_DEVICE ColumnSlot column_slot(const ColumnWalk& w) {
  constexpr int kPack = Pack<T>::size;
  ColumnSlot s;
  const std::int64_t b = blockIdx.x;
  const std::int64_t slot = (b % w.slot_blocks) * w.bx + static_cast<int>(threadIdx.x) % w.bx;
  s.split = (b / w.slot_blocks) % w.splits;
  s.batch = b / (w.slot_blocks * w.splits);
  s.row_lane = static_cast<int>(threadIdx.x) / w.bx;
  s.active = slot < w.slots;
  if (slot < w.head) {
    s.col = slot;
    s.width = 1;
  } else if (slot < w.head + w.packs) {
    s.col = w.head + (slot - w.head) * kPack;
    s.width = kPack;
  } else {
    s.col = w.head + w.packs * kPack + (slot - w.head - w.packs);
    s.width = 1;
  }
  if (!s.active) s.width = 0;
  return s;
}

/// Calls body(std::integral_constant<int, W>) with W = the slot's width (Pack<T>::size or 1), so
/// that per-column arrays are indexed by constants and stay in registers; nothing for width 0.
template <class T, class Body>
NB_DEVICE void with_width(int width, Body body) {
  constexpr int kPack = Pack<T>::size;
  if (width == kPack)
    body(std::integral_constant<int, kPack>{});
  else if (width == 1)
    body(std::integral_constant<int, 1>{});
}

/// Loads kW values of a row at the slot's columns (one 128-bit load for a pack).
template <int kW, class T>
NB_DEVICE void load_columns(const T* row, float* v) {
  if constexpr (kW > 1) {
    const Pack<T> pk = load_pack(row);
    NB_UNROLL
    for (int e = 0; e < kW; ++e) v[e] = to_float(pk.v[e]);
  } else {
    v[0] = to_float(row[0]);
  }
}

template <int kW, class T>
NB_DEVICE void store_columns(T* row, const float* v) {
  if constexpr (kW > 1) {
    Pack<T> pk;
    NB_UNROLL
    for (int e = 0; e < kW; ++e) pk.v[e] = from_float<T>(v[e]);
    store_pack(row, pk);
  } else {
    row[0] = from_float<T>(v[0]);
  }
}

/// Dynamic shared memory: blockDim.x * (2 * Pack<T>::size + 1) floats.
template <class T, bool kBackward>
__global__ void __launch_bounds__(256) nhwc_reduce_kernel(ColumnParams p) {
  NB_DYNAMIC_SHARED(float, smem);
  constexpr int kPack = Pack<T>::size;
  const ColumnWalk& w = p.walk;
  const ColumnSlot s = column_slot<T>(w);
  const std::int64_t r0 = s.split * w.rows_per_split;
  const std::int64_t r1 = r0 + w.rows_per_split < w.rows ? r0 + w.rows_per_split : w.rows;
  const std::int64_t batch_off = s.batch * w.rows * w.cols + s.col;
  const T* x = static_cast<const T*>(p.x) + batch_off;

  // Per column e of the slot: Welford (a = mean, b = M2, count shared by the columns), or
  // a = sum dy, b = sum dy * xhat. Columns beyond the slot's width stay 0.
  float count = 0.f, a[kPack], b[kPack];
  NB_UNROLL
  for (int e = 0; e < kPack; ++e) a[e] = b[e] = 0.f;
  with_width<T>(s.width, [&](auto width) {
    constexpr int kW = decltype(width)::value;
    if constexpr (!kBackward) {
      for (std::int64_t r = r0 + s.row_lane; r < r1; r += w.by) {
        float v[kW];
        load_columns<kW>(x + r * w.cols, v);
        count += 1.f;
        const float inv = 1.f / count;
        NB_UNROLL
        for (int e = 0; e < kW; ++e) {
          const float d = v[e] - a[e];
          a[e] += d * inv;
          b[e] += d * (v[e] - a[e]);
        }
      }
    } else {
      const T* dy = static_cast<const T*>(p.dy) + batch_off;
      float mean[kW], invstd[kW];
      NB_UNROLL
      for (int e = 0; e < kW; ++e) {
        const std::int64_t u = p.geo.unit_of(s.batch, s.col + e);
        mean[e] = p.mean[u];
        invstd[e] = p.invstd[u];
      }
      for (std::int64_t r = r0 + s.row_lane; r < r1; r += w.by) {
        float xv[kW], dv[kW];
        load_columns<kW>(x + r * w.cols, xv);
        load_columns<kW>(dy + r * w.cols, dv);
        NB_UNROLL
        for (int e = 0; e < kW; ++e) {
          a[e] += dv[e];
          b[e] += dv[e] * ((xv[e] - mean[e]) * invstd[e]);
        }
      }
    }
  });

  // Tree over the block's row lanes, lower lane first (fixed order). At each level the upper
  // half publishes its entries and the lower half merges them.
  const int nthreads = static_cast<int>(blockDim.x);
  float* s_count = smem;
  float* s_a = smem + nthreads;
  float* s_b = s_a + nthreads * kPack;
  const int me = static_cast<int>(threadIdx.x);
  for (int half = w.by / 2; half > 0; half /= 2) {
    if (s.row_lane >= half && s.row_lane < 2 * half) {
      s_count[me] = count;
      NB_UNROLL
      for (int e = 0; e < kPack; ++e) {
        s_a[me * kPack + e] = a[e];
        s_b[me * kPack + e] = b[e];
      }
    }
    __syncthreads();
    if (s.row_lane < half) {
      const int other = me + half * w.bx;
      if constexpr (!kBackward) {
        const float n2 = s_count[other];
        NB_UNROLL
        for (int e = 0; e < kPack; ++e) {
          Welford l, r;
          l.count = count;
          l.mean = a[e];
          l.m2 = b[e];
          r.count = n2;
          r.mean = s_a[other * kPack + e];
          r.m2 = s_b[other * kPack + e];
          const Welford m = welford_merge(l, r);
          a[e] = m.mean;
          b[e] = m.m2;
        }
        count += n2;
      } else {
        NB_UNROLL
        for (int e = 0; e < kPack; ++e) {
          a[e] += s_a[other * kPack + e];
          b[e] += s_b[other * kPack + e];
        }
      }
    }
    __syncthreads();
  }
  if (s.row_lane != 0 || !s.active) return;
  const std::int64_t out = (s.batch * w.splits + s.split) * w.cols + s.col;
  NB_UNROLL
  for (int e = 0; e < kPack; ++e) {
    if (e >= s.width) break;
    if constexpr (!kBackward) {
      Welford r;
      r.count = count;
      r.mean = a[e];
      r.m2 = b[e];
      p.partial_stats[out + e] = r;
    } else {
      p.partial_sums[2 * (out + e)] = a[e];
      p.partial_sums[2 * (out + e) + 1] = b[e];
    }
  }
}

/// y (kBackward false) or dx (true) from finished statistics (and m1/m2); no shared memory.
template <class T, bool kBackward>
__global__ void __launch_bounds__(256) nhwc_map_kernel(ColumnParams p) {
  const ColumnWalk& w = p.walk;
  const ColumnSlot s = column_slot<T>(w);
  if (!s.active) return;
  const std::int64_t r0 = s.split * w.rows_per_split;
  const std::int64_t r1 = r0 + w.rows_per_split < w.rows ? r0 + w.rows_per_split : w.rows;
  const std::int64_t batch_off = s.batch * w.rows * w.cols + s.col;
  const T* x = static_cast<const T*>(p.x) + batch_off;
  with_width<T>(s.width, [&](auto width) {
    constexpr int kW = decltype(width)::value;
    // Per column: mean, then invstd * gamma and beta (fwd) or invstd and gamma (bwd).
    float mean[kW], scale[kW], shift[kW], m1[kW], m2[kW];
    NB_UNROLL
    for (int e = 0; e < kW; ++e) {
      const std::int64_t c = s.col + e, u = p.geo.unit_of(s.batch, c);
      mean[e] = p.mean[u];
      const float invstd = p.invstd_is_var ? rsqrtf(p.invstd[u] + p.eps) : p.invstd[u];
      const float g = p.gamma ? p.gamma[c] : 1.f;
      scale[e] = kBackward ? invstd : g * invstd;
      shift[e] = kBackward ? g : (p.beta ? p.beta[c] : 0.f);
      m1[e] = kBackward ? p.m1[u] : 0.f;
      m2[e] = kBackward ? p.m2[u] : 0.f;
    }
    if constexpr (!kBackward) {
      T* y = static_cast<T*>(p.y) + batch_off;
      for (std::int64_t r = r0 + s.row_lane; r < r1; r += w.by) {
        float v[kW];
        load_columns<kW>(x + r * w.cols, v);
        NB_UNROLL
        for (int e = 0; e < kW; ++e) v[e] = (v[e] - mean[e]) * scale[e] + shift[e];
        store_columns<kW>(y + r * w.cols, v);
      }
    } else {
      const T* dy = static_cast<const T*>(p.dy) + batch_off;
      T* dx = static_cast<T*>(p.dx) + batch_off;
      for (std::int64_t r = r0 + s.row_lane; r < r1; r += w.by) {
        float xv[kW], dv[kW];
        load_columns<kW>(x + r * w.cols, xv);
        load_columns<kW>(dy + r * w.cols, dv);
        NB_UNROLL
        for (int e = 0; e < kW; ++e)
          xv[e] = scale[e] * (shift[e] * dv[e] - m1[e] - (xv[e] - mean[e]) * scale[e] * m2[e]);
        store_columns<kW>(dx + r * w.cols, xv);
      }
    }
  });
}

}  // namespace NB_CUDA_NAMESPACE
