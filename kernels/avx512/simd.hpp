// Vector helpers of the avx512 backend: the target attribute every kernel function carries, loads
// that widen f32/bf16/f16 to 16 fp32 lanes and stores that narrow them back (round to nearest
// even), masked tails, blocked fp32 reductions folded into double, the Chan merge of moments, the
// span writer (64-byte alignment peel, non-temporal stores) and the next-unit prefetcher.
//
// Build model: nothing in this backend is compiled with -mavx512*. Every function that uses an
// AVX-512 intrinsic carries NB_AVX512 (target attribute), so the same binary starts on a CPU
// without AVX-512 and register.cpp (compiled for the baseline ISA) refuses to run it there. The
// kernel sources are compiled twice: once as namespace `base` (AVX512F/BW/VL/DQ + F16C + FMA; bf16
// narrowing emulated with integer round-to-nearest-even) and once, through the *_bf16.cpp
// wrappers, as namespace `bf16hw` with AVX512-BF16 added (VCVTNEPS2BF16), chosen at run time.
// Lambdas do not inherit a target attribute in GCC, so kernels use small functor structs instead.
//
// Limits: VCVTNEPS2BF16 treats fp32 subnormal inputs as zero, the emulation rounds them; the two
// variants can differ for |y| < 1.2e-38 only.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "kernels/avx512/kernels.hpp"

#ifndef NB_AVX512_WITH_BF16
#define NB_AVX512_WITH_BF16 0
#endif
#if NB_AVX512_WITH_BF16
#define NB_AVX512_ISA "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma"
#define NB_AVX512_VARIANT bf16hw
#else
#define NB_AVX512_ISA "avx512f,avx512bw,avx512vl,avx512dq,f16c,fma"
#define NB_AVX512_VARIANT base
#endif
#define NB_AVX512 __attribute__((target(NB_AVX512_ISA)))
#define NB_AVX512_INLINE inline __attribute__((always_inline, target(NB_AVX512_ISA)))

namespace nb::avx512::NB_AVX512_VARIANT {

using std::int64_t;

/// Storage types of the 16-bit data (bit patterns; arithmetic always happens in fp32).
struct BFloat16 {
  std::uint16_t bits;
};
struct Float16 {
  std::uint16_t bits;
};

/// Elements per fp32 reduction block: each block is summed in fp32 vector registers (at most 64
/// terms per lane for f32, 128 for 16-bit data) and folded into double, so rounding error does
/// not grow with the unit size. 16 KiB of data: the second pass over a block of two-pass
/// statistics hits L1.
template <class T>
inline constexpr int64_t kBlock = (16 << 10) / sizeof(T);

/// Reductions advance the prefetcher every this many elements (4 KiB of data), so it issues at
/// most 64 / passes lines per stream at a time.
template <class T>
inline constexpr int64_t kPrefetchChunk = (4 << 10) / sizeof(T);

/// Outputs shorter than this are written with ordinary stores even when streaming is on: the
/// alignment peel and tail would dominate and the partial lines mix stores of both kinds.
inline constexpr int64_t kStreamMinBytes = 512;

NB_AVX512_INLINE __mmask16 first_lanes(int64_t k) {
  return _cvtu32_mask16((k >= 16) ? 0xffffu : ((1u << k) - 1u));
}

// ---------------------------------------------------------------------------------------------
// Loads (widen to fp32) and stores (narrow from fp32), full and masked.

template <class T>
struct Io;

template <>
struct Io<float> {
  static NB_AVX512_INLINE __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static NB_AVX512_INLINE __m512 load(const float* p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
  static NB_AVX512_INLINE void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static NB_AVX512_INLINE void store(float* p, __m512 v, __mmask16 m) {
    _mm512_mask_storeu_ps(p, m, v);
  }
  /// Non-temporal store; p must be 64-byte aligned.
  static NB_AVX512_INLINE void stream(float* p, __m512 v) { _mm512_stream_ps(p, v); }
};

/// bf16 -> fp32: one zero-masked word permute puts bf16 element j into the high half of 32-bit
/// lane j (low half zero), which is its fp32 bit pattern.
NB_AVX512_INLINE __m512 widen_bf16(__m256i h) {
  const __m512i index = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0,
                                         6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  return _mm512_castsi512_ps(
      _mm512_maskz_permutexvar_epi16(0xaaaaaaaau, index, _mm512_castsi256_si512(h)));
}

/// fp32 -> bf16, round to nearest even, NaN -> quiet NaN: the rule of nb::float_to_bf16.
NB_AVX512_INLINE __m256i narrow_bf16(__m512 v) {
#if NB_AVX512_WITH_BF16
  return (__m256i)_mm512_cvtneps_pbh(v);
#else
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i magnitude = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
#endif
}

template <>
struct Io<BFloat16> {
  static NB_AVX512_INLINE __m512 load(const BFloat16* p) {
    return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static NB_AVX512_INLINE __m512 load(const BFloat16* p, __mmask16 m) {
    return widen_bf16(_mm256_maskz_loadu_epi16(m, p));
  }
  static NB_AVX512_INLINE void store(BFloat16* p, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(v));
  }
  static NB_AVX512_INLINE void store(BFloat16* p, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, narrow_bf16(v));
  }
  /// Non-temporal store; p must be 32-byte aligned.
  static NB_AVX512_INLINE void stream(BFloat16* p, __m512 v) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(v));
  }
};

template <>
struct Io<Float16> {
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  static NB_AVX512_INLINE __m512 load(const Float16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static NB_AVX512_INLINE __m512 load(const Float16* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  static NB_AVX512_INLINE void store(Float16* p, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, kRound));
  }
  static NB_AVX512_INLINE void store(Float16* p, __m512 v, __mmask16 m) {
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, kRound));
  }
  static NB_AVX512_INLINE void stream(Float16* p, __m512 v) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, kRound));
  }
};

template <class T>
NB_AVX512_INLINE float load_one(const T* p) {
  return _mm512_cvtss_f32(Io<T>::load(p, first_lanes(1)));
}

/// Sum of the 16 lanes, each widened to double first.
NB_AVX512_INLINE double reduce_to_double(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi =
      _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

// ---------------------------------------------------------------------------------------------
// Prefetch of the next reduction unit, paced with the passes over the current one.

/// One address stream of the next unit: nseg segments of seg_bytes, starts stride_bytes apart.
struct PrefetchStream {
  const char* p = nullptr;
  const char* seg_end = nullptr;
  const char* next_seg = nullptr;
  int64_t segs_left = 0, seg_bytes = 0, stride_bytes = 0;

  NB_AVX512_INLINE void line() {
    if (p >= seg_end) {
      if (segs_left == 0) return;
      p = next_seg;
      seg_end = p + seg_bytes;
      next_seg += stride_bytes;
      --segs_left;
    }
    _mm_prefetch(p, _MM_HINT_T1);
    p += 64;
  }
};

/// Software prefetch of unit u+1 (x, and dy for the backward) while unit u is processed. Unit u
/// is walked `passes` times (statistics passes over data already in cache, then the pass that
/// writes y/dx to DRAM); every pass reports the bytes of u it consumes, and one line of each
/// stream of u+1 is prefetched per 64 * passes bytes, so u+1 arrives evenly over all of u's
/// passes: the DRAM reads never stop while u's statistics are computed from cache, and they
/// overlap u's streaming writes. u+1's statistics pass then reads from cache. Empty (no
/// streams: advance() returns at once) when there is no next unit or two would not fit in cache.
struct Prefetcher {
  PrefetchStream streams[2];
  int count = 0;
  int64_t credit = 0, step = 64;

  /// The current unit will be walked `passes` times.
  void pace(int passes) { step = 64 * std::max(passes, 1); }
  void add(const void* base, int64_t nseg, int64_t seg_bytes, int64_t stride_bytes) {
    PrefetchStream& s = streams[count++];
    s.next_seg = static_cast<const char*>(base);
    s.segs_left = nseg;
    s.seg_bytes = seg_bytes;
    s.stride_bytes = stride_bytes;
  }
  NB_AVX512_INLINE void advance(int64_t bytes) {
    if (count == 0) return;
    credit += bytes;
    while (credit >= step) {
      credit -= step;
      streams[0].line();
      if (count > 1) streams[1].line();
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Reductions over one contiguous piece, added into the caller's fp32 vector accumulators. The
// caller keeps each accumulation to at most kBlock elements before folding it into double, and
// advances its Prefetcher once per piece (not in these loops: they stay free of bookkeeping).
// Independent accumulators hide the add latency; masked tails add zeros.

/// sum += sum(x - center)
template <class T>
NB_AVX512_INLINE void accumulate_sum(const T* x, int64_t n, __m512 center, __m512& sum) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_sub_ps(Io<T>::load(x + i), center));
    a1 = _mm512_add_ps(a1, _mm512_sub_ps(Io<T>::load(x + i + 16), center));
    a2 = _mm512_add_ps(a2, _mm512_sub_ps(Io<T>::load(x + i + 32), center));
    a3 = _mm512_add_ps(a3, _mm512_sub_ps(Io<T>::load(x + i + 48), center));
  }
  for (; i + 16 <= n; i += 16) a0 = _mm512_add_ps(a0, _mm512_sub_ps(Io<T>::load(x + i), center));
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    a1 = _mm512_add_ps(a1, _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), center));
  }
  sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

/// max |x - center| over the first min(n, 64) elements: an order-of-magnitude estimate of the
/// spread for exact_centers (which tolerates a spread up to 2^11 times larger than estimated).
template <class T>
NB_AVX512_INLINE float sample_spread(const T* x, int64_t n, float center) {
  const __m512 c = _mm512_set1_ps(center);
  __m512 mx = _mm512_setzero_ps();
  for (int64_t i = 0; i < std::min<int64_t>(n, 64); i += 16) {
    const __mmask16 m = first_lanes(std::min<int64_t>(n, 64) - i);
    mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), c)));
  }
  return _mm512_reduce_max_ps(mx);
}

/// The 16 lanes of v widened to double and added pairwise into 8.
NB_AVX512_INLINE __m512d widen_pairs(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi =
      _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  return _mm512_add_pd(lo, hi);
}

/// x - center, or x itself when !kShifted (center = 0).
template <bool kShifted>
NB_AVX512_INLINE __m512 deviation(__m512 center, __m512 x) {
  if constexpr (kShifted) return _mm512_sub_ps(x, center);
  return x;
}

/// s1 += sum(x - center), s2 += sum((x - center)^2): the second pass of two-pass statistics
/// (s1 is the correction term of the corrected two-pass formula, M2 = s2 - s1^2 / n). s1 decides
/// the mean's last digits, so its fp32 partial sums are folded into double every 256 elements
/// (at most 4 terms per lane); s2 has no cancellation and stays fp32 within the block. Four
/// independent chains of each kind keep the adds and FMAs throughput-bound. kShifted = false
/// takes center = 0 and skips the subtraction (one vector instruction of three per load).
template <class T, bool kShifted = true>
NB_AVX512_INLINE void accumulate_deviations(const T* x, int64_t n, __m512 center, __m512d& s1,
                                            __m512& s2) {
  __m512 q0 = _mm512_setzero_ps(), q1 = q0, q2 = q0, q3 = q0;
  int64_t i = 0;
  while (i + 64 <= n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t chunk_end = std::min(n, i + 256);
    for (; i + 64 <= chunk_end; i += 64) {
      const __m512 d0 = deviation<kShifted>(center, Io<T>::load(x + i));
      const __m512 d1 = deviation<kShifted>(center, Io<T>::load(x + i + 16));
      const __m512 d2 = deviation<kShifted>(center, Io<T>::load(x + i + 32));
      const __m512 d3 = deviation<kShifted>(center, Io<T>::load(x + i + 48));
      a0 = _mm512_add_ps(a0, d0);
      a1 = _mm512_add_ps(a1, d1);
      a2 = _mm512_add_ps(a2, d2);
      a3 = _mm512_add_ps(a3, d3);
      q0 = _mm512_fmadd_ps(d0, d0, q0);
      q1 = _mm512_fmadd_ps(d1, d1, q1);
      q2 = _mm512_fmadd_ps(d2, d2, q2);
      q3 = _mm512_fmadd_ps(d3, d3, q3);
    }
    s1 =
        _mm512_add_pd(s1, widen_pairs(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))));
  }
  __m512 a = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 d = deviation<kShifted>(center, Io<T>::load(x + i));
    a = _mm512_add_ps(a, d);
    q0 = _mm512_fmadd_ps(d, d, q0);
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), center);
    a = _mm512_add_ps(a, d);
    q1 = _mm512_fmadd_ps(d, d, q1);
  }
  s1 = _mm512_add_pd(s1, widen_pairs(a));
  s2 = _mm512_add_ps(s2, _mm512_add_ps(_mm512_add_ps(q0, q1), _mm512_add_ps(q2, q3)));
}

/// s2 += sum(x^2) (RMSNorm: no mean, no cancellation).
template <class T>
NB_AVX512_INLINE void accumulate_squares(const T* x, int64_t n, __m512& s2) {
  __m512 q0 = _mm512_setzero_ps(), q1 = q0, q2 = q0, q3 = q0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 v0 = Io<T>::load(x + i), v1 = Io<T>::load(x + i + 16);
    const __m512 v2 = Io<T>::load(x + i + 32), v3 = Io<T>::load(x + i + 48);
    q0 = _mm512_fmadd_ps(v0, v0, q0);
    q1 = _mm512_fmadd_ps(v1, v1, q1);
    q2 = _mm512_fmadd_ps(v2, v2, q2);
    q3 = _mm512_fmadd_ps(v3, v3, q3);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 v = Io<T>::load(x + i);
    q0 = _mm512_fmadd_ps(v, v, q0);
  }
  if (i < n) {
    const __m512 v = Io<T>::load(x + i, first_lanes(n - i));
    q1 = _mm512_fmadd_ps(v, v, q1);
  }
  s2 = _mm512_add_ps(s2, _mm512_add_ps(_mm512_add_ps(q0, q1), _mm512_add_ps(q2, q3)));
}

/// sdy += sum(dy), sdyx += sum(dy * (x - mean)): the two sums of the BatchNorm/GroupNorm backward.
template <class T>
NB_AVX512_INLINE void accumulate_backward(const T* x, const T* dy, int64_t n, __m512 mean,
                                          __m512& sdy, __m512& sdyx) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512 g0 = Io<T>::load(dy + i), g1 = Io<T>::load(dy + i + 16);
    const __m512 g2 = Io<T>::load(dy + i + 32), g3 = Io<T>::load(dy + i + 48);
    a0 = _mm512_add_ps(a0, g0);
    a1 = _mm512_add_ps(a1, g1);
    a2 = _mm512_add_ps(a2, g2);
    a3 = _mm512_add_ps(a3, g3);
    b0 = _mm512_fmadd_ps(g0, _mm512_sub_ps(Io<T>::load(x + i), mean), b0);
    b1 = _mm512_fmadd_ps(g1, _mm512_sub_ps(Io<T>::load(x + i + 16), mean), b1);
    b2 = _mm512_fmadd_ps(g2, _mm512_sub_ps(Io<T>::load(x + i + 32), mean), b2);
    b3 = _mm512_fmadd_ps(g3, _mm512_sub_ps(Io<T>::load(x + i + 48), mean), b3);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 g = Io<T>::load(dy + i);
    a0 = _mm512_add_ps(a0, g);
    b0 = _mm512_fmadd_ps(g, _mm512_sub_ps(Io<T>::load(x + i), mean), b0);
  }
  if (i < n) {
    const __mmask16 m = first_lanes(n - i);
    const __m512 g = Io<T>::load(dy + i, m);
    a1 = _mm512_add_ps(a1, g);
    b1 = _mm512_fmadd_ps(g, _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), mean), b1);
  }
  sdy = _mm512_add_ps(sdy, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  sdyx = _mm512_add_ps(sdyx, _mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
}

// ---------------------------------------------------------------------------------------------
// Units made of strided segments and their statistics.

/// Iterates the pieces of the logical range [begin, end) of a unit made of segments of `seglen`
/// elements whose starts are `stride` elements apart (a BatchNorm NCHW channel: N segments of
/// H*W at stride C*H*W; a contiguous span: seglen = stride = its length). After next() returns
/// true, [offset, offset + length) is the piece's memory range relative to the unit's base.
/// (One division at construction, none per piece: a 7 x 7 plane is a piece of 49 elements.)
struct Pieces {
  int64_t seglen, stride, i, end;
  int64_t offset = 0, length = 0, segment;  ///< segment: the index of the piece's segment
  int64_t seg_start, off;  ///< memory offset of the current segment, position within it
  Pieces(int64_t seglen_, int64_t stride_, int64_t begin, int64_t end_)
      : seglen(seglen_),
        stride(stride_),
        i(begin),
        end(end_),
        segment(begin / seglen_),
        seg_start(begin / seglen_ * stride_),
        off(begin % seglen_) {}
  bool next() {
    if (i >= end) return false;
    if (off == seglen) off = 0, seg_start += stride, ++segment;
    length = std::min(seglen - off, end - i);
    offset = seg_start + off;
    i += length;
    off += length;
    return true;
  }
};

/// The chunks of a strided unit (Pieces' indexing) for the software pipelines that write unit u
/// one chunk at a time while reducing the same chunk of unit u+1, prefetched during the write:
/// about `target` elements each, whole segments when a segment is at most `target` long (a range
/// that starts or ends inside a segment gets that piece as a chunk of its own), else pieces of one
/// segment; so each chunk is one Prefetcher stream.
struct UnitChunks {
  int64_t seglen, chunk;
  UnitChunks(int64_t seglen_, int64_t target)
      : seglen(seglen_), chunk(seglen_ <= target ? target / seglen_ * seglen_ : target) {}
  /// End of the chunk that starts at b, for a range that ends at limit.
  int64_t end(int64_t b, int64_t limit) const {
    const int64_t boundary = (b / seglen + 1) * seglen;
    if (seglen > chunk) return std::min({limit, b + chunk, boundary});
    if (b % seglen != 0) return std::min(limit, boundary);
    const int64_t e = std::min(limit, b + chunk);
    return e % seglen != 0 && e - b > seglen ? e / seglen * seglen : e;
  }
  /// Adds to pf the lines of the chunk [b, e) of the unit at base, segments stride apart.
  template <class T>
  void prefetch(Prefetcher& pf, const T* base, int64_t b, int64_t e, int64_t stride) const {
    const int64_t seg = b / seglen, off = b - seg * seglen;
    if (off != 0 || e - b < seglen)
      pf.add(base + seg * stride + off, 1, (e - b) * sizeof(T), 0);
    else
      pf.add(base + seg * stride, (e - b) / seglen, seglen * sizeof(T), stride * sizeof(T));
  }
};

/// Elements of x per chunk of those pipelines: 16 KiB (with dy, twice that). Small chunks
/// interleave the DRAM reads of unit u+1 finely with the cache-resident reductions and writes.
/// Measured on the Intel hosts (2 threads, interleaved runs of one binary with the chunk size set
/// at run time, ms per call): BatchNorm NCHW n64c256h64w64 backward f32 28.4-28.9 (128 KiB) ->
/// 27.1 (32 KiB), 27.4-27.7 (16 KiB), 28.3-28.4 (8 KiB); f16 13.2-13.3 -> 12.4-12.5 (16 KiB);
/// bf16 14.3-16.5 -> 12.8-13.5 (16-32 KiB); GroupNorm NCHW n32c512h64w64g32 backward f32 25.4-27.7
/// -> 22.0-22.5 (16 KiB), bf16 12.3-12.9 -> 11.2-11.5; training forwards 0-8 % faster.
template <class T>
inline constexpr int64_t kPipelineChunk = (16 << 10) / sizeof(T);

/// Count, mean and sum of squared deviations (M2) of a set of values, merged with Chan et al.'s
/// pairwise update (Chan, Golub & LeVeque 1983), all in double.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void merge(double n_b, double mean_b, double m2_b) {
    if (n_b <= 0) return;
    if (count <= 0) {
      count = n_b, mean = mean_b, m2 = m2_b;
      return;
    }
    const double n = count + n_b, delta = mean_b - mean;
    mean += delta * (n_b / n);
    m2 += m2_b + delta * delta * (count * n_b / n);
    count = n;
  }
  void merge(const Moments& b) { merge(b.count, b.mean, b.m2); }
  /// Biased variance (divide by count): the one normalisation uses (CONVENTIONS section 1).
  double variance() const { return count > 0 ? m2 / count : 0.0; }
};

/// Centers for the second pass of two-pass statistics, 8 at a time: near `mean`, on the grid of
/// multiples of q = 2^(e - 12) where 2^e <= max(|mean|, spread) < 2^(e+1) (spread: about
/// max |x - mean| over the block). Every x of the block is then a multiple of its ulp <= q, so
/// x - center is exact in fp32 (up to rounding below ulp(center) for x near 0, which is not
/// systematic); an estimate of the spread within a factor 2^11 suffices. A plain fp32 mean has
/// bits below the ulp of most x when |mean| << spread; dropping them in every x - mean biases the
/// sum by up to 6e-8 of the spread per element, and the mean of N(0, 1) data loses its last
/// digits. Lanes whose spread is 0 (all sampled x equal the shift) or whose scale is not finite
/// take `fallback`.
NB_AVX512_INLINE __m256 exact_centers(__m512d mean, __m512d spread, __m512d fallback) {
  const __m512d one = _mm512_set1_pd(1.0), twelve = _mm512_set1_pd(12.0);
  const __m512d scale = _mm512_max_pd(_mm512_abs_pd(mean), spread);
  const __m512d e = _mm512_getexp_pd(scale);  // floor(log2(scale))
  const __m512d grid = _mm512_mul_pd(mean, _mm512_scalef_pd(one, _mm512_sub_pd(twelve, e)));
  const __m512d center =
      _mm512_scalef_pd(_mm512_roundscale_pd(grid, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                       _mm512_sub_pd(e, twelve));
  const __mmask8 ok = _mm512_cmp_pd_mask(spread, _mm512_setzero_pd(), _CMP_GT_OQ) &
                      _mm512_cmp_pd_mask(scale, _mm512_set1_pd(1e300), _CMP_LT_OQ);
  return _mm512_cvtpd_ps(_mm512_mask_blend_pd(ok, fallback, center));
}

/// One center (exact_centers above).
NB_AVX512_INLINE float exact_center(double mean, double spread, float fallback) {
  return _mm256_cvtss_f32(
      exact_centers(_mm512_set1_pd(mean), _mm512_set1_pd(spread), _mm512_set1_pd(fallback)));
}

/// out[i] = x[i] as fp32, i < n.
template <class T>
NB_AVX512_INLINE void widen(const T* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    _mm512_mask_storeu_ps(out + i, m, Io<T>::load(x + i, m));
  }
}

/// An estimate of a unit's mean and standard deviation known before its data is read (the
/// previous unit's statistics), used to center the second pass of its first block.
struct CenterHint {
  bool valid = false;
  double mean = 0, stddev = 0;
  static CenterHint of(const Moments& m) { return {m.count > 0, m.mean, std::sqrt(m.variance())}; }
};

/// A second pass is accepted around a center c only if the block's mean is within
/// kMaxCenterOffset standard deviations of c: M2 = s2 - s1^2/n then cancels at most a factor
/// 1 + kMaxCenterOffset^2 = 5 of its digits (a few units in the last place of fp32).
inline constexpr double kMaxCenterOffset = 2.0;

/// An estimated mean within this many standard deviations of 0 centers the second pass at 0
/// (no subtraction; the check against kMaxCenterOffset still applies to the block's own mean).
inline constexpr double kZeroCenterOffset = 0.5;

/// Segments at most this long (BatchNorm's 7 x 7 planes) take accumulate_short_deviations.
inline constexpr int64_t kShortSegment = 64;

/// accumulate_deviations over the pieces of [b0, b1) of a strided unit of short segments, with
/// fp32 accumulators carried from piece to piece (s1's folded into double every 256 elements or
/// so, as accumulate_deviations does): per piece, a fold of each accumulator cost as much as its
/// 49 elements. Advances pf once per piece.
template <class T, bool kShifted = true>
NB_AVX512_INLINE void accumulate_short_deviations(const T* base, int64_t seglen, int64_t stride,
                                                  int64_t b0, int64_t b1, __m512 center,
                                                  Prefetcher& pf, __m512d& s1, __m512& s2) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, q0 = a0, q1 = a0;
  int64_t pending = 0;
  for (Pieces pc(seglen, stride, b0, b1); pc.next();) {
    const T* x = base + pc.offset;
    int64_t i = 0;
    for (; i + 32 <= pc.length; i += 32) {
      const __m512 d0 = deviation<kShifted>(center, Io<T>::load(x + i));
      const __m512 d1 = deviation<kShifted>(center, Io<T>::load(x + i + 16));
      a0 = _mm512_add_ps(a0, d0);
      a1 = _mm512_add_ps(a1, d1);
      q0 = _mm512_fmadd_ps(d0, d0, q0);
      q1 = _mm512_fmadd_ps(d1, d1, q1);
    }
    if (i + 16 <= pc.length) {
      const __m512 d = deviation<kShifted>(center, Io<T>::load(x + i));
      a0 = _mm512_add_ps(a0, d);
      q0 = _mm512_fmadd_ps(d, d, q0);
      i += 16;
    }
    if (i < pc.length) {
      const __mmask16 m = first_lanes(pc.length - i);
      const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + i, m), center);
      a1 = _mm512_add_ps(a1, d);
      q1 = _mm512_fmadd_ps(d, d, q1);
    }
    pf.advance(pc.length * sizeof(T));
    if ((pending += pc.length) >= 256) {
      s1 = _mm512_add_pd(s1, widen_pairs(_mm512_add_ps(a0, a1)));
      a0 = a1 = _mm512_setzero_ps();
      pending = 0;
    }
  }
  s1 = _mm512_add_pd(s1, widen_pairs(_mm512_add_ps(a0, a1)));
  s2 = _mm512_add_ps(s2, _mm512_add_ps(q0, q1));
}

/// sum(x - center) and sum((x - center)^2) over [b0, b1) of a strided unit (the second pass).
template <class T>
NB_AVX512_INLINE void deviation_pass(const T* base, int64_t seglen, int64_t stride, int64_t b0,
                                     int64_t b1, float center, Prefetcher& pf, double& d1,
                                     double& d2) {
  __m512d s1 = _mm512_setzero_pd();
  __m512 s2 = _mm512_setzero_ps();
  if (seglen <= kShortSegment) {
    if (center == 0.0f)
      accumulate_short_deviations<T, false>(base, seglen, stride, b0, b1, _mm512_setzero_ps(), pf,
                                            s1, s2);
    else
      accumulate_short_deviations(base, seglen, stride, b0, b1, _mm512_set1_ps(center), pf, s1, s2);
  } else {
    for (Pieces pc(seglen, stride, b0, b1); pc.next();)
      for (int64_t o = 0; o < pc.length; o += kPrefetchChunk<T>) {
        const int64_t len = std::min(kPrefetchChunk<T>, pc.length - o);
        if (center == 0.0f)
          accumulate_deviations<T, false>(base + pc.offset + o, len, _mm512_setzero_ps(), s1, s2);
        else
          accumulate_deviations(base + pc.offset + o, len, _mm512_set1_ps(center), s1, s2);
        pf.advance(len * sizeof(T));
      }
  }
  d1 = _mm512_reduce_add_pd(s1);
  d2 = reduce_to_double(s2);
}

/// Moments of the elements [begin, end) of a strided unit (see Pieces). Exact statistics: blocks
/// of kBlock elements, each reduced with the corrected two-pass formula (Chan, Golub & LeVeque
/// 1983): M2 = sum((x - c)^2) - sum(x - c)^2 / n around a center c near the block mean, on an
/// exact grid (exact_centers), merged across blocks with Chan's update. The center comes from a
/// first pass (a sum shifted by the first element) when nothing is known yet; for later blocks
/// (the running mean) and for the first block of a unit with a hint (the previous unit's
/// statistics) that pass is skipped, and the second pass is verified: if the block mean is more
/// than kMaxCenterOffset standard deviations from c, the second pass is redone around the block
/// mean over the now L1-resident block. Typical data thus cost one pass, any data stays exact.
/// An estimate within kZeroCenterOffset standard deviations of 0 centers the pass at 0 exactly,
/// which drops its subtraction (the shifted-data formula with shift 0, accepted under the same
/// check).
template <class T>
NB_AVX512 Moments strided_moments(const T* base, int64_t seglen, int64_t stride, int64_t begin,
                                  int64_t end, Prefetcher& pf, const CenterHint& hint = {}) {
  Moments total;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock<T>) {
    const int64_t b1 = std::min(end, b0 + kBlock<T>);
    const double n = static_cast<double>(b1 - b0);
    Pieces first(seglen, stride, b0, b1);
    first.next();
    const CenterHint estimate = total.count > 0 ? CenterHint::of(total) : hint;
    float center;
    if (estimate.valid) {
      center =
          std::abs(estimate.mean) <= kZeroCenterOffset * estimate.stddev
              ? 0.0f
              : exact_center(estimate.mean, 8 * estimate.stddev, static_cast<float>(estimate.mean));
    } else {
      const float shift = load_one(base + first.offset);
      __m512 s = _mm512_setzero_ps();
      for (Pieces pc(seglen, stride, b0, b1); pc.next();)
        for (int64_t o = 0; o < pc.length; o += kPrefetchChunk<T>) {
          const int64_t len = std::min(kPrefetchChunk<T>, pc.length - o);
          accumulate_sum(base + pc.offset + o, len, _mm512_set1_ps(shift), s);
          pf.advance(len * sizeof(T));
        }
      center = exact_center(shift + reduce_to_double(s) / n,
                            sample_spread(base + first.offset, first.length, shift), shift);
    }
    double d1, d2;
    deviation_pass(base, seglen, stride, b0, b1, center, pf, d1, d2);
    if (estimate.valid) {
      const double offset = d1 / n, var = std::max(0.0, d2 / n - offset * offset);
      if (offset * offset > kMaxCenterOffset * kMaxCenterOffset * var) {
        const float mean = static_cast<float>(center + offset);
        center = exact_center(mean, sample_spread(base + first.offset, first.length, mean), mean);
        deviation_pass(base, seglen, stride, b0, b1, center, pf, d1, d2);
      }
    }
    total.merge(n, center + d1 / n, std::max(0.0, d2 - d1 * d1 / n));
  }
  return total;
}

/// Passes strided_moments makes over a unit of `length` elements (for Prefetcher::pace): one
/// when a center is known for its first block, else two for the first block only.
template <class T>
int moment_passes(int64_t length, bool hinted) {
  return hinted || length > 2 * kBlock<T> ? 1 : 2;
}

/// sum(x^2) over a contiguous span, blocked (RMSNorm). One pass for pf.
template <class T>
NB_AVX512 double sum_of_squares(const T* x, int64_t n, Prefetcher& pf) {
  double total = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock<T>) {
    __m512 s = _mm512_setzero_ps();
    for (int64_t o = b0; o < std::min(n, b0 + kBlock<T>); o += kPrefetchChunk<T>) {
      const int64_t len = std::min(kPrefetchChunk<T>, n - o);
      accumulate_squares(x + o, len, s);
      pf.advance(len * sizeof(T));
    }
    total += reduce_to_double(s);
  }
  return total;
}

struct BackwardSums {
  double dy = 0;    ///< sum(dy)
  double dy_x = 0;  ///< sum(dy * (x - mean))
  void add(const BackwardSums& o) { dy += o.dy, dy_x += o.dy_x; }
};

/// BackwardSums over [begin, end) of a strided unit, fp32 within blocks of kBlock, double across.
/// One pass for pf.
template <class T>
NB_AVX512 BackwardSums strided_backward_sums(const T* x, const T* dy, int64_t seglen,
                                             int64_t stride, int64_t begin, int64_t end, float mean,
                                             Prefetcher& pf) {
  BackwardSums total;
  for (int64_t b0 = begin; b0 < end; b0 += kBlock<T>) {
    const int64_t b1 = std::min(end, b0 + kBlock<T>);
    __m512 sdy = _mm512_setzero_ps(), sdyx = _mm512_setzero_ps();
    for (Pieces pc(seglen, stride, b0, b1); pc.next();)
      for (int64_t o = 0; o < pc.length; o += kPrefetchChunk<T>) {
        const int64_t len = std::min(kPrefetchChunk<T>, pc.length - o);
        accumulate_backward(x + pc.offset + o, dy + pc.offset + o, len, _mm512_set1_ps(mean), sdy,
                            sdyx);
        pf.advance(len * sizeof(T));
      }
    total.dy += reduce_to_double(sdy);
    total.dy_x += reduce_to_double(sdyx);
  }
  return total;
}

/// The most channels block_backward_sums takes at once.
inline constexpr int64_t kMaxBlockChannels = 64;

/// BackwardSums of the k <= kMaxBlockChannels consecutive channels of a block (BatchNorm NCHW:
/// channel j's plane of sample n at x + n * stride + j * seglen; mean[j] its mean) into sums[j],
/// sample by sample, so that x and dy are read as runs of k planes in address order: fp32 vector
/// accumulators per channel, folded into double every kBlock elements of a channel (as
/// strided_backward_sums). One pass for pf.
template <class T>
NB_AVX512 void block_backward_sums(const T* x, const T* dy, int64_t seglen, int64_t stride,
                                   int64_t samples, int64_t k, const float* mean,
                                   BackwardSums* sums, Prefetcher& pf) {
  __m512 sdy[kMaxBlockChannels], sdyx[kMaxBlockChannels], mu[kMaxBlockChannels];
  for (int64_t j = 0; j < k; ++j) {
    sdy[j] = sdyx[j] = _mm512_setzero_ps();
    mu[j] = _mm512_set1_ps(mean[j]);
    sums[j] = {};
  }
  const int64_t fold = std::max<int64_t>(1, kBlock<T> / seglen);  // samples per fp32 block
  for (int64_t n = 0; n < samples; ++n) {
    const int64_t o = n * stride;
    for (int64_t j = 0; j < k; ++j)
      accumulate_backward(x + o + j * seglen, dy + o + j * seglen, seglen, mu[j], sdy[j], sdyx[j]);
    pf.advance(k * seglen * static_cast<int64_t>(sizeof(T)));
    if ((n + 1) % fold == 0 || n + 1 == samples)
      for (int64_t j = 0; j < k; ++j) {
        sums[j].dy += reduce_to_double(sdy[j]);
        sums[j].dy_x += reduce_to_double(sdyx[j]);
        sdy[j] = sdyx[j] = _mm512_setzero_ps();
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Writing an output span.

/// Elements [begin, end) of op's span to dst[0 .. end - begin) with masked ordinary stores.
template <class T, class Op>
NB_AVX512_INLINE void masked_stores(T* dst, int64_t begin, int64_t end, Op& op) {
  for (int64_t i = begin; i < end; i += 16) {
    const int k = static_cast<int>(std::min<int64_t>(16, end - i));
    const __mmask16 m = first_lanes(k);
    Io<T>::store(dst + (i - begin), op.part(i, m, k), m);
  }
}

/// out[i] = op(i) for whole vectors from i while a vector fits before `end`, with non-temporal
/// stores (kStream; i 64-byte aligned) or ordinary ones; returns where it stopped. pf advances
/// with the bytes consumed.
template <bool kStream, class T>
NB_AVX512_INLINE void put_vector(T* p, __m512 v) {
  if constexpr (kStream)
    Io<T>::stream(p, v);
  else
    Io<T>::store(p, v);
}
template <bool kStream, class T, class Op>
NB_AVX512_INLINE int64_t write_body(T* out, int64_t i, int64_t end, Op& op, Prefetcher& pf) {
  for (; i + 64 <= end; i += 64) {
    put_vector<kStream>(out + i, op.full(i));
    put_vector<kStream>(out + i + 16, op.full(i + 16));
    put_vector<kStream>(out + i + 32, op.full(i + 32));
    put_vector<kStream>(out + i + 48, op.full(i + 48));
    pf.advance(64 * sizeof(T));
  }
  for (; i + 16 <= end; i += 16) {
    put_vector<kStream>(out + i, op.full(i));
    pf.advance(16 * sizeof(T));
  }
  return i;
}

/// out[i] = op(i) for i in [0, n). Op provides
///   __m512 full(int64_t i)                       lanes i .. i+15
///   __m512 part(int64_t i, __mmask16 m, int k)   the first k lanes (others don't matter)
/// and is called with increasing i, each call starting where the previous ended (pattern ops
/// rely on it). With `stream`, the head up to the first 64-byte boundary is written with masked
/// ordinary stores, the aligned body with non-temporal stores, the tail with a masked store; the
/// caller issues _mm_sfence() once its writes are done. pf advances with the bytes consumed.
/// An ordinary store to a line not in cache first reads the line from DRAM, and later stores
/// queue behind it. Prefetching a partial tail's line before the body is written measured faster
/// on 784-byte planes (BatchNorm NCHW f32 n192c1024h14w14 training forward 14.5-17.0 -> 11.7-12.7
/// ms, 2 threads, interleaved) but slower on line-aligned ones (inference n64c256h64w64 13.3-14.6
/// -> 14.8-15.7 ms), so it is not done; GroupNorm and BatchNorm avoid the partial lines instead
/// (the segmented ops below, write_span_carried).
template <class T, class Op>
NB_AVX512_INLINE void write_span(T* out, int64_t n, bool stream, Op& op, Prefetcher& pf) {
  int64_t i = 0;
  const auto addr = reinterpret_cast<std::uintptr_t>(out);
  if (stream && n * static_cast<int64_t>(sizeof(T)) >= kStreamMinBytes && addr % sizeof(T) == 0) {
    const int64_t head = std::min<int64_t>(n, ((64 - (addr & 63)) & 63) / sizeof(T));
    masked_stores(out, 0, head, op);
    i = write_body<true>(out, head, n, op, pf);
  } else {
    i = write_body<false>(out, 0, n, op, pf);
  }
  masked_stores(out + i, i, n, op);
}

/// write_span with streaming stores for a span that another span, written later by the same
/// thread, continues in memory (BatchNorm NCHW: plane (n, c+1) follows plane (n, c)), so that no
/// line is completed by ordinary stores. `carry_in` (or null) is a 64-byte aligned image of the
/// line where the span starts, holding the previous span's tail: the head's elements are added
/// to it and the whole line is written with one non-temporal store. `carry_out` (or null)
/// receives the elements after the span's last line boundary instead of memory, for the next
/// span's head. A null carry writes that end with masked ordinary stores, as write_span does.
/// Requires n * sizeof(T) >= 128 (the span crosses a line boundary) and out aligned to sizeof(T).
template <class T, class Op>
NB_AVX512_INLINE void write_span_carried(T* out, int64_t n, Op& op, Prefetcher& pf,
                                         unsigned char* carry_in, unsigned char* carry_out) {
  const auto addr = reinterpret_cast<std::uintptr_t>(out);
  const int64_t head = static_cast<int64_t>(((64 - (addr & 63)) & 63) / sizeof(T));
  const int64_t body_end =
      static_cast<int64_t>(((addr + n * sizeof(T)) & ~std::uintptr_t{63}) - addr) /
      static_cast<int64_t>(sizeof(T));
  if (head > 0) {
    masked_stores(carry_in ? reinterpret_cast<T*>(carry_in + (addr & 63)) : out, 0, head, op);
    if (carry_in)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(addr & ~std::uintptr_t{63}),
                          _mm512_load_si512(carry_in));
    pf.advance(head * static_cast<int64_t>(sizeof(T)));
  }
  const int64_t i = write_body<true>(out, head, body_end, op, pf);
  if (i < n) {
    masked_stores(carry_out ? reinterpret_cast<T*>(carry_out) : out + i, i, n, op);
    pf.advance((n - i) * static_cast<int64_t>(sizeof(T)));
  }
}

/// The carried ends of one span for write_span_carried (both null: write_span).
struct CarriedEnds {
  unsigned char* in = nullptr;
  unsigned char* out = nullptr;
  bool on = false;
};
template <class T, class Op>
NB_AVX512_INLINE void write_span_or_carried(T* out, int64_t n, bool stream, Op& op, Prefetcher& pf,
                                            const CarriedEnds& ends) {
  if (ends.on)
    write_span_carried(out, n, op, pf, ends.in, ends.out);
  else
    write_span(out, n, stream, op, pf);
}

/// y = (x - mean) * scale + shift with per-span scalars (BatchNorm, GroupNorm and InstanceNorm
/// channels). Subtracting the mean first keeps the large-offset case exact where the folded
/// x * scale + (shift - mean * scale) would cancel.
template <class T>
struct AffineOp {
  const T* x;
  __m512 mean, scale, shift;
  NB_AVX512_INLINE AffineOp(const T* x_, float mean_, float scale_, float shift_)
      : x(x_),
        mean(_mm512_set1_ps(mean_)),
        scale(_mm512_set1_ps(scale_)),
        shift(_mm512_set1_ps(shift_)) {}
  NB_AVX512_INLINE __m512 full(int64_t i) const {
    return _mm512_fmadd_ps(_mm512_sub_ps(Io<T>::load(x + i), mean), scale, shift);
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int) const {
    return _mm512_fmadd_ps(_mm512_sub_ps(Io<T>::load(x + i, m), mean), scale, shift);
  }
};

/// dx = k * dy + (x - mean) * c1 + c0 with per-span scalars: the training-mode backward of
/// BatchNorm/GroupNorm/InstanceNorm folded per channel (k = gamma * invstd) and per unit
/// (c0 = -invstd * mean(gamma*dy), c1 = -invstd^3 * mean(gamma*dy*(x - mean))).
template <class T>
struct BackwardOp {
  const T* x;
  const T* dy;
  __m512 mean, k, c1, c0;
  NB_AVX512_INLINE BackwardOp(const T* x_, const T* dy_, float mean_, float k_, float c1_,
                              float c0_)
      : x(x_),
        dy(dy_),
        mean(_mm512_set1_ps(mean_)),
        k(_mm512_set1_ps(k_)),
        c1(_mm512_set1_ps(c1_)),
        c0(_mm512_set1_ps(c0_)) {}
  NB_AVX512_INLINE __m512 full(int64_t i) const {
    const __m512 centered = _mm512_sub_ps(Io<T>::load(x + i), mean);
    return _mm512_fmadd_ps(k, Io<T>::load(dy + i), _mm512_fmadd_ps(centered, c1, c0));
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int) const {
    const __m512 centered = _mm512_sub_ps(Io<T>::load(x + i, m), mean);
    return _mm512_fmadd_ps(k, Io<T>::load(dy + i, m), _mm512_fmadd_ps(centered, c1, c0));
  }
};

/// The position of an op that walks a span whose per-element scalars change every `seglen`
/// elements (the channels of a GroupNorm unit), for the segmented ops below: one write_span over
/// a unit instead of one per channel, so that the line shared by two channels' ends is written
/// whole, with a non-temporal store, rather than by two masked ordinary stores that each stall
/// on reading the line from DRAM first (H*W = 196 in f32 is 12.25 lines a channel).
/// Requires seglen >= 16: at most one boundary falls in a vector.
struct SegmentCursor {
  int64_t seglen, pos, end, idx, count;
  SegmentCursor(int64_t seglen_, int64_t begin, int64_t count_)
      : seglen(seglen_),
        pos(begin),
        end((begin / seglen_ + 1) * seglen_),
        idx(begin / seglen_),
        count(count_) {}
  /// Lanes among the first k of the vector at pos that belong to segment idx + 1.
  NB_AVX512_INLINE __mmask16 spill(int k) const {
    return pos + k > end ? static_cast<__mmask16>(first_lanes(k) & ~first_lanes(end - pos)) : 0;
  }
  /// Moves on by k <= 16 elements; true when that enters a next segment that exists (idx is then
  /// its index; past the last one, whose scalars must not be read, false).
  bool advance(int64_t k) {
    pos += k;
    if (pos < end) return false;
    ++idx;
    end += seglen;
    return idx < count;
  }
};

/// The scalars of y = (x - mean) * scale + shift for one segment.
struct SegmentAffine {
  float mean, scale, shift;
};

/// AffineOp over segments of seglen elements with the scalars params(s) of segment s (a callable
/// returning SegmentAffine): y of a GroupNorm unit across its channels, or of BatchNorm inference
/// across a range of (n, c) planes. x is the span's first element, `begin` its offset in the
/// segmented whole (segment s starts at s * seglen), `segments` the number of segments there.
template <class T, class Params>
struct SegmentedAffineOp {
  const T* x;
  Params params;
  __m512 mean, scale, shift;
  SegmentCursor at;
  NB_AVX512_INLINE SegmentedAffineOp(const T* x_, Params params_, int64_t seglen, int64_t begin,
                                     int64_t segments)
      : x(x_), params(params_), at(seglen, begin, segments) {
    load_segment();
  }
  NB_AVX512_INLINE void load_segment() {
    const SegmentAffine f = params(at.idx);
    mean = _mm512_set1_ps(f.mean);
    scale = _mm512_set1_ps(f.scale);
    shift = _mm512_set1_ps(f.shift);
  }
  NB_AVX512_INLINE __m512 compute(__m512 v, int k) {
    __m512 mu = mean, sc = scale, sh = shift;
    if (const __mmask16 m = at.spill(k)) {
      const SegmentAffine f = params(at.idx + 1);
      mu = _mm512_mask_mov_ps(mu, m, _mm512_set1_ps(f.mean));
      sc = _mm512_mask_mov_ps(sc, m, _mm512_set1_ps(f.scale));
      sh = _mm512_mask_mov_ps(sh, m, _mm512_set1_ps(f.shift));
    }
    if (at.advance(k)) load_segment();
    return _mm512_fmadd_ps(_mm512_sub_ps(v, mu), sc, sh);
  }
  NB_AVX512_INLINE __m512 full(int64_t i) { return compute(Io<T>::load(x + i), 16); }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int k) {
    return compute(Io<T>::load(x + i, m), k);
  }
};

/// BackwardOp over segments of seglen elements with per-segment k = gamma[s] * invstd (gamma
/// null: 1) and one mean, c1, c0: dx of a GroupNorm unit across its channels (x, dy, begin,
/// segments as in SegmentedAffineOp).
template <class T>
struct SegmentedBackwardOp {
  const T* x;
  const T* dy;
  const float* gamma;
  float invstd;
  __m512 mean, k, c1, c0;
  SegmentCursor at;
  NB_AVX512_INLINE SegmentedBackwardOp(const T* x_, const T* dy_, const float* gamma_, float mean_,
                                       float invstd_, float c1_, float c0_, int64_t seglen,
                                       int64_t begin, int64_t segments)
      : x(x_),
        dy(dy_),
        gamma(gamma_),
        invstd(invstd_),
        mean(_mm512_set1_ps(mean_)),
        c1(_mm512_set1_ps(c1_)),
        c0(_mm512_set1_ps(c0_)),
        at(seglen, begin, segments) {
    k = _mm512_set1_ps(k_of(at.idx));
  }
  float k_of(int64_t s) const { return (gamma ? gamma[s] : 1.0f) * invstd; }
  NB_AVX512_INLINE __m512 compute(__m512 xv, __m512 g, int n) {
    __m512 kk = k;
    if (const __mmask16 m = at.spill(n))
      kk = _mm512_mask_mov_ps(kk, m, _mm512_set1_ps(k_of(at.idx + 1)));
    if (at.advance(n)) k = _mm512_set1_ps(k_of(at.idx));
    return _mm512_fmadd_ps(kk, g, _mm512_fmadd_ps(_mm512_sub_ps(xv, mean), c1, c0));
  }
  NB_AVX512_INLINE __m512 full(int64_t i) {
    return compute(Io<T>::load(x + i), Io<T>::load(dy + i), 16);
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int n) {
    return compute(Io<T>::load(x + i, m), Io<T>::load(dy + i, m), n);
  }
};

/// The scalars of dx = k * dy + (x - mean) * c1 + c0 for one segment.
struct SegmentBackward {
  float mean, k, c1, c0;
};

/// BackwardOp over segments of seglen elements with the scalars params(s) of segment s (a
/// callable returning SegmentBackward): dx of a block of BatchNorm channels across its planes (x,
/// dy, begin, segments as in SegmentedAffineOp).
template <class T, class Params>
struct SegmentedChannelsBackwardOp {
  const T* x;
  const T* dy;
  Params params;
  __m512 mean, k, c1, c0;
  SegmentCursor at;
  NB_AVX512_INLINE SegmentedChannelsBackwardOp(const T* x_, const T* dy_, Params params_,
                                               int64_t seglen, int64_t begin, int64_t segments)
      : x(x_), dy(dy_), params(params_), at(seglen, begin, segments) {
    load_segment();
  }
  NB_AVX512_INLINE void load_segment() {
    const SegmentBackward f = params(at.idx);
    mean = _mm512_set1_ps(f.mean);
    k = _mm512_set1_ps(f.k);
    c1 = _mm512_set1_ps(f.c1);
    c0 = _mm512_set1_ps(f.c0);
  }
  NB_AVX512_INLINE __m512 compute(__m512 xv, __m512 g, int n) {
    __m512 mu = mean, kk = k, a1 = c1, a0 = c0;
    if (const __mmask16 m = at.spill(n)) {
      const SegmentBackward f = params(at.idx + 1);
      mu = _mm512_mask_mov_ps(mu, m, _mm512_set1_ps(f.mean));
      kk = _mm512_mask_mov_ps(kk, m, _mm512_set1_ps(f.k));
      a1 = _mm512_mask_mov_ps(a1, m, _mm512_set1_ps(f.c1));
      a0 = _mm512_mask_mov_ps(a0, m, _mm512_set1_ps(f.c0));
    }
    if (at.advance(n)) load_segment();
    return _mm512_fmadd_ps(kk, g, _mm512_fmadd_ps(_mm512_sub_ps(xv, mu), a1, a0));
  }
  NB_AVX512_INLINE __m512 full(int64_t i) {
    return compute(Io<T>::load(x + i), Io<T>::load(dy + i), 16);
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int n) {
    return compute(Io<T>::load(x + i, m), Io<T>::load(dy + i, m), n);
  }
};

NB_AVX512_INLINE void end_streaming(bool stream) {
  if (stream) _mm_sfence();
}

// ---------------------------------------------------------------------------------------------
// Plain (baseline ISA) helpers shared by the drivers.

/// [begin, end) of part t of n items split into `parts` nearly equal contiguous parts.
struct Range {
  int64_t begin, end;
};
inline Range split_range(int64_t n, int t, int parts) {
  return {n * t / parts, n * (t + 1) / parts};
}

inline int thread_budget(int64_t numel) {
  return numel >= kParallelMinElements ? std::max(1, omp_get_max_threads()) : 1;
}

/// The tensors of KernelArgs typed with the storage type T (nullptr where the pass has none).
template <class T>
struct Typed {
  const T* x;
  T* y;
  const T* dy;
  T* dx;
  explicit Typed(const KernelArgs& a)
      : x(static_cast<const T*>(a.x)),
        y(static_cast<T*>(a.y)),
        dy(static_cast<const T*>(a.dy)),
        dx(static_cast<T*>(a.dx)) {}
};

}  // namespace nb::avx512::NB_AVX512_VARIANT

/// Defines entry point `name` (kernels.hpp) as impl<T>(p, args) for the problem's dtype: f32,
/// bf16 and f16 in the base compilation, bf16 only in the bf16hw one.
#if NB_AVX512_WITH_BF16
#define NB_AVX512_ENTRY(name, impl)                                           \
  void name(const Problem& p, const KernelArgs& args) {                       \
    if (p.dtype != DType::bf16)                                               \
      throw std::logic_error("avx512 bf16hw kernels are for bf16 data only"); \
    impl<BFloat16>(p, args);                                                  \
  }
#else
#define NB_AVX512_ENTRY(name, impl)                     \
  void name(const Problem& p, const KernelArgs& args) { \
    switch (p.dtype) {                                  \
      case DType::f32:                                  \
        return impl<float>(p, args);                    \
      case DType::bf16:                                 \
        return impl<BFloat16>(p, args);                 \
      case DType::f16:                                  \
        return impl<Float16>(p, args);                  \
    }                                                   \
  }
#endif
