// Channels-last (NHWC) helpers of the avx512 backend: per-channel values laid out as a "pattern"
// so that 16 consecutive elements of a row-major (rows, C) block meet their 16 per-channel values
// in one unaligned load whatever C is (C = 1, 3, 251 alike, no per-row masked tails); per-channel
// moments (blocked corrected two-pass + Chan merge) and backward sums over a range of rows, with
// the accumulators held in zmm registers when the period is 64..128 floats (C <= 128) and in an
// L1-resident pattern array otherwise; the pattern ops that write y and dx. Used by BatchNorm,
// GroupNorm and InstanceNorm in NHWC.
//
// Limits: the pattern period is lcm(C, 16) rounded up to at least 64 while that is <= 4096
// floats, else C (positions then are not 16-aligned: correct, slightly slower accumulation).
#pragma once

#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#include "kernels/avx512/kernels.hpp"
#include "kernels/avx512/simd.hpp"

namespace nb::avx512::NB_AVX512_VARIANT {

/// A 64-byte aligned, uninitialised array (scratch of one thread).
template <class V>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(int64_t n) {
    const std::size_t bytes =
        (static_cast<std::size_t>(std::max<int64_t>(n, 1)) * sizeof(V) + 63) & ~std::size_t{63};
    data_.reset(static_cast<V*>(std::aligned_alloc(64, bytes)));
    if (!data_) throw std::bad_alloc();
  }
  V* data() { return data_.get(); }
  const V* data() const { return data_.get(); }
  V& operator[](int64_t i) { return data_.get()[i]; }
  const V& operator[](int64_t i) const { return data_.get()[i]; }

 private:
  struct Free {
    void operator()(V* p) const { std::free(p); }
  };
  std::unique_ptr<V, Free> data_;
};

/// Element k of a row-major (rows, C) block, counted from a row start, belongs to channel k mod C.
/// A pattern of period P (a multiple of C) stores value[k mod C] at position k for k < P + 16, so
/// the 16 lanes loaded at any position pos < P are the values of the channels of the elements
/// pos .. pos+15. Walking a block, pos advances by the elements consumed and wraps at P (P >= 16:
/// one subtraction suffices). With P a multiple of 16 (and >= 64) reductions hit 16-aligned,
/// distinct accumulator slots.
struct ChannelPattern {
  int64_t channels = 1, period = 64;
  explicit ChannelPattern(int64_t c) : channels(c) {
    const int64_t l = std::lcm(c, int64_t{16});
    period = l <= 4096 ? l * ((64 + l - 1) / l) : c;
  }
  int64_t storage() const { return period + 16; }
  /// pattern[k] = per_channel[k mod C] for k < storage().
  void expand(const float* per_channel, float* pattern) const {
    for (int64_t j = 0; j < period; j += channels)
      std::copy(per_channel, per_channel + channels, pattern + j);
    for (int64_t e = 0; e < 16; ++e) pattern[period + e] = per_channel[e % channels];
  }
  /// per_channel[c] += sum of acc[k] over the positions k < storage() of channel c.
  NB_AVX512 void fold(const float* acc, double* per_channel) const {
    for (int64_t j = 0; j < period; j += channels)
      for (int64_t c = 0; c < channels; ++c) per_channel[c] += acc[j + c];
    for (int64_t e = 0; e < 16; ++e) per_channel[e % channels] += acc[period + e];
  }
};

/// Per-channel count (the same for every channel), mean and M2, in double.
struct ChannelMoments {
  double count = 0;
  std::vector<double> mean, m2;
  explicit ChannelMoments(int64_t c = 0) : mean(c), m2(c) {}
  /// Chan's merge, channel by channel.
  void merge(const ChannelMoments& b) {
    if (b.count <= 0) return;
    if (count <= 0) {
      *this = b;
      return;
    }
    const double n = count + b.count, f1 = b.count / n, f2 = count * b.count / n;
    for (std::size_t c = 0; c < mean.size(); ++c) {
      const double d = b.mean[c] - mean[c];
      mean[c] += d * f1;
      m2[c] += b.m2[c] + d * d * f2;
    }
    count = n;
  }
};

/// One thread's scratch for the channels-last reductions.
struct ChannelScratch {
  AlignedArray<float> acc1, acc2, pattern;
  std::vector<float> per_channel, spread;
  std::vector<double> sum1, sum2;
  explicit ChannelScratch(const ChannelPattern& pat)
      : acc1(pat.storage()),
        acc2(pat.storage()),
        pattern(pat.storage()),
        per_channel(pat.channels),
        spread(pat.channels),
        sum1(pat.channels),
        sum2(pat.channels) {}
};

/// Rows per block of the channels-last reductions: about 128 KiB of data (L2-resident for the
/// second pass) and at least 16 pattern periods, so that the O(C) per-channel work of a block
/// (centers, folds, Chan merge) stays small next to its vector work.
template <class T>
int64_t rows_per_block(const ChannelPattern& pat) {
  const int64_t elements = std::max<int64_t>((128 << 10) / sizeof(T), 16 * pat.period);
  return std::max<int64_t>(1, elements / pat.channels);
}

/// Rows per block of the forward statistics (accumulate_moment_block): rows_per_block, but at
/// least 128 rows while that stays within 512 KiB. Each block costs O(C) on top of its vector
/// work (centers, check, folds, Chan merge: about 9 cycles per channel), which at C = 1024 and
/// 32 rows made up most of a block's time; a block that needs a second pass (the first of a
/// unit, or centers found off) re-reads it from L2. Measured on the Intel hosts (GroupNorm NHWC
/// f32 training forward, 2 threads, interleaved runs): n192c1024h14w14g32 11.2-11.5 -> 9.6-10.3
/// ms (0.61-0.63 -> 0.66-0.72 of the paired non-temporal copy); n32c512h64w64g32 and
/// InstanceNorm n32c512h64w64 unchanged. The backward's blocks stay at rows_per_block: 128 rows
/// there measured slower (GroupNorm NHWC f32 backward 0.47-0.49 -> 0.45-0.46).
template <class T>
int64_t rows_per_moment_block(const ChannelPattern& pat) {
  const int64_t wide = std::min<int64_t>(128, (512 << 10) / (pat.channels * sizeof(T)));
  return std::max(rows_per_block<T>(pat), wide);
}

/// A Prefetcher that runs `lead` rows ahead of a reduction over `rows` rows of the row-major
/// (rows, C) blocks at x (and dy), one line of each per line of x consumed, for reductions that
/// read DRAM: the tiled statistics walk a block 64 channels at a time down its rows, a pattern
/// the hardware prefetcher does not turn into sequential DRAM reads. Measured on the Intel hosts
/// (BatchNorm NHWC n64c256h64w64 training forward, 2 threads, interleaved runs): 0.54-0.57 ->
/// 0.73-0.74 of the paired non-temporal copy in bf16, 0.71-0.72 -> 0.82-0.83 in f32. The
/// backward sums walk whole rows in order, which the hardware prefetcher serves: there the same
/// prefetch (x and dy) measured slower (bf16 0.72 -> 0.64, f32 0.80-0.81 -> 0.75-0.77), so they
/// do without. Empty with NB_AVX512_PREFETCH=0, and unless `from_dram` (the caller's tensor
/// exceeds streaming_cache_bytes(): a cached tensor gains nothing from the prefetches).
template <class T>
Prefetcher rows_ahead(const T* x, const T* dy, int64_t rows, int64_t lead,
                      const ChannelPattern& pat, bool from_dram) {
  Prefetcher pf;
  if (!from_dram || !options().prefetch || rows <= lead) return pf;
  const int64_t bytes = (rows - lead) * pat.channels * static_cast<int64_t>(sizeof(T));
  pf.add(x + lead * pat.channels, 1, bytes, 0);
  if (dy) pf.add(dy + lead * pat.channels, 1, bytes, 0);
  return pf;
}

/// Rows after which fp32 pattern accumulators of sums that decide the last digits (the
/// correction term of the mean, the backward sums) are folded into double: 64 pattern periods,
/// so each accumulator slot holds at most 64 terms.
inline int64_t rows_per_fold(const ChannelPattern& pat) {
  return std::max<int64_t>(1, 64 * pat.period / pat.channels);
}

/// Rows after which a reduction advances the prefetcher: about kPrefetchChunk elements.
template <class T>
int64_t rows_per_advance(const ChannelPattern& pat) {
  return std::max<int64_t>(1, kPrefetchChunk<T> / pat.channels);
}

/// centers[c] = exact center (simd.hpp) near shift[c] + sum[c] * inv_count given spread[c];
/// `shift` and `centers` may alias.
NB_AVX512_INLINE void channel_centers(const float* shift, const double* sum, const float* spread,
                                      double inv_count, int64_t C, float* centers) {
  for (int64_t c = 0; c < C; c += 8) {
    const __mmask8 m = static_cast<__mmask8>(C - c >= 8 ? 0xff : (1u << (C - c)) - 1u);
    const __m512d sh = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, shift + c));
    const __m512d mean =
        _mm512_fmadd_pd(_mm512_maskz_loadu_pd(m, sum + c), _mm512_set1_pd(inv_count), sh);
    const __m512d sp = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, spread + c));
    _mm256_mask_storeu_ps(centers + c, m, exact_centers(mean, sp, sh));
  }
}

// ---------------------------------------------------------------------------------------------
// Pattern reductions over a block that starts at a row boundary (position 0).

/// acc[pos..] += x - center[pos..]
template <class T>
NB_AVX512_INLINE void pattern_sum(const T* x, int64_t n, const float* center, float* acc,
                                  int64_t period) {
  int64_t pos = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 d = _mm512_sub_ps(Io<T>::load(x + i), _mm512_loadu_ps(center + pos));
    _mm512_storeu_ps(acc + pos, _mm512_add_ps(_mm512_loadu_ps(acc + pos), d));
    pos += 16;
    if (pos >= period) pos -= period;
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), _mm512_loadu_ps(center + pos));
    _mm512_storeu_ps(acc + pos, _mm512_add_ps(_mm512_loadu_ps(acc + pos), d));
  }
}

/// acc1[pos..] += x - mean[pos..], acc2[pos..] += (x - mean[pos..])^2
template <class T>
NB_AVX512_INLINE void pattern_deviations(const T* x, int64_t n, const float* mean, float* acc1,
                                         float* acc2, int64_t period) {
  int64_t pos = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 d = _mm512_sub_ps(Io<T>::load(x + i), _mm512_loadu_ps(mean + pos));
    _mm512_storeu_ps(acc1 + pos, _mm512_add_ps(_mm512_loadu_ps(acc1 + pos), d));
    _mm512_storeu_ps(acc2 + pos, _mm512_fmadd_ps(d, d, _mm512_loadu_ps(acc2 + pos)));
    pos += 16;
    if (pos >= period) pos -= period;
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), _mm512_loadu_ps(mean + pos));
    _mm512_storeu_ps(acc1 + pos, _mm512_add_ps(_mm512_loadu_ps(acc1 + pos), d));
    _mm512_storeu_ps(acc2 + pos, _mm512_fmadd_ps(d, d, _mm512_loadu_ps(acc2 + pos)));
  }
}

/// acc1[pos..] += dy, acc2[pos..] += dy * (x - mean[pos..])
template <class T>
NB_AVX512_INLINE void pattern_backward(const T* x, const T* dy, int64_t n, const float* mean,
                                       float* acc1, float* acc2, int64_t period) {
  int64_t pos = 0, i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = Io<T>::load(dy + i);
    const __m512 d = _mm512_sub_ps(Io<T>::load(x + i), _mm512_loadu_ps(mean + pos));
    _mm512_storeu_ps(acc1 + pos, _mm512_add_ps(_mm512_loadu_ps(acc1 + pos), g));
    _mm512_storeu_ps(acc2 + pos, _mm512_fmadd_ps(g, d, _mm512_loadu_ps(acc2 + pos)));
    pos += 16;
    if (pos >= period) pos -= period;
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 g = Io<T>::load(dy + i, m);
    const __m512 d = _mm512_sub_ps(Io<T>::load(x + i, m), _mm512_loadu_ps(mean + pos));
    _mm512_storeu_ps(acc1 + pos, _mm512_add_ps(_mm512_loadu_ps(acc1 + pos), g));
    _mm512_storeu_ps(acc2 + pos, _mm512_fmadd_ps(g, d, _mm512_loadu_ps(acc2 + pos)));
  }
}

// Register-resident versions for periods of K vectors (period = 16*K <= 128 floats, C <= 128):
// the period's accumulators stay in zmm registers for the whole call instead of a load and a
// store per vector; acc/acc1/acc2 receive their sums (positions 0 .. 16K-1) at the end.

template <class T, int K>
NB_AVX512_INLINE void pattern_sum_k(const T* x, int64_t n, const float* center, float* acc) {
  __m512 a[K], c[K];
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k)
    a[k] = _mm512_loadu_ps(acc + 16 * k), c[k] = _mm512_loadu_ps(center + 16 * k);
  int64_t i = 0;
  for (; i + 16 * K <= n; i += 16 * K) {
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k)
      a[k] = _mm512_add_ps(a[k], _mm512_sub_ps(Io<T>::load(x + i + 16 * k), c[k]));
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k, i += 16) {
    if (i >= n) break;
    const __mmask16 m = first_lanes(n - i);
    a[k] = _mm512_add_ps(a[k], _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), c[k]));
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) _mm512_storeu_ps(acc + 16 * k, a[k]);
}

template <class T, int K>
NB_AVX512_INLINE void pattern_deviations_k(const T* x, int64_t n, const float* mean, float* acc1,
                                           float* acc2) {
  __m512 a[K], q[K], c[K];
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    a[k] = _mm512_loadu_ps(acc1 + 16 * k);
    q[k] = _mm512_loadu_ps(acc2 + 16 * k);
    c[k] = _mm512_loadu_ps(mean + 16 * k);
  }
  int64_t i = 0;
  for (; i + 16 * K <= n; i += 16 * K) {
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
      const __m512 d = _mm512_sub_ps(Io<T>::load(x + i + 16 * k), c[k]);
      a[k] = _mm512_add_ps(a[k], d);
      q[k] = _mm512_fmadd_ps(d, d, q[k]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k, i += 16) {
    if (i >= n) break;
    const __mmask16 m = first_lanes(n - i);
    const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), c[k]);
    a[k] = _mm512_add_ps(a[k], d);
    q[k] = _mm512_fmadd_ps(d, d, q[k]);
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    _mm512_storeu_ps(acc1 + 16 * k, a[k]);
    _mm512_storeu_ps(acc2 + 16 * k, q[k]);
  }
}

template <class T, int K>
NB_AVX512_INLINE void pattern_backward_k(const T* x, const T* dy, int64_t n, const float* mean,
                                         float* acc1, float* acc2) {
  __m512 a[K], b[K], c[K];
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    a[k] = _mm512_loadu_ps(acc1 + 16 * k);
    b[k] = _mm512_loadu_ps(acc2 + 16 * k);
    c[k] = _mm512_loadu_ps(mean + 16 * k);
  }
  int64_t i = 0;
  for (; i + 16 * K <= n; i += 16 * K) {
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
      const __m512 g = Io<T>::load(dy + i + 16 * k);
      a[k] = _mm512_add_ps(a[k], g);
      b[k] = _mm512_fmadd_ps(g, _mm512_sub_ps(Io<T>::load(x + i + 16 * k), c[k]), b[k]);
    }
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k, i += 16) {
    if (i >= n) break;
    const __mmask16 m = first_lanes(n - i);
    const __m512 g = Io<T>::load(dy + i, m);
    a[k] = _mm512_add_ps(a[k], g);
    b[k] = _mm512_fmadd_ps(g, _mm512_sub_ps(Io<T>::load(x + i, m), c[k]), b[k]);
  }
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k) {
    _mm512_storeu_ps(acc1 + 16 * k, a[k]);
    _mm512_storeu_ps(acc2 + 16 * k, b[k]);
  }
}

/// The pattern reductions, register-resident when the period is 64 .. 128 floats.
template <class T>
NB_AVX512_INLINE void reduce_sum(const T* x, int64_t n, const ChannelPattern& pat,
                                 const float* center, float* acc) {
  switch (pat.period) {
    case 64:
      return pattern_sum_k<T, 4>(x, n, center, acc);
    case 80:
      return pattern_sum_k<T, 5>(x, n, center, acc);
    case 96:
      return pattern_sum_k<T, 6>(x, n, center, acc);
    case 112:
      return pattern_sum_k<T, 7>(x, n, center, acc);
    case 128:
      return pattern_sum_k<T, 8>(x, n, center, acc);
    default:
      return pattern_sum(x, n, center, acc, pat.period);
  }
}
template <class T>
NB_AVX512_INLINE void reduce_deviations(const T* x, int64_t n, const ChannelPattern& pat,
                                        const float* mean, float* acc1, float* acc2) {
  switch (pat.period) {
    case 64:
      return pattern_deviations_k<T, 4>(x, n, mean, acc1, acc2);
    case 80:
      return pattern_deviations_k<T, 5>(x, n, mean, acc1, acc2);
    case 96:
      return pattern_deviations_k<T, 6>(x, n, mean, acc1, acc2);
    case 112:
      return pattern_deviations_k<T, 7>(x, n, mean, acc1, acc2);
    case 128:
      return pattern_deviations_k<T, 8>(x, n, mean, acc1, acc2);
    default:
      return pattern_deviations(x, n, mean, acc1, acc2, pat.period);
  }
}
template <class T>
NB_AVX512_INLINE void reduce_backward(const T* x, const T* dy, int64_t n, const ChannelPattern& pat,
                                      const float* mean, float* acc1, float* acc2) {
  switch (pat.period) {
    case 64:
      return pattern_backward_k<T, 4>(x, dy, n, mean, acc1, acc2);
    case 80:
      return pattern_backward_k<T, 5>(x, dy, n, mean, acc1, acc2);
    case 96:
      return pattern_backward_k<T, 6>(x, dy, n, mean, acc1, acc2);
    case 112:
      return pattern_backward_k<T, 7>(x, dy, n, mean, acc1, acc2);
    case 128:
      return pattern_backward_k<T, 8>(x, dy, n, mean, acc1, acc2);
    default:
      return pattern_backward(x, dy, n, mean, acc1, acc2, pat.period);
  }
}

// Register-tiled versions for wide rows (one pattern period per row: period == C > 128): the
// block is walked one tile of up to 64 channels (4 vectors) at a time, down all its rows, with
// the tile's accumulators (two per vector: even and odd rows, to hide the add latency) and
// centers in registers: one load of x per vector instead of also loading and storing
// accumulators and loading centers from L1. Each tile adds into acc[c0..] (fp32, the caller
// folds); the prefetcher advances by the bytes of each row's tile, so the next unit's lines are
// requested in step with the work. Rows are C elements apart; the last vector of a tile is masked
// when C is not a multiple of 16. Used for the forward statistics only: measured on the Intel
// hosts (2 threads, 256 MiB NHWC tensors, paired A/B runs) the tiles made GroupNorm and
// InstanceNorm NHWC statistics 5-9 % faster and BatchNorm's equal, while a tiled backward
// reduction (x and dy) was 5-20 % slower than the row-vector loop for f32 and BatchNorm bf16.

inline bool tiled(const ChannelPattern& pat) {
  return pat.period == pat.channels && pat.channels > 128;
}

template <class T, int K>
NB_AVX512_INLINE __m512 tile_load(const T* p, int k, __mmask16 last) {
  return k == K - 1 ? Io<T>::load(p, last) : Io<T>::load(p);
}

template <class T, int K>
NB_AVX512_INLINE void tile_sum(const T* x, int64_t rows, int64_t C, const float* center, float* acc,
                               __mmask16 last, Prefetcher& pf) {
  __m512 a[K], b[K], c[K];
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    const __mmask16 m = k == K - 1 ? last : __mmask16(0xffff);
    a[k] = _mm512_maskz_loadu_ps(m, acc + 16 * k);
    b[k] = _mm512_setzero_ps();
    c[k] = _mm512_maskz_loadu_ps(m, center + 16 * k);
  }
  const int64_t row_bytes = int64_t{16} * K * static_cast<int64_t>(sizeof(T));
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    const T* x0 = x + r * C;
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      a[k] = _mm512_add_ps(a[k], _mm512_sub_ps(tile_load<T, K>(x0 + 16 * k, k, last), c[k]));
      b[k] = _mm512_add_ps(b[k], _mm512_sub_ps(tile_load<T, K>(x0 + C + 16 * k, k, last), c[k]));
    }
    pf.advance(2 * row_bytes);
  }
  if (r < rows) {
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k)
      a[k] = _mm512_add_ps(a[k], _mm512_sub_ps(tile_load<T, K>(x + r * C + 16 * k, k, last), c[k]));
    pf.advance(row_bytes);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k)
    _mm512_mask_storeu_ps(acc + 16 * k, k == K - 1 ? last : __mmask16(0xffff),
                          _mm512_add_ps(a[k], b[k]));
}

template <class T, int K>
NB_AVX512_INLINE void tile_deviations(const T* x, int64_t rows, int64_t C, const float* mean,
                                      float* acc1, float* acc2, __mmask16 last, Prefetcher& pf) {
  __m512 a[K], a2[K], q[K], q2[K], c[K];
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    const __mmask16 m = k == K - 1 ? last : __mmask16(0xffff);
    a[k] = _mm512_maskz_loadu_ps(m, acc1 + 16 * k);
    q[k] = _mm512_maskz_loadu_ps(m, acc2 + 16 * k);
    a2[k] = q2[k] = _mm512_setzero_ps();
    c[k] = _mm512_maskz_loadu_ps(m, mean + 16 * k);
  }
  const int64_t row_bytes = int64_t{16} * K * static_cast<int64_t>(sizeof(T));
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2) {
    const T* x0 = x + r * C;
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const __m512 d0 = _mm512_sub_ps(tile_load<T, K>(x0 + 16 * k, k, last), c[k]);
      const __m512 d1 = _mm512_sub_ps(tile_load<T, K>(x0 + C + 16 * k, k, last), c[k]);
      a[k] = _mm512_add_ps(a[k], d0);
      q[k] = _mm512_fmadd_ps(d0, d0, q[k]);
      a2[k] = _mm512_add_ps(a2[k], d1);
      q2[k] = _mm512_fmadd_ps(d1, d1, q2[k]);
    }
    pf.advance(2 * row_bytes);
  }
  if (r < rows) {
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const __m512 d0 = _mm512_sub_ps(tile_load<T, K>(x + r * C + 16 * k, k, last), c[k]);
      a[k] = _mm512_add_ps(a[k], d0);
      q[k] = _mm512_fmadd_ps(d0, d0, q[k]);
    }
    pf.advance(row_bytes);
  }
#pragma GCC unroll 4
  for (int k = 0; k < K; ++k) {
    const __mmask16 m = k == K - 1 ? last : __mmask16(0xffff);
    _mm512_mask_storeu_ps(acc1 + 16 * k, m, _mm512_add_ps(a[k], a2[k]));
    _mm512_mask_storeu_ps(acc2 + 16 * k, m, _mm512_add_ps(q[k], q2[k]));
  }
}

/// The tiles of C channels: K = 1..4 vectors each (the last vector masked with `last`); calls
/// TILE<K>(c0, last) through a switch on K.
#define NB_FOR_EACH_TILE(C, TILE)                                           \
  for (int64_t c0 = 0; c0 < (C); c0 += 64) {                                \
    const int64_t left = (C)-c0;                                            \
    const int K = static_cast<int>(std::min<int64_t>(4, (left + 15) / 16)); \
    const __mmask16 last = first_lanes(left - 16 * (K - 1));                \
    switch (K) {                                                            \
      case 4:                                                               \
        TILE(4);                                                            \
        break;                                                              \
      case 3:                                                               \
        TILE(3);                                                            \
        break;                                                              \
      case 2:                                                               \
        TILE(2);                                                            \
        break;                                                              \
      default:                                                              \
        TILE(1);                                                            \
        break;                                                              \
    }                                                                       \
  }

/// acc[c] += sum over `rows` rows of x[r][c] - center[c].
template <class T>
NB_AVX512_INLINE void tiled_sum(const T* x, int64_t rows, int64_t C, const float* center,
                                float* acc, Prefetcher& pf) {
#define NB_TILE(K) tile_sum<T, K>(x + c0, rows, C, center + c0, acc + c0, last, pf)
  NB_FOR_EACH_TILE(C, NB_TILE)
#undef NB_TILE
}
/// acc1[c] += sum(x - mean_c), acc2[c] += sum((x - mean_c)^2) over `rows` rows.
template <class T>
NB_AVX512_INLINE void tiled_deviations(const T* x, int64_t rows, int64_t C, const float* mean,
                                       float* acc1, float* acc2, Prefetcher& pf) {
#define NB_TILE(K) tile_deviations<T, K>(x + c0, rows, C, mean + c0, acc1 + c0, acc2 + c0, last, pf)
  NB_FOR_EACH_TILE(C, NB_TILE)
#undef NB_TILE
}
#undef NB_FOR_EACH_TILE

/// spread[c] = max |x[r][c] - shift[c]| over the first min(rows, 8) rows: an order-of-magnitude
/// estimate for exact_centers (which tolerates a spread up to 2^11 times larger than estimated).
template <class T>
NB_AVX512_INLINE void sample_spread(const T* x, int64_t rows, int64_t C, const float* shift,
                                    float* spread) {
  const int64_t sample = std::min<int64_t>(rows, 8);
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = first_lanes(C - c);
    const __m512 sh = _mm512_maskz_loadu_ps(m, shift + c);
    __m512 mx = _mm512_setzero_ps();
    for (int64_t r = 0; r < sample; ++r)
      mx = _mm512_max_ps(mx,
                         _mm512_abs_ps(_mm512_maskz_sub_ps(m, Io<T>::load(x + r * C + c, m), sh)));
    _mm512_mask_storeu_ps(spread + c, m, mx);
  }
}

/// centers[c] = exact center (simd.hpp) near mean[c], given the spread 8 * sqrt(m2[c] / count)
/// of earlier data.
NB_AVX512_INLINE void estimated_centers(const double* mean, const double* m2, double count,
                                        int64_t C, float* centers) {
  const __m512d inv = _mm512_set1_pd(1.0 / count), eight = _mm512_set1_pd(8.0);
  for (int64_t c = 0; c < C; c += 8) {
    const __mmask8 m = static_cast<__mmask8>(C - c >= 8 ? 0xff : (1u << (C - c)) - 1u);
    const __m512d mv = _mm512_maskz_loadu_pd(m, mean + c);
    const __m512d sd = _mm512_sqrt_pd(_mm512_mul_pd(_mm512_maskz_loadu_pd(m, m2 + c), inv));
    _mm256_mask_storeu_ps(centers + c, m, exact_centers(mv, _mm512_mul_pd(sd, eight), mv));
  }
}

/// The second pass over one block of nr rows: s.sum1[c] = sum(x - center_c), s.sum2[c] =
/// sum((x - center_c)^2), fp32 pattern accumulators folded into double every rows_per_fold rows.
template <class T>
NB_AVX512_INLINE void channel_deviation_pass(const T* xb, int64_t nr, const ChannelPattern& pat,
                                             ChannelScratch& s, const float* center,
                                             Prefetcher& pf) {
  const int64_t C = pat.channels, fold_rows = rows_per_fold(pat),
                step_rows = rows_per_advance<T>(pat);
  pat.expand(center, s.pattern.data());
  std::fill(s.sum1.begin(), s.sum1.end(), 0.0);
  std::fill(s.sum2.begin(), s.sum2.end(), 0.0);
  std::fill_n(s.acc2.data(), pat.storage(), 0.0f);
  for (int64_t f0 = 0; f0 < nr; f0 += fold_rows) {
    std::fill_n(s.acc1.data(), pat.storage(), 0.0f);
    if (tiled(pat)) {
      tiled_deviations(xb + f0 * C, std::min(nr, f0 + fold_rows) - f0, C, s.pattern.data(),
                       s.acc1.data(), s.acc2.data(), pf);
    } else {
      for (int64_t r = f0; r < std::min(nr, f0 + fold_rows); r += step_rows) {
        const int64_t rows_here = std::min({step_rows, nr - r, f0 + fold_rows - r});
        reduce_deviations(xb + r * C, rows_here * C, pat, s.pattern.data(), s.acc1.data(),
                          s.acc2.data());
        pf.advance(rows_here * C * sizeof(T));
      }
    }
    pat.fold(s.acc1.data(), s.sum1.data());
  }
  pat.fold(s.acc2.data(), s.sum2.data());
}

/// Whether any channel's block mean lies more than kMaxCenterOffset block standard deviations
/// from its center, given sum1[c] = sum(x - center_c) and sum2[c] = sum((x - center_c)^2) over
/// the block (inv_count = 1 / its rows). Eight channels per step: for C = 1024 a scalar loop here
/// and in merge_block_moments took about a third of a 32-row block's statistics (perf, the
/// blocks in L2).
NB_AVX512_INLINE bool centers_off(const double* sum1, const double* sum2, double inv_count,
                                  int64_t C) {
  const __m512d inv = _mm512_set1_pd(inv_count), zero = _mm512_setzero_pd();
  const __m512d limit = _mm512_set1_pd(kMaxCenterOffset * kMaxCenterOffset);
  __mmask8 off = 0;
  for (int64_t c = 0; c < C; c += 8) {
    const __mmask8 m = static_cast<__mmask8>(first_lanes(std::min<int64_t>(C - c, 8)));
    const __m512d offset = _mm512_mul_pd(_mm512_maskz_loadu_pd(m, sum1 + c), inv);
    const __m512d offset2 = _mm512_mul_pd(offset, offset);
    // max(v, 0) returns 0 for a NaN v, as std::max(0.0, v) does.
    const __m512d var = _mm512_max_pd(
        _mm512_sub_pd(_mm512_mul_pd(_mm512_maskz_loadu_pd(m, sum2 + c), inv), offset2), zero);
    off |= _mm512_mask_cmp_pd_mask(m, offset2, _mm512_mul_pd(limit, var), _CMP_GT_OQ);
  }
  return off != 0;
}

/// out += the block's per-channel moments (Chan's merge; the block's own mean center_c +
/// sum1[c]/count and M2 sum2[c] - sum1[c]^2/count, clamped at 0), eight channels per step.
NB_AVX512_INLINE void merge_block_moments(const float* center, const double* sum1,
                                          const double* sum2, double count, int64_t C,
                                          ChannelMoments& out) {
  const double total = out.count + count;
  const __m512d inv = _mm512_set1_pd(1.0 / count), zero = _mm512_setzero_pd();
  const __m512d f1 = _mm512_set1_pd(count / total), f2 = _mm512_set1_pd(out.count * count / total);
  const bool first = out.count <= 0;
  for (int64_t c = 0; c < C; c += 8) {
    const __mmask8 m = static_cast<__mmask8>(first_lanes(std::min<int64_t>(C - c, 8)));
    const __m512d s1 = _mm512_maskz_loadu_pd(m, sum1 + c);
    const __m512d mean_b = _mm512_add_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, center + c)),
                                         _mm512_mul_pd(s1, inv));
    const __m512d m2_b = _mm512_max_pd(_mm512_sub_pd(_mm512_maskz_loadu_pd(m, sum2 + c),
                                                     _mm512_mul_pd(_mm512_mul_pd(s1, s1), inv)),
                                       zero);
    if (first) {
      _mm512_mask_storeu_pd(out.mean.data() + c, m, mean_b);
      _mm512_mask_storeu_pd(out.m2.data() + c, m, m2_b);
      continue;
    }
    const __m512d mean_a = _mm512_maskz_loadu_pd(m, out.mean.data() + c);
    const __m512d d = _mm512_sub_pd(mean_b, mean_a);
    _mm512_mask_storeu_pd(out.mean.data() + c, m, _mm512_add_pd(mean_a, _mm512_mul_pd(d, f1)));
    const __m512d m2_a = _mm512_maskz_loadu_pd(m, out.m2.data() + c);
    _mm512_mask_storeu_pd(
        out.m2.data() + c, m,
        _mm512_add_pd(m2_a, _mm512_add_pd(m2_b, _mm512_mul_pd(_mm512_mul_pd(d, d), f2))));
  }
  out.count = total;
}

/// Merges the per-channel moments of the nr rows (at most rows_per_moment_block, L2-resident for
/// the second pass) of the row-major (nr, C) block at xb into out: the corrected two-pass formula
/// around exact centers, then Chan's merge (double). The centers come from out's running means
/// (after its first block) or `hint` (the previous
/// sample's moments, first block) with the second pass verified per channel (redone around the
/// block means if any channel's mean is more than kMaxCenterOffset standard deviations from its
/// center), else from a first pass (sum of x - shift, shift = the block's first row).
template <class T>
NB_AVX512 void accumulate_moment_block(const T* xb, int64_t nr, const ChannelPattern& pat,
                                       ChannelScratch& s, ChannelMoments& out, Prefetcher& pf,
                                       const ChannelMoments* hint) {
  const int64_t C = pat.channels, step_rows = rows_per_advance<T>(pat);
  float* center = s.per_channel.data();
  {
    const double count = static_cast<double>(nr), inv_count = 1.0 / count;
    const ChannelMoments* estimate = out.count > 0 ? &out : hint;
    if (estimate) {
      estimated_centers(estimate->mean.data(), estimate->m2.data(), estimate->count, C, center);
    } else {
      widen(xb, C, center);
      pat.expand(center, s.pattern.data());
      sample_spread(xb, nr, C, center, s.spread.data());
      std::fill_n(s.acc1.data(), pat.storage(), 0.0f);
      if (tiled(pat)) {
        tiled_sum(xb, nr, C, s.pattern.data(), s.acc1.data(), pf);
      } else {
        for (int64_t r = 0; r < nr; r += step_rows) {
          const int64_t rows_here = std::min(step_rows, nr - r);
          reduce_sum(xb + r * C, rows_here * C, pat, s.pattern.data(), s.acc1.data());
          pf.advance(rows_here * C * sizeof(T));
        }
      }
      std::fill(s.sum1.begin(), s.sum1.end(), 0.0);
      pat.fold(s.acc1.data(), s.sum1.data());
      channel_centers(center, s.sum1.data(), s.spread.data(), inv_count, C, center);
    }
    channel_deviation_pass(xb, nr, pat, s, center, pf);
    if (estimate) {
      if (centers_off(s.sum1.data(), s.sum2.data(), inv_count, C)) {
        sample_spread(xb, nr, C, center, s.spread.data());
        channel_centers(center, s.sum1.data(), s.spread.data(), inv_count, C, center);
        channel_deviation_pass(xb, nr, pat, s, center, pf);
      }
    }
    merge_block_moments(center, s.sum1.data(), s.sum2.data(), count, C, out);
  }
}

/// Merges the per-channel moments of `rows` rows of the row-major (rows, C) block at x into out,
/// with strided_moments' algorithm (simd.hpp) channel by channel: blocks of rows_per_moment_block
/// rows (accumulate_moment_block), Chan's merge (double) across blocks.
template <class T>
NB_AVX512 void accumulate_channel_moments(const T* x, int64_t rows, const ChannelPattern& pat,
                                          ChannelScratch& s, ChannelMoments& out, Prefetcher& pf,
                                          const ChannelMoments* hint = nullptr) {
  const int64_t block_rows = rows_per_moment_block<T>(pat);
  for (int64_t r0 = 0; r0 < rows; r0 += block_rows)
    accumulate_moment_block(x + r0 * pat.channels, std::min(block_rows, rows - r0), pat, s, out, pf,
                            hint);
}

/// Passes accumulate_channel_moments makes over `rows` rows (for Prefetcher::pace).
template <class T>
int channel_moment_passes(const ChannelPattern& pat, int64_t rows, bool hinted) {
  return hinted || rows > 2 * rows_per_moment_block<T>(pat) ? 1 : 2;
}

/// sum_dy[c] += sum(dy), sum_dyx[c] += sum(dy * (x - mean_c)) over `rows` rows of the (rows, C)
/// blocks x and dy; mean_pattern is the expanded per-channel mean. fp32 within rows_per_fold
/// rows, folded into double.
template <class T>
NB_AVX512 void accumulate_channel_backward(const T* x, const T* dy, int64_t rows,
                                           const float* mean_pattern, const ChannelPattern& pat,
                                           ChannelScratch& s, double* sum_dy, double* sum_dyx,
                                           Prefetcher& pf) {
  const int64_t C = pat.channels, fold_rows = rows_per_fold(pat),
                step_rows = rows_per_advance<T>(pat);
  for (int64_t r0 = 0; r0 < rows; r0 += fold_rows) {
    const int64_t nr = std::min(fold_rows, rows - r0);
    std::fill_n(s.acc1.data(), pat.storage(), 0.0f);
    std::fill_n(s.acc2.data(), pat.storage(), 0.0f);
    for (int64_t r = r0; r < r0 + nr; r += step_rows) {
      const int64_t rows_here = std::min(step_rows, r0 + nr - r);
      reduce_backward(x + r * C, dy + r * C, rows_here * C, pat, mean_pattern, s.acc1.data(),
                      s.acc2.data());
      pf.advance(rows_here * C * sizeof(T));
    }
    pat.fold(s.acc1.data(), sum_dy);
    pat.fold(s.acc2.data(), sum_dyx);
  }
}

// ---------------------------------------------------------------------------------------------
// Pattern ops for write_span (simd.hpp): per-channel parameters walked with the position.

/// y = (x - mean_c) * scale_c + shift_c
template <class T>
struct PatternAffineOp {
  const T* x;
  const float *mean, *scale, *shift;
  int64_t period, pos = 0;
  NB_AVX512_INLINE __m512 full(int64_t i) {
    const __m512 y = compute(Io<T>::load(x + i));
    step(16);
    return y;
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int k) {
    const __m512 y = compute(Io<T>::load(x + i, m));
    step(k);
    return y;
  }
  NB_AVX512_INLINE __m512 compute(__m512 v) const {
    return _mm512_fmadd_ps(_mm512_sub_ps(v, _mm512_loadu_ps(mean + pos)),
                           _mm512_loadu_ps(scale + pos), _mm512_loadu_ps(shift + pos));
  }
  void step(int64_t k) {
    pos += k;
    if (pos >= period) pos -= period;
  }
};

/// dx = k_c * dy + (x - mean_c) * c1_c + c0_c
template <class T>
struct PatternBackwardOp {
  const T* x;
  const T* dy;
  const float *mean, *k, *c1, *c0;
  int64_t period, pos = 0;
  NB_AVX512_INLINE __m512 full(int64_t i) {
    const __m512 r = compute(Io<T>::load(x + i), Io<T>::load(dy + i));
    step(16);
    return r;
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int kk) {
    const __m512 r = compute(Io<T>::load(x + i, m), Io<T>::load(dy + i, m));
    step(kk);
    return r;
  }
  NB_AVX512_INLINE __m512 compute(__m512 xv, __m512 g) const {
    const __m512 centered = _mm512_sub_ps(xv, _mm512_loadu_ps(mean + pos));
    return _mm512_fmadd_ps(
        _mm512_loadu_ps(k + pos), g,
        _mm512_fmadd_ps(centered, _mm512_loadu_ps(c1 + pos), _mm512_loadu_ps(c0 + pos)));
  }
  void step(int64_t kk) {
    pos += kk;
    if (pos >= period) pos -= period;
  }
};

/// The patterns of one channels-last write: mean, scale, shift (forward) or mean, k, c1, c0
/// (backward), each expanded from per-channel arrays.
struct WritePatterns {
  AlignedArray<float> p[4];
  explicit WritePatterns(const ChannelPattern& pat)
      : p{AlignedArray<float>(pat.storage()), AlignedArray<float>(pat.storage()),
          AlignedArray<float>(pat.storage()), AlignedArray<float>(pat.storage())} {}
};

}  // namespace nb::avx512::NB_AVX512_VARIANT
