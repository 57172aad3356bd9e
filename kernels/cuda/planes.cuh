// BatchNorm, GroupNorm and InstanceNorm in NCHW: kernels over contiguous pieces of memory.
//
// In NCHW a GroupNorm unit (n, g) is one contiguous slice of (C/G)*H*W elements, an InstanceNorm
// unit a contiguous H*W plane, and a BatchNorm unit (channel c) N planes of H*W, C*H*W apart. A
// PlaneWalk describes such units as `segments` contiguous segments of `seg_len` elements; a team
// of threads (1..32 lanes, a power of two, or the whole block: sized from the segment length, see
// channel_norms.cuh) takes one (unit, split) piece and walks it with 128-bit loads (scalar head
// and tail per segment, for_each_aligned).
//
//   nchw_forward_kernel   statistics of each piece: per-lane Welford (a local two-pass per pack,
//                         Chan merges), merged over the team in a fixed order. With one split per
//                         unit ("fused") the team then writes mean/invstd/running statistics and y
//                         (x re-read from L1/L2 right after the first read: DRAM traffic 2x);
//                         otherwise it writes a partial (count, mean, M2) for
//                         stats_finalize_kernel.
//   nchw_backward_kernel  sum dy and sum dy*xhat of each piece. Fused (one split): the team also
//                         forms the unit's dx coefficients and writes dx; GroupNorm with affine
//                         reduces each (n, c) plane of its slice separately, for dgamma/dbeta
//                         (summed over n by grad_finalize_kernel). Otherwise partials per (plane or
//                         BatchNorm channel, split) for grad_finalize_kernel.
//   nchw_map_kernel       y (forward) or dx (backward) of each (n, c) plane from finished unit
//                         statistics and coefficients (two-stage paths; BatchNorm fwd_infer).
//
// y = (x - mean) * (invstd * gamma_c) + beta_c; dx = invstd * (gamma_c * dy - m1 - xhat * m2) with
// m1 = sum(gamma * dy) / M, m2 = sum(gamma * dy * xhat) / M over the unit (CONVENTIONS section 1).
// Both keep (x - mean) explicit: the folded a * x + b forms cancel when |mean| >> std.
#pragma once

#include <cstdint>

#include "channels.cuh"

namespace NB_CUDA_NAMESPACE {

/// Units of one launch: unit u starts at element u * unit_stride and has `segments` segments of
/// seg_len contiguous elements, segment k at + k * seg_stride. Element j = k * seg_len + i of a
/// unit (i < seg_len) belongs to split j / chunk, statistic (u / stat_div) % stat_mod and channel
/// (u % ch_mod) * ch_mul + k * ch_seg + i / ch_len.
struct PlaneWalk {
  std::int64_t units = 0, splits = 1, chunk = 1;
  std::int64_t segments = 1, seg_len = 1, seg_stride = 0, unit_stride = 0;
  int team = 32;  ///< lanes per team: a power of two <= 32, or the block size
  std::int64_t stat_div = 1, stat_mod = INT64_MAX;
  std::int64_t ch_mod = 1, ch_mul = 1, ch_seg = 0, ch_len = INT64_MAX;

  NB_HOST_DEVICE std::int64_t length() const { return segments * seg_len; }
  NB_HOST_DEVICE std::int64_t stat(std::int64_t u) const { return (u / stat_div) % stat_mod; }
  /// Channel of element i of segment k of unit u.
  NB_HOST_DEVICE std::int64_t channel(std::int64_t u, std::int64_t k, std::int64_t i) const {
    return (u % ch_mod) * ch_mul + k * ch_seg + (ch_len >= seg_len ? 0 : i / ch_len);
  }
};

struct PlaneParams {
  PlaneWalk walk;
  const void* x = nullptr;
  void* y = nullptr;
  const void* dy = nullptr;
  void* dx = nullptr;
  const float* gamma = nullptr;  ///< (C) or nullptr (affine off)
  const float* beta = nullptr;
  /// Statistics read: saved mean/invstd (bwd), finished ones (map), or running_mean and
  /// running_var (BatchNorm fwd_infer, invstd_is_var: invstd = 1 / sqrt(var + eps)).
  const float* mean = nullptr;
  const float* invstd = nullptr;
  bool invstd_is_var = false;
  const float* m1 = nullptr;  ///< map backward: per-unit dx coefficients (grad_finalize_kernel)
  const float* m2 = nullptr;
  // Written by the fused forward (nullptr: not written).
  float* mean_out = nullptr;
  float* invstd_out = nullptr;
  float* running_mean = nullptr;
  float* running_var = nullptr;
  float momentum = 0.f;
  // Written by the fused backward.
  float* dgamma = nullptr;  ///< BatchNorm: the unit is the channel
  float* dbeta = nullptr;
  float* plane_sums = nullptr;    ///< GroupNorm/InstanceNorm with affine: (N*C) pairs
  bool per_segment_sums = false;  ///< reduce each segment (an (n, c) plane) on its own
  /// nchw_forward_kernel/nchw_backward_kernel: one split per unit, the team finishes the unit
  /// (else it writes partials).
  bool fused = false;
  // Written when not fused.
  Welford* partial_stats = nullptr;  ///< [units][splits]
  float* partial_sums = nullptr;     ///< [units][splits] pairs (sum dy, sum dy*xhat)
  float eps = 0.f;
  bool vectorize = false;  ///< all tensors share one address mod 16
};

/// This thread's team: its lane, the (unit, split) piece, and whether there is one (the last
/// block may have idle teams; they still take part in the block's barriers and shuffles).
struct TeamPiece {
  int lane;
  std::int64_t unit, split;
  bool active;
};

NB_DEVICE TeamPiece team_piece(const PlaneWalk& w) {
  const int per_block = static_cast<int>(blockDim.x) / w.team;
  const std::int64_t t =
      static_cast<std::int64_t>(blockIdx.x) * per_block + static_cast<int>(threadIdx.x) / w.team;
  TeamPiece p;
  p.lane = static_cast<int>(threadIdx.x) % w.team;
  p.active = t < w.units * w.splits;
  p.unit = p.active ? t / w.splits : 0;
  p.split = p.active ? t % w.splits : 0;
  return p;
}

/// Visits elements [j0, j1) of the unit whose first element is at `unit`, split among the team's
/// lanes segment by segment: scalar(k, i, off) or pack(k, i, off) for element i of segment k at
/// offset off from the unit's start (the pack: Pack<T>::size elements from there, 16-byte
/// aligned). Other tensors of the same shape are addressed with the same offsets.
template <class T, class Scalar, class PackFn>
NB_DEVICE void walk_unit(const PlaneWalk& w, const T* unit, std::int64_t j0, std::int64_t j1,
                         int lane, bool vectorize, Scalar scalar, PackFn pack) {
  for (std::int64_t k = j0 / w.seg_len; k < w.segments && k * w.seg_len < j1; ++k) {
    const std::int64_t lo = (j0 > k * w.seg_len ? j0 : k * w.seg_len) - k * w.seg_len;
    const std::int64_t hi = (j1 < (k + 1) * w.seg_len ? j1 : (k + 1) * w.seg_len) - k * w.seg_len;
    const std::int64_t off = k * w.seg_stride + lo;
    for_each_aligned<T>(
        unit + off, hi - lo, lane, w.team, vectorize,
        [&](std::int64_t i) { scalar(k, lo + i, off + i); },
        [&](std::int64_t i) { pack(k, lo + i, off + i); });
  }
}

/// Calls f(e, channel) for the elements e of a pack that starts at element i of segment k of
/// unit u, stepping the channel without a division per element.
template <class F>
NB_DEVICE void for_pack_channels(const PlaneWalk& w, std::int64_t u, std::int64_t k, std::int64_t i,
                                 int size, F f) {
  if (w.ch_len >= w.seg_len) {
    const std::int64_t c = w.channel(u, k, 0);
    for (int e = 0; e < size; ++e) f(e, c);
    return;
  }
  std::int64_t c = w.channel(u, k, i), r = i % w.ch_len;
  for (int e = 0; e < size; ++e) {
    f(e, c);
    if (++r == w.ch_len) {
      r = 0;
      ++c;
    }
  }
}

template <class T>
__global__ void __launch_bounds__(256) nchw_forward_kernel(PlaneParams p) {
  NB_SHARED(float, scratch, 96);
  constexpr int kPack = Pack<T>::size;
  const PlaneWalk& w = p.walk;
  const TeamPiece t = team_piece(w);
  const std::int64_t j0 = t.split * w.chunk;
  const std::int64_t j1 = j0 + w.chunk < w.length() ? j0 + w.chunk : w.length();
  const T* x = static_cast<const T*>(p.x) + t.unit * w.unit_stride;
  Welford acc;
  if (t.active)
    walk_unit<T>(
        w, x, j0, j1, t.lane, p.vectorize,
        [&](std::int64_t, std::int64_t, std::int64_t off) { welford_add(acc, to_float(x[off])); },
        [&](std::int64_t, std::int64_t, std::int64_t off) {
          const Pack<T> pk = load_pack(x + off);
          float v[kPack];
          NB_UNROLL
          for (int e = 0; e < kPack; ++e) v[e] = to_float(pk.v[e]);
          acc = welford_merge(acc, welford_of(v, kPack));
        });
  acc = team_welford(acc, w.team, scratch);
  if (!p.fused) {
    if (t.active && t.lane == 0) p.partial_stats[t.unit * w.splits + t.split] = acc;
    return;
  }
  if (!t.active) return;
  // Fused: this team holds the unit's complete statistics.
  const float m = static_cast<float>(w.length());
  const float mean = acc.mean, invstd = rsqrtf(acc.m2 / m + p.eps);
  if (t.lane == 0) {
    const std::int64_t s = w.stat(t.unit);
    if (p.mean_out) p.mean_out[s] = mean;
    if (p.invstd_out) p.invstd_out[s] = invstd;
    if (p.running_mean) {
      p.running_mean[s] = (1.f - p.momentum) * p.running_mean[s] + p.momentum * mean;
      p.running_var[s] = (1.f - p.momentum) * p.running_var[s] + p.momentum * (acc.m2 / (m - 1.f));
    }
  }
  T* y = static_cast<T*>(p.y) + t.unit * w.unit_stride;
  auto out = [&](float xv, std::int64_t c) {
    const float a = p.gamma ? p.gamma[c] * invstd : invstd;
    return from_float<T>((xv - mean) * a + (p.beta ? p.beta[c] : 0.f));
  };
  walk_unit<T>(
      w, x, 0, w.length(), t.lane, p.vectorize,
      [&](std::int64_t k, std::int64_t i, std::int64_t off) {
        y[off] = out(to_float(x[off]), w.channel(t.unit, k, i));
      },
      [&](std::int64_t k, std::int64_t i, std::int64_t off) {
        const Pack<T> xp = load_pack(x + off);
        Pack<T> yp;
        for_pack_channels(w, t.unit, k, i, kPack,
                          [&](int e, std::int64_t c) { yp.v[e] = out(to_float(xp.v[e]), c); });
        store_pack(y + off, yp);
      });
}

template <class T>
__global__ void __launch_bounds__(256) nchw_backward_kernel(PlaneParams p) {
  NB_SHARED(float, scratch, 96);
  constexpr int kPack = Pack<T>::size;
  const PlaneWalk& w = p.walk;
  const TeamPiece t = team_piece(w);
  const std::int64_t off0 = t.unit * w.unit_stride;
  const T* x = static_cast<const T*>(p.x) + off0;
  const T* dy = static_cast<const T*>(p.dy) + off0;
  const std::int64_t stat = w.stat(t.unit);
  const float mean = t.active ? p.mean[stat] : 0.f, invstd = t.active ? p.invstd[stat] : 0.f;

  // Sums of dy and dy * xhat over elements [j0, j1) of the unit, reduced over the team.
  auto sums = [&](std::int64_t j0, std::int64_t j1, float& s1, float& s2) {
    s1 = 0.f;
    s2 = 0.f;
    if (t.active)
      walk_unit<T>(
          w, x, j0, j1, t.lane, p.vectorize,
          [&](std::int64_t, std::int64_t, std::int64_t off) {
            const float d = to_float(dy[off]);
            s1 += d;
            s2 += d * ((to_float(x[off]) - mean) * invstd);
          },
          [&](std::int64_t, std::int64_t, std::int64_t off) {
            const Pack<T> xp = load_pack(x + off), dp = load_pack(dy + off);
            NB_UNROLL
            for (int e = 0; e < kPack; ++e) {
              const float d = to_float(dp.v[e]);
              s1 += d;
              s2 += d * ((to_float(xp.v[e]) - mean) * invstd);
            }
          });
    team_sum2(s1, s2, w.team, scratch);
  };

  if (!p.fused) {
    const std::int64_t j0 = t.split * w.chunk;
    float s1, s2;
    sums(j0, j0 + w.chunk < w.length() ? j0 + w.chunk : w.length(), s1, s2);
    if (t.active && t.lane == 0) {
      float* out = p.partial_sums + 2 * (t.unit * w.splits + t.split);
      out[0] = s1;
      out[1] = s2;
    }
    return;
  }

  // Fused: the team reduces its whole unit, then writes dx.
  float t1 = 0.f, t2 = 0.f;  // sum gamma * dy, sum gamma * dy * xhat over the unit
  if (p.per_segment_sums) {
    for (std::int64_t k = 0; k < w.segments; ++k) {  // GroupNorm with affine: plane by plane
      float s1, s2;
      sums(k * w.seg_len, (k + 1) * w.seg_len, s1, s2);
      const std::int64_t c = w.channel(t.unit, k, 0);
      if (t.active && t.lane == 0) {
        float* out = p.plane_sums + 2 * (t.unit * w.segments + k);
        out[0] = s1;
        out[1] = s2;
      }
      const float g = p.gamma[c];
      t1 += g * s1;
      t2 += g * s2;
    }
  } else {
    float s1, s2;
    sums(0, w.length(), s1, s2);
    const std::int64_t c = w.channel(t.unit, 0, 0);  // one channel per unit, or no gamma
    if (t.active && t.lane == 0) {
      if (p.dgamma) {
        p.dgamma[c] = s2;
        if (p.dbeta) p.dbeta[c] = s1;
      }
      if (p.plane_sums) {
        p.plane_sums[2 * t.unit] = s1;
        p.plane_sums[2 * t.unit + 1] = s2;
      }
    }
    const float g = p.gamma ? p.gamma[c] : 1.f;
    t1 = g * s1;
    t2 = g * s2;
  }
  if (!t.active) return;
  const float inv_m = 1.f / static_cast<float>(w.length());
  const float m1 = t1 * inv_m, m2 = t2 * inv_m;
  T* dx = static_cast<T*>(p.dx) + off0;
  auto grad = [&](float xv, float dyv, std::int64_t c) {
    const float g = p.gamma ? p.gamma[c] : 1.f;
    return from_float<T>(invstd * (g * dyv - m1 - (xv - mean) * invstd * m2));
  };
  walk_unit<T>(
      w, x, 0, w.length(), t.lane, p.vectorize,
      [&](std::int64_t k, std::int64_t i, std::int64_t off) {
        dx[off] = grad(to_float(x[off]), to_float(dy[off]), w.channel(t.unit, k, i));
      },
      [&](std::int64_t k, std::int64_t i, std::int64_t off) {
        const Pack<T> xp = load_pack(x + off), dp = load_pack(dy + off);
        Pack<T> out;
        for_pack_channels(w, t.unit, k, i, kPack, [&](int e, std::int64_t c) {
          out.v[e] = grad(to_float(xp.v[e]), to_float(dp.v[e]), c);
        });
        store_pack(dx + off, out);
      });
}

/// y (kBackward false) or dx (true) of every element of the walk's units ((n, c) planes), from
/// finished statistics (and m1/m2). No reductions: idle teams simply return.
template <class T, bool kBackward>
__global__ void __launch_bounds__(256) nchw_map_kernel(PlaneParams p) {
  constexpr int kPack = Pack<T>::size;
  const PlaneWalk& w = p.walk;
  const TeamPiece t = team_piece(w);
  if (!t.active) return;
  const std::int64_t stat = w.stat(t.unit), c = w.channel(t.unit, 0, 0);
  const float mean = p.mean[stat];
  const float invstd = p.invstd_is_var ? rsqrtf(p.invstd[stat] + p.eps) : p.invstd[stat];
  const float g = p.gamma ? p.gamma[c] : 1.f;
  const std::int64_t off0 = t.unit * w.unit_stride;
  const T* x = static_cast<const T*>(p.x) + off0;
  const std::int64_t j0 = t.split * w.chunk;
  const std::int64_t j1 = j0 + w.chunk < w.length() ? j0 + w.chunk : w.length();
  if constexpr (!kBackward) {
    const float a = g * invstd, b = p.beta ? p.beta[c] : 0.f;
    T* y = static_cast<T*>(p.y) + off0;
    walk_unit<T>(
        w, x, j0, j1, t.lane, p.vectorize,
        [&](std::int64_t, std::int64_t, std::int64_t off) {
          y[off] = from_float<T>((to_float(x[off]) - mean) * a + b);
        },
        [&](std::int64_t, std::int64_t, std::int64_t off) {
          const Pack<T> xp = load_pack(x + off);
          Pack<T> yp;
          NB_UNROLL
          for (int e = 0; e < kPack; ++e)
            yp.v[e] = from_float<T>((to_float(xp.v[e]) - mean) * a + b);
          store_pack(y + off, yp);
        });
  } else {
    const T* dy = static_cast<const T*>(p.dy) + off0;
    T* dx = static_cast<T*>(p.dx) + off0;
    const float m1 = p.m1[stat], m2 = p.m2[stat];
    auto grad = [&](float xv, float dyv) {
      return from_float<T>(invstd * (g * dyv - m1 - (xv - mean) * invstd * m2));
    };
    walk_unit<T>(
        w, x, j0, j1, t.lane, p.vectorize,
        [&](std::int64_t, std::int64_t, std::int64_t off) {
          dx[off] = grad(to_float(x[off]), to_float(dy[off]));
        },
        [&](std::int64_t, std::int64_t, std::int64_t off) {
          const Pack<T> xp = load_pack(x + off), dp = load_pack(dy + off);
          Pack<T> out;
          NB_UNROLL
          for (int e = 0; e < kPack; ++e) out.v[e] = grad(to_float(xp.v[e]), to_float(dp.v[e]));
          store_pack(dx + off, out);
        });
  }
}

}  // namespace NB_CUDA_NAMESPACE
