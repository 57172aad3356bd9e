// Building blocks shared by the kernels of the `openmp` backend: 16-bit load/store (widen to fp32,
// narrow with round-to-nearest-even), exact blocked statistics, the walk over the pieces of a
// reduction unit, and the per-thread schedule of reduction units with its partial-result merge.
//
// Algorithm of the statistics, in one sentence: each block of at most kBlock elements (L1-sized)
// is read twice, once for a rough mean m (rounded to the data's dtype) and once for
// d1 = sum(x - m) and d2 = sum((x - m)^2) (the corrected two-pass algorithm, Chan, Golub &
// LeVeque 1983), and blocks are merged in fp64 with Chan et al.'s (count, mean, M2) update, so no
// E[x^2] - E[x]^2 cancellation occurs and the fp32 rounding error grows with the block length
// only, not with the reduction length (16-bit blocks are widened once into an fp32 L1 buffer).
//
// Multiversioning (the binary must start on any x86-64): each per-thread kernel is declared with
// NB_OMP_KERNEL, i.e. GCC `target_clones` for baseline x86-64, x86-64-v3 (AVX2, FMA) and
// x86-64-v4 (AVX-512), chosen at load time through an ifunc. Every helper of this header and
// every lambda in a kernel is always_inline (NB_OMP_INLINE, NB_OMP_LAMBDA) and the kernels are
// `flatten`, so the loops are compiled for each clone's ISA and no out-of-line helper compiled
// for a wide ISA can be picked by the linker for a narrow one (check: `nm -C` on the objects
// lists no lambda or helper symbol). Plain C++ with `#pragma omp simd`; no intrinsics.
//
// Non-temporal stores are not used: GCC 12 accepts `#pragma omp simd nontemporal(y)` but emits
// ordinary stores, and there is no portable way without intrinsics. The avx512 backend has them.
//
// Limits: x86-64 with GCC for the clones (other compilers get one portable version); indices are
// 64-bit; the 16-bit conversions assume the default MXCSR rounding mode (round to nearest even).
#pragma once

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "dtype.hpp"
#include "problem.hpp"
#include "registry.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NB_OMP_KERNEL \
  __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4"), flatten))
#else
#define NB_OMP_KERNEL __attribute__((flatten))
#endif
#define NB_OMP_INLINE inline __attribute__((always_inline))
/// On every lambda inside a kernel (`[&](Index i) NB_OMP_LAMBDA { ... }`): `flatten` alone does
/// not inline a default-target lambda into a target clone (GCC refuses mismatched targets unless
/// the callee is always_inline), and an out-of-line lambda would run baseline code.
#define NB_OMP_LAMBDA __attribute__((always_inline))

namespace nb::omp {

using Index = std::int64_t;

// ---------------------------------------------------------------------------------------------
// Element types and conversions. Branch-free so that `#pragma omp simd` loops vectorise; results
// are bit-identical to nb::float_to_bf16 / float_to_f16 / f16_to_float (dtype.hpp).

template <DType DT>
struct StorageOf {
  using type = std::uint16_t;
};
template <>
struct StorageOf<DType::f32> {
  using type = float;
};
/// The C++ type an element of dtype DT is stored as (float, or the 16-bit pattern).
template <DType DT>
using Storage = typename StorageOf<DT>::type;

/// All-ones when c, else zero: the conversions select with masks instead of `?:`, which GCC 12
/// turns into branches (and then does not vectorise) for some of these selections.
NB_OMP_INLINE std::uint32_t mask_if(bool c) { return 0u - static_cast<std::uint32_t>(c); }
NB_OMP_INLINE std::uint32_t select(std::uint32_t mask, std::uint32_t a, std::uint32_t b) {
  return (a & mask) | (b & ~mask);
}

NB_OMP_INLINE float widen_bf16(std::uint16_t h) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

/// fp32 -> bf16, round to nearest even; NaN stays a quiet NaN.
NB_OMP_INLINE std::uint16_t narrow_bf16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (u >> 16) | 0x40u;
  // Signed compares (the magnitude is < 2^31): SSE2 has no unsigned 32-bit compare.
  const std::int32_t magnitude = static_cast<std::int32_t>(u & 0x7fffffffu);
  return static_cast<std::uint16_t>(select(mask_if(magnitude > 0x7f800000), quiet_nan, rounded));
}

/// IEEE binary16 -> fp32 (exact): the exponent/fraction bits moved into fp32 position read as
/// 2^-112 times the value (a subnormal binary16 becomes an fp32 subnormal), so one multiply by
/// 2^112 rebiases normals and normalises subnormals; exponent 31 (infinity/NaN) is forced to 255.
NB_OMP_INLINE float widen_f16(std::uint16_t h) {
  const std::uint32_t bits = h;
  const std::uint32_t magnitude = bits & 0x7fffu;
  const float scaled = std::bit_cast<float>(magnitude << 13) * 0x1p112f;
  const std::uint32_t inf_nan =
      mask_if(static_cast<std::int32_t>(magnitude) >= 0x7c00) & 0x7f800000u;
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(scaled) | inf_nan |
                              ((bits & 0x8000u) << 16));
}

/// fp32 -> IEEE binary16, round to nearest even, overflow to infinity, subnormals kept.
NB_OMP_INLINE std::uint16_t narrow_f16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t a = u & 0x7fffffffu;
  const std::int32_t magnitude = static_cast<std::int32_t>(a);
  // Normal result: rebias the exponent (127 -> 15) and round the 13 dropped fraction bits to
  // nearest even; everything from 65520 up lands at or above 0x7c00 and is clamped to infinity.
  const std::uint32_t normal = std::min((a - 0x37fff001u + ((a >> 13) & 1u)) >> 13, 0x7c00u);
  // Subnormal result: adding 0.5f aligns the value to units of 2^-24 (the ulp of 0.5), and the
  // fp32 addition rounds to nearest even; the low bits are then the binary16 pattern.
  const std::uint32_t subnormal =
      std::bit_cast<std::uint32_t>(std::bit_cast<float>(a) + 0.5f) - 0x3f000000u;
  std::uint32_t r = select(mask_if(magnitude < 0x38800000), subnormal, normal);
  r = select(mask_if(magnitude > 0x7f800000), 0x7e00u, r);  // NaN
  return static_cast<std::uint16_t>(r | ((u >> 16) & 0x8000u));
}

template <DType DT>
NB_OMP_INLINE float load(const Storage<DT>* p, Index i) {
  if constexpr (DT == DType::f32)
    return p[i];
  else if constexpr (DT == DType::bf16)
    return widen_bf16(p[i]);
  else
    return widen_f16(p[i]);
}

template <DType DT>
NB_OMP_INLINE void store(Storage<DT>* p, Index i, float v) {
  if constexpr (DT == DType::f32)
    p[i] = v;
  else if constexpr (DT == DType::bf16)
    p[i] = narrow_bf16(v);
  else
    p[i] = narrow_f16(v);
}

/// v rounded to the nearest value of dtype DT (identity for f32). The rough mean of a block is
/// put on the data's grid so that x - m is exact for 16-bit x: an fp32 m has low bits the
/// 11- or 8-bit values lack, and x - m would round the same way for every x of a binade, a
/// bias that grows linearly with the block length instead of averaging out.
template <DType DT>
NB_OMP_INLINE float round_to(float v) {
  if constexpr (DT == DType::f32)
    return v;
  else if constexpr (DT == DType::bf16)
    return widen_bf16(narrow_bf16(v));
  else
    return widen_f16(narrow_f16(v));
}

/// Calls f.template operator()<DT>() with the compile-time dtype of dt.
template <class F>
void with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32:
      f.template operator()<DType::f32>();
      break;
    case DType::bf16:
      f.template operator()<DType::bf16>();
      break;
    case DType::f16:
      f.template operator()<DType::f16>();
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// Statistics and partial results.

/// Elements per statistics block: 8 KiB of fp32, so x (and dy) of a block stay in L1 between its
/// two passes, and each SIMD lane adds at most kBlock / width terms in fp32.
inline constexpr Index kBlock = 2048;

/// (count, mean, M2 = sum of squared deviations) of a set of values, in fp64.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
};

/// Chan, Golub & LeVeque's pairwise update: a <- moments of the union of a's and b's values.
NB_OMP_INLINE void combine(Moments& a, const Moments& b) {
  if (b.count == 0) return;
  if (a.count == 0) {
    a = b;
    return;
  }
  const double n = a.count + b.count;
  const double inv_n = 1.0 / n;
  const double delta = b.mean - a.mean;
  a.mean += delta * b.count * inv_n;
  a.m2 += b.m2 + delta * delta * a.count * b.count * inv_n;
  a.count = n;
}

/// Moments of a block from its rough mean m and the sums d1 = sum(x - m), d2 = sum((x - m)^2)
/// (corrected two-pass: the rough mean's error is removed by d1, which has no cancellation).
NB_OMP_INLINE Moments block_moments(double count, float m, double d1, double d2) {
  const double mean_shift = d1 / count;
  return {count, m + mean_shift, std::max(0.0, d2 - d1 * mean_shift)};
}

/// Two fp64 sums, merged by addition (backward: sum(dy), sum(dy * (x - mean)); or gamma-folded).
struct Sums {
  double s1 = 0, s2 = 0;
};
NB_OMP_INLINE void combine(Sums& a, const Sums& b) {
  a.s1 += b.s1;
  a.s2 += b.s2;
}

/// invstd = 1 / sqrt(M2 / count + eps), the biased variance of CONVENTIONS section 1.
NB_OMP_INLINE double invstd_of(const Moments& m, double eps) {
  return 1.0 / std::sqrt(m.m2 / m.count + eps);
}

/// y = (x - shift) * scale + bias. Normalisation is written about the fp32 mean `shift` so that
/// x - shift is exact for inputs near the mean (|mean| >> std); the rounding of the fp64 mean to
/// fp32 is folded into bias.
struct Affine {
  float shift = 0, scale = 1, bias = 0;
};
NB_OMP_INLINE Affine affine_about(double mean, double scale, double bias) {
  const float shift = static_cast<float>(mean);
  return {shift, static_cast<float>(scale), static_cast<float>(bias - (mean - shift) * scale)};
}

/// Backward of one reduction unit: dx = a * dy - (x - mean) * b - c, where a = invstd * gamma,
/// b = invstd^3 * sum(gamma dy (x - mean)) / M and c = invstd * sum(gamma dy) / M (CONVENTIONS
/// section 1, gamma folded into dy). Written about the fp32 saved mean for the same reason as
/// Affine.
struct Gradient {
  float mean = 0, a = 0, b = 0, c = 0;
};
NB_OMP_INLINE Gradient gradient_of(double mean, double invstd, double gamma, double sum_gamma_dy,
                                   double sum_gamma_dy_xmu, double count) {
  return {static_cast<float>(mean), static_cast<float>(invstd * gamma),
          static_cast<float>(invstd * invstd * invstd * sum_gamma_dy_xmu / count),
          static_cast<float>(invstd * sum_gamma_dy / count)};
}

// ---------------------------------------------------------------------------------------------
// Reduction units made of strided segments (NCHW layouts and rows).

/// A reduction unit as `count` segments of `length` contiguous elements, `stride` elements apart:
/// BatchNorm NCHW (N, H*W, C*H*W), GroupNorm NCHW (C/G, H*W, H*W), a row (1, D, D). Logical
/// index i of the unit is element i % length of segment i / length.
struct Segments {
  Index count = 1, length = 1, stride = 1;
};

/// Calls f(segment, offset, length) for the contiguous pieces of logical range [begin, end).
template <class F>
NB_OMP_INLINE void for_each_piece(const Segments& g, Index begin, Index end, F&& f) {
  Index s = begin / g.length;
  Index offset = begin - s * g.length;
  while (begin < end) {
    const Index len = std::min(g.length - offset, end - begin);
    f(s, offset, len);
    begin += len;
    ++s;
    offset = 0;
  }
}

/// Calls f(block_begin, block_end) for consecutive blocks of at most kBlock elements covering
/// [begin, end); short segments are grouped whole into a block.
template <class F>
NB_OMP_INLINE void for_each_block(const Segments& g, Index begin, Index end, F&& f) {
  const Index step = g.length >= kBlock ? kBlock : (kBlock / g.length) * g.length;
  for (Index b = begin; b < end; b += step) f(b, std::min(b + step, end));
}

/// Prefetches [p, p + bytes) towards L2 (the next reduction unit while this one is written).
NB_OMP_INLINE void prefetch(const void* p, Index bytes) {
  const char* c = static_cast<const char*>(p);
  for (Index i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 2);
}

/// Moments of logical range [begin, end) of the unit at x (corrected two-pass per block). 16-bit
/// blocks are widened once into an fp32 buffer that the second pass reads (L1-resident).
template <DType DT>
NB_OMP_INLINE Moments range_moments(const Storage<DT>* x, const Segments& g, Index begin,
                                    Index end) {
  constexpr bool kWiden = DT != DType::f32;
  float widened[kWiden ? kBlock : 1];
  Moments acc;
  for_each_block(g, begin, end, [&](Index b0, Index b1) NB_OMP_LAMBDA {
    float sum = 0;
    for_each_piece(g, b0, b1, [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
      const Storage<DT>* xs = x + s * g.stride + o;
      float* buffer = kWiden ? widened + (s * g.length + o - b0) : nullptr;
      float part = 0;
#pragma omp simd reduction(+ : part)
      for (Index i = 0; i < len; ++i) {
        const float v = load<DT>(xs, i);
        if constexpr (kWiden) buffer[i] = v;
        part += v;
      }
      sum += part;
    });
    const float m = round_to<DT>(sum / static_cast<float>(b1 - b0));
    double d1 = 0, d2 = 0;
    for_each_piece(g, b0, b1, [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
      const Storage<DT>* xs = x + s * g.stride + o;
      const float* buffer = kWiden ? widened + (s * g.length + o - b0) : nullptr;
      // p1, the correction term of the mean, decides its last digits: accumulated in double
      // (in fp32 over a 1031-element f16 row the mean missed the fp64 reference by 1.6e-5
      // relative at -O2); p2 has no cancellation and stays fp32.
      double p1 = 0;
      float p2 = 0;
#pragma omp simd reduction(+ : p1, p2)
      for (Index i = 0; i < len; ++i) {
        const float d = (kWiden ? buffer[i] : load<DT>(xs, i)) - m;
        p1 += d;
        p2 += d * d;
      }
      d1 += p1;
      d2 += p2;
    });
    combine(acc, block_moments(b1 - b0, m, d1, d2));
  });
  return acc;
}

/// y = (x - shift) * scale + bias over logical range [begin, end), with coef(segment) -> Affine.
/// When next_x is not null, the same range of the unit at next_x is prefetched block by block.
template <DType DT, class Coef>
NB_OMP_INLINE void range_apply(const Storage<DT>* x, Storage<DT>* y, const Segments& g, Index begin,
                               Index end, Coef&& coef, const Storage<DT>* next_x) {
  for_each_block(g, begin, end, [&](Index b0, Index b1) NB_OMP_LAMBDA {
    for_each_piece(g, b0, b1, [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
      const Affine k = coef(s);
      const Storage<DT>* xs = x + s * g.stride + o;
      Storage<DT>* ys = y + s * g.stride + o;
#pragma omp simd
      for (Index i = 0; i < len; ++i)
        store<DT>(ys, i, (load<DT>(xs, i) - k.shift) * k.scale + k.bias);
      if (next_x) prefetch(next_x + s * g.stride + o, len * Index{sizeof(Storage<DT>)});
    });
  });
}

/// Backward sums over logical range [begin, end): calls f(segment, sum(dy), sum(dy * (x - mean)))
/// once per piece of at most kBlock elements (fp32 inside a piece, the caller adds in fp64).
template <DType DT, class F>
NB_OMP_INLINE void range_backward_sums(const Storage<DT>* x, const Storage<DT>* dy,
                                       const Segments& g, Index begin, Index end, float mean,
                                       F&& f) {
  for_each_block(g, begin, end, [&](Index b0, Index b1) NB_OMP_LAMBDA {
    for_each_piece(g, b0, b1, [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
      const Storage<DT>* xs = x + s * g.stride + o;
      const Storage<DT>* dys = dy + s * g.stride + o;
      float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (Index i = 0; i < len; ++i) {
        const float d = load<DT>(dys, i);
        s1 += d;
        s2 += d * (load<DT>(xs, i) - mean);
      }
      f(s, static_cast<double>(s1), static_cast<double>(s2));
    });
  });
}

/// dx = a * dy - (x - mean) * b - c over logical range [begin, end), coef(segment) -> Gradient;
/// prefetches the same range of next_x / next_dy when they are not null.
template <DType DT, class Coef>
NB_OMP_INLINE void range_backward_apply(const Storage<DT>* x, const Storage<DT>* dy,
                                        Storage<DT>* dx, const Segments& g, Index begin, Index end,
                                        Coef&& coef, const Storage<DT>* next_x,
                                        const Storage<DT>* next_dy) {
  for_each_block(g, begin, end, [&](Index b0, Index b1) NB_OMP_LAMBDA {
    for_each_piece(g, b0, b1, [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
      const Gradient k = coef(s);
      const Index at = s * g.stride + o;
      const Storage<DT>* xs = x + at;
      const Storage<DT>* dys = dy + at;
      Storage<DT>* dxs = dx + at;
#pragma omp simd
      for (Index i = 0; i < len; ++i)
        store<DT>(dxs, i, k.a * load<DT>(dys, i) - (load<DT>(xs, i) - k.mean) * k.b - k.c);
      if (next_x) {
        prefetch(next_x + at, len * Index{sizeof(Storage<DT>)});
        prefetch(next_dy + at, len * Index{sizeof(Storage<DT>)});
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Work schedule.

/// First index of thread t's share when `total` items are split into T near-equal parts.
NB_OMP_INLINE Index share_begin(Index total, int t, int threads) {
  const Index q = total / threads, r = total % threads;
  return q * t + std::min<Index>(t, r);
}

/// Whether a unit of `bytes` (x, plus dy for backward) is worth prefetching while the previous
/// one is written: both must fit in this thread's share of L2 + LLC (CONVENTIONS section 3).
bool prefetch_worthwhile(Index unit_bytes);

/// Number of partial-result slots run_units needs per entry of a unit's partial result.
inline Index run_units_slots(int threads) { return 3 * Index{threads}; }

/// The schedule of every kernel, called by each thread of a parallel region. `units` reduction
/// units of `unit_size` items each (elements, or rows for channels-last); every unit has a
/// partial result of K entries of type P (Moments or Sums).
///  - Whole units: thread t takes units [t q, (t + 1) q), q = units / T, and runs
///    phase_a(u, 0, unit_size, partial) then phase_b(u, 0, unit_size, partial, owner = true, next)
///    on each while it is in its cache; next is the following unit (to prefetch) or -1.
///  - The units % T left over (all of them when split_all) are split: every thread runs phase_a
///    on its share [b, e) of the unit, the T partial results are merged after a barrier (in the
///    same order by every thread, so all get the same result), then phase_b on the same share;
///    owner is true for thread 0 only (it writes the unit's statistics). Partial slots are double
///    buffered, so one barrier per split unit suffices. Both cores stay busy when units < T.
/// slots: run_units_slots(T) * K entries.
template <class P, class PhaseA, class PhaseB>
NB_OMP_INLINE void run_units(Index units, Index unit_size, Index K, bool split_all, P* slots,
                             PhaseA&& phase_a, PhaseB&& phase_b) {
  const int threads = omp_get_num_threads();
  const int t = omp_get_thread_num();
  P* mine = slots + (2 * Index{threads} + t) * K;
  const Index per_thread = split_all ? 0 : units / threads;
  const Index first = t * per_thread, last = first + per_thread;
  for (Index u = first; u < last; ++u) {
    for (Index k = 0; k < K; ++k) mine[k] = P{};
    phase_a(u, Index{0}, unit_size, mine);
    phase_b(u, Index{0}, unit_size, static_cast<const P*>(mine), true, u + 1 < last ? u + 1 : -1);
  }
  const Index b = share_begin(unit_size, t, threads);
  const Index e = share_begin(unit_size, t + 1, threads);
  for (Index u = per_thread * threads; u < units; ++u) {
    P* parity = slots + (u & 1) * threads * K;
    P* part = parity + t * K;
    for (Index k = 0; k < K; ++k) part[k] = P{};
    phase_a(u, b, e, part);
#pragma omp barrier
    for (Index k = 0; k < K; ++k) mine[k] = P{};
    for (int i = 0; i < threads; ++i)
      for (Index k = 0; k < K; ++k) combine(mine[k], parity[i * K + k]);
    phase_b(u, b, e, static_cast<const P*>(mine), t == 0, u + 1 < units ? u + 1 : -1);
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per method family (each file's header says what it covers).

void batchnorm(const Problem& p, const KernelArgs& a);
void layernorm_rmsnorm(const Problem& p, const KernelArgs& a);
void groupnorm_instancenorm(const Problem& p, const KernelArgs& a);
/// Units of at most kDegenerateUnit elements have a backward dominated by cancellation (see
/// degenerate_backward.cpp); every method's backward goes there for them.
inline constexpr Index kDegenerateUnit = 2;
void degenerate_backward(const Problem& p, const KernelArgs& a);

/// A channels-last (NHWC) tensor as `units` reduction units of `rows` rows of `channels`
/// contiguous channels each, with statistics per (unit, group of channels/groups adjacent
/// channels) stored at unit * groups + group: BatchNorm (1, N*H*W, C, C), GroupNorm
/// (N, H*W, C, G), InstanceNorm (N, H*W, C, C). gamma/beta/dgamma/dbeta have `channels` entries.
struct ChannelsLast {
  Index units = 1, rows = 1, channels = 1, groups = 1;
  double eps = 1e-5;
  double momentum = 0;  ///< BatchNorm fwd_train only, with the running statistics of KernelArgs
};
/// fwd_train / fwd_infer of GroupNorm-style statistics (y; mean/invstd when not null; running
/// statistics when not null, BatchNorm only).
void channels_last_forward(const ChannelsLast& s, DType dt, const KernelArgs& a);
/// Training-mode backward from saved mean/invstd (dx; dgamma/dbeta when not null).
void channels_last_backward(const ChannelsLast& s, DType dt, const KernelArgs& a);

}  // namespace nb::omp
