// LayerNorm and RMSNorm on the avx512 backend: fwd_train, fwd_infer and bwd, NCHW and NHWC,
// f32/bf16/f16 (CONVENTIONS section 1: statistics over the C*H*W elements of a sample, elementwise
// gamma/beta of normalized_shape (C, H, W); RMSNorm y = x / sqrt(mean(x^2) + eps) * gamma).
//
// A row (one sample, contiguous in both layouts) is the reduction unit and sits in L1/L2: its
// statistics are taken in 16 KiB blocks (LayerNorm: two passes per block + Chan merge; RMSNorm:
// sum of squares, no cancellation), then y is written from the cached row with non-temporal
// stores; the next row is prefetched in step with these passes when the tensor exceeds the cache
// (prefetch_next_unit), so x is read from DRAM once. The
// backward takes 4 rows at a time: one pass for each row's sum(g*dy) and sum(g*dy*(x - mean)),
// which also accumulates the thread's partial dgamma/dbeta (fp32, loaded and stored once per 4
// rows, folded into double every 32 rows), then dx from the cache. Groups are software-pipelined
// in chunks of 256 columns: dx of group k is written one chunk (all 4 rows) at a time, each
// followed by the first pass over the same columns of group k+1, prefetched meanwhile, so the
// DRAM reads of group k+1 overlap the whole of group k's work (kBackwardChunkColumns has the
// measurements: f32 0.73 -> 0.84, 16-bit 0.60-0.63 -> 0.70-0.77 of the paired copy); the
// per-thread partials are merged once at the end. Rows left over when N
// is not a multiple of the thread count (all of them when N < threads) are split between the
// threads and their partial statistics merged after a barrier.
// NHWC with H*W > 1: a row is stored (h, w, c) while gamma/beta are C-major (c, h, w); the kernels
// work on copies of gamma/beta (and produce dgamma/dbeta) in the row's memory order and transpose
// once per call.
//
// Limits: none beyond memory for the per-thread dgamma/dbeta partials (24 bytes per element of
// normalized_shape per thread).
#include <vector>

#include "kernels/avx512/channels_last.hpp"
#include "kernels/avx512/simd.hpp"

namespace nb::avx512::NB_AVX512_VARIANT {
namespace {

/// Row partials of dgamma/dbeta are folded from fp32 into double every this many rows.
constexpr int kFoldRows = 32;

/// gamma/beta in the memory order of a row: the arguments themselves, or transposed copies for
/// NHWC with H*W > 1 (memory position s*C + c holds parameter c*H*W + s).
struct RowParams {
  int64_t length, channels, spatial;
  bool transposed;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  std::vector<float> gamma_t, beta_t;

  RowParams(const Problem& p, const KernelArgs& a)
      : length(p.c * p.spatial()),
        channels(p.c),
        spatial(p.spatial()),
        transposed(p.layout == Layout::nhwc && p.spatial() > 1) {
    gamma = a.gamma;
    beta = p.method == Method::rmsnorm ? nullptr : a.beta;
    if (!transposed) return;
    if (gamma) gamma = transpose(gamma, gamma_t);
    if (beta) beta = transpose(beta, beta_t);
  }
  /// Parameter index of memory position i of a row.
  int64_t param_index(int64_t i) const {
    return transposed ? (i % channels) * spatial + i / channels : i;
  }

 private:
  const float* transpose(const float* src, std::vector<float>& dst) const {
    dst.resize(length);
    for (int64_t i = 0; i < length; ++i) dst[i] = src[param_index(i)];
    return dst.data();
  }
};

/// y = (x - mean) * invstd [* gamma [+ beta]]; kParams = 0 (no affine), 1 (gamma: RMSNorm),
/// 2 (gamma and beta). mean = 0 for RMSNorm. Parameter tails are loaded masked (no read past the
/// end of gamma/beta).
template <class T, int kParams>
struct RowOp {
  const T* x;
  const float* gamma;
  const float* beta;
  __m512 mean, invstd;
  NB_AVX512_INLINE RowOp(const T* x_, const float* g, const float* b, float mean_, float invstd_)
      : x(x_), gamma(g), beta(b), mean(_mm512_set1_ps(mean_)), invstd(_mm512_set1_ps(invstd_)) {}
  NB_AVX512_INLINE __m512 full(int64_t i) const {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(Io<T>::load(x + i), mean), invstd);
    if constexpr (kParams == 0) return xhat;
    if constexpr (kParams == 1) return _mm512_mul_ps(xhat, _mm512_loadu_ps(gamma + i));
    if constexpr (kParams == 2)
      return _mm512_fmadd_ps(xhat, _mm512_loadu_ps(gamma + i), _mm512_loadu_ps(beta + i));
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int) const {
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(Io<T>::load(x + i, m), mean), invstd);
    if constexpr (kParams == 0) return xhat;
    if constexpr (kParams == 1) return _mm512_mul_ps(xhat, _mm512_maskz_loadu_ps(m, gamma + i));
    if constexpr (kParams == 2)
      return _mm512_fmadd_ps(xhat, _mm512_maskz_loadu_ps(m, gamma + i),
                             _mm512_maskz_loadu_ps(m, beta + i));
  }
};

/// dx = invstd * gamma * dy + (x - mean) * c1 + c0 (gamma = 1 without affine).
template <class T, bool kGamma>
struct RowBackwardOp {
  const T* x;
  const T* dy;
  const float* gamma;
  __m512 mean, invstd, c1, c0;
  NB_AVX512_INLINE RowBackwardOp(const T* x_, const T* dy_, const float* g, float mean_,
                                 float invstd_, float c1_, float c0_)
      : x(x_),
        dy(dy_),
        gamma(g),
        mean(_mm512_set1_ps(mean_)),
        invstd(_mm512_set1_ps(invstd_)),
        c1(_mm512_set1_ps(c1_)),
        c0(_mm512_set1_ps(c0_)) {}
  NB_AVX512_INLINE __m512 compute(__m512 xv, __m512 g, __m512 k) const {
    return _mm512_fmadd_ps(k, g, _mm512_fmadd_ps(_mm512_sub_ps(xv, mean), c1, c0));
  }
  NB_AVX512_INLINE __m512 full(int64_t i) const {
    const __m512 k = kGamma ? _mm512_mul_ps(invstd, _mm512_loadu_ps(gamma + i)) : invstd;
    return compute(Io<T>::load(x + i), Io<T>::load(dy + i), k);
  }
  NB_AVX512_INLINE __m512 part(int64_t i, __mmask16 m, int) const {
    const __m512 k = kGamma ? _mm512_mul_ps(invstd, _mm512_maskz_loadu_ps(m, gamma + i)) : invstd;
    return compute(Io<T>::load(x + i, m), Io<T>::load(dy + i, m), k);
  }
};

/// Statistics of x[begin, end) of a row: LayerNorm moments, or for RMSNorm {n, 0, sum(x^2)}
/// (zero-mean moments: Chan's merge of them adds the sums of squares, and variance() is then
/// mean(x^2)).
template <class T>
NB_AVX512 Moments row_moments(const T* row, int64_t begin, int64_t end, bool rms, Prefetcher& pf,
                              const CenterHint& hint = {}) {
  if (!rms) return strided_moments(row, end, end, begin, end, pf, hint);
  return {static_cast<double>(end - begin), 0.0, sum_of_squares(row + begin, end - begin, pf)};
}

struct RowStats {
  float mean, invstd;
};
RowStats row_stats(const Problem& p, const KernelArgs& a, int64_t r, const Moments& m, bool write) {
  const double invstd = 1.0 / std::sqrt(m.variance() + p.eps);
  if (write && a.invstd) a.invstd[r] = static_cast<float>(invstd);
  if (write && a.mean) a.mean[r] = static_cast<float>(m.mean);
  return {static_cast<float>(m.mean), static_cast<float>(invstd)};
}

template <class T, int kParams>
NB_AVX512 void write_row(const T* x, T* y, int64_t n, const RowParams& w, int64_t begin,
                         const RowStats& st, bool stream, Prefetcher& pf) {
  RowOp<T, kParams> op(x, w.gamma ? w.gamma + begin : nullptr, w.beta ? w.beta + begin : nullptr,
                       st.mean, st.invstd);
  write_span(y, n, stream, op, pf);
}

/// Forward of whole rows [r0, r1) by one thread.
template <class T, int kParams>
NB_AVX512 void forward_rows(const Problem& p, const KernelArgs& a, const RowParams& w, int64_t r0,
                            int64_t r1, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const int64_t D = w.length;
  const bool rms = p.method == Method::rmsnorm;
  CenterHint hint;  // the previous row's statistics center this row's first block
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = t.x + r * D;
    Prefetcher pf;  // row r+1, over the passes of row r (statistics, then y)
    pf.pace((rms ? 1 : moment_passes<T>(D, hint.valid)) + 1);
    if (prefetch && r + 1 < r1) pf.add(x + D, 1, D * sizeof(T), 0);
    const Moments m = row_moments(x, 0, D, rms, pf, hint);
    if (!rms) hint = CenterHint::of(m);
    const RowStats st = row_stats(p, a, r, m, true);
    write_row<T, kParams>(x, t.y + r * D, D, w, 0, st, stream, pf);
  }
  end_streaming(stream);
}

template <class T, int kParams>
NB_AVX512 void forward_row_part(const KernelArgs& a, const RowParams& w, int64_t r, Range part,
                                const RowStats& st, bool stream) {
  const Typed<T> t(a);
  const int64_t base = r * w.length + part.begin;
  Prefetcher none;
  write_row<T, kParams>(t.x + base, t.y + base, part.end - part.begin, w, part.begin, st, stream,
                        none);
  end_streaming(stream);
}

template <class T>
NB_AVX512 Moments row_part_moments(const Problem& p, const KernelArgs& a, int64_t r, Range part,
                                   int64_t length) {
  Prefetcher none;
  return row_moments(static_cast<const T*>(a.x) + r * length, part.begin, part.end,
                     p.method == Method::rmsnorm, none);
}

template <class T, int kParams>
void forward(const Problem& p, const KernelArgs& a, const RowParams& w) {
  const int64_t D = w.length;
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const bool prefetch = prefetch_next_unit(2 * p.numel() * sizeof(T), D * sizeof(T), threads);
  std::vector<Moments> partial(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = p.n / nt;
    forward_rows<T, kParams>(p, a, w, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    for (int64_t r = per_thread * nt; r < p.n; ++r) {  // leftover rows: split each
      const Range part = split_range(D, t, nt);
      partial[t] = row_part_moments<T>(p, a, r, part, D);
#pragma omp barrier
      Moments m;
      for (int i = 0; i < nt; ++i) m.merge(partial[i]);
      const RowStats st = row_stats(p, a, r, m, t == 0);
      forward_row_part<T, kParams>(a, w, r, part, st, stream);
#pragma omp barrier
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

/// One thread's partial dgamma/dbeta in row memory order: fp32 accumulated per row, folded into
/// double every kFoldRows rows so the error does not grow with N.
struct ParamPartials {
  int64_t length = 0;
  AlignedArray<float> dgamma32, dbeta32;
  std::vector<double> dgamma64, dbeta64;
  int rows = 0;
  ParamPartials(int64_t n, bool has_gamma, bool has_beta)
      : length(n),
        dgamma32(has_gamma ? n : 0),
        dbeta32(has_beta ? n : 0),
        dgamma64(has_gamma ? n : 0),
        dbeta64(has_beta ? n : 0) {
    if (has_gamma) std::fill_n(dgamma32.data(), n, 0.0f);
    if (has_beta) std::fill_n(dbeta32.data(), n, 0.0f);
  }
  void fold() {
    for (int64_t i = 0; i < static_cast<int64_t>(dgamma64.size()); ++i) {
      dgamma64[i] += dgamma32[i];
      dgamma32[i] = 0;
    }
    for (int64_t i = 0; i < static_cast<int64_t>(dbeta64.size()); ++i) {
      dbeta64[i] += dbeta32[i];
      dbeta32[i] = 0;
    }
    rows = 0;
  }
  /// Counts rows accumulated; folds every kFoldRows rows.
  void rows_done(int count) {
    rows += count;
    if (rows >= kFoldRows) fold();
  }
};

/// Over elements [0, n) of R rows (row r at x + r*row_stride, dy + r*row_stride; pointers
/// already offset): out[r] = {sum(g*dy), sum(g*dy*(x - mean_r))} with g = gamma (1 without
/// affine), and dgamma32 += sum over the rows of dy*(x - mean_r)*invstd_r, dbeta32 += sum of dy:
/// the partials are loaded and stored once per R rows. fp32 within blocks of kBlock, double
/// across.
template <class T, bool kGamma, bool kBeta, int R>
NB_AVX512 void rows_backward_sums(const T* x, const T* dy, int64_t row_stride, int64_t n,
                                  const float* gamma, const float* mean, const float* invstd,
                                  float* dgamma32, float* dbeta32, BackwardSums* out,
                                  Prefetcher& pf) {
  __m512 mv[R], iv[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    mv[r] = _mm512_set1_ps(mean[r]);
    iv[r] = _mm512_set1_ps(invstd[r]);
    out[r] = {};
  }
  for (int64_t b0 = 0; b0 < n; b0 += kBlock<T>) {
    const int64_t b1 = std::min(n, b0 + kBlock<T>);
    __m512 sg[R], sgx[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) sg[r] = sgx[r] = _mm512_setzero_ps();
    for (int64_t i = b0; i < b1; i += 16) {
      if ((i - b0) % kPrefetchChunk<T> == 0)
        pf.advance(R * std::min(kPrefetchChunk<T>, b1 - i) * sizeof(T));
      const __mmask16 m = first_lanes(b1 - i);
      const __m512 gm = kGamma ? _mm512_maskz_loadu_ps(m, gamma + i) : _mm512_set1_ps(1.0f);
      __m512 dg = kGamma ? _mm512_maskz_loadu_ps(m, dgamma32 + i) : _mm512_setzero_ps();
      __m512 db = kBeta ? _mm512_maskz_loadu_ps(m, dbeta32 + i) : _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 g = Io<T>::load(dy + r * row_stride + i, m);
        const __m512 d = _mm512_maskz_sub_ps(m, Io<T>::load(x + r * row_stride + i, m), mv[r]);
        const __m512 gg = kGamma ? _mm512_mul_ps(g, gm) : g;
        sg[r] = _mm512_add_ps(sg[r], gg);
        sgx[r] = _mm512_fmadd_ps(gg, d, sgx[r]);
        if constexpr (kGamma) dg = _mm512_fmadd_ps(_mm512_mul_ps(g, d), iv[r], dg);
        if constexpr (kBeta) db = _mm512_add_ps(db, g);
      }
      if constexpr (kGamma) _mm512_mask_storeu_ps(dgamma32 + i, m, dg);
      if constexpr (kBeta) _mm512_mask_storeu_ps(dbeta32 + i, m, db);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      out[r].dy += reduce_to_double(sg[r]);
      out[r].dy_x += reduce_to_double(sgx[r]);
    }
  }
}

/// Rows kRowGroup at a time in the backward's first pass (fewer partial loads/stores).
constexpr int kRowGroup = 4;

/// Backward coefficients of a row: dx = invstd*g*dy + (x - mean)*c1 + c0 with
/// c0 = -invstd * sum(g*dy) / D (0 for RMSNorm), c1 = -invstd^3 * sum(g*dy*(x - mean)) / D.
struct RowBackward {
  float mean, invstd, c1, c0;
};
RowBackward row_backward(const KernelArgs& a, int64_t r, const BackwardSums& s, double length,
                         bool rms) {
  const double invstd = a.invstd[r];
  return {rms ? 0.0f : a.mean[r], a.invstd[r],
          static_cast<float>(-invstd * invstd * invstd * s.dy_x / length),
          rms ? 0.0f : static_cast<float>(-invstd * s.dy / length)};
}

template <class T, bool kGamma, bool kBeta>
NB_AVX512 BackwardSums row_part_sums(const Problem& p, const KernelArgs& a, const RowParams& w,
                                     int64_t r, Range part, ParamPartials& pp) {
  const Typed<T> t(a);
  const float mean = p.method == Method::rmsnorm ? 0.0f : a.mean[r];
  const int64_t base = r * w.length + part.begin;
  BackwardSums s;
  Prefetcher none;
  rows_backward_sums<T, kGamma, kBeta, 1>(
      t.x + base, t.dy + base, 0, part.end - part.begin, kGamma ? w.gamma + part.begin : nullptr,
      &mean, &a.invstd[r], kGamma ? pp.dgamma32.data() + part.begin : nullptr,
      kBeta ? pp.dbeta32.data() + part.begin : nullptr, &s, none);
  return s;
}

/// The first backward pass over columns `cols` of rows [r, r + count) (count <= kRowGroup):
/// each row's sums are added into out[0, count), the parameter partials into pp.
template <class T, bool kGamma, bool kBeta>
NB_AVX512 void row_group_sums(const Problem& p, const KernelArgs& a, const RowParams& w, int64_t r,
                              int count, Range cols, ParamPartials& pp, BackwardSums* out) {
  const Typed<T> t(a);
  const int64_t D = w.length, j = cols.begin, n = cols.end - cols.begin;
  float mean[kRowGroup], invstd[kRowGroup];
  for (int i = 0; i < count; ++i) {
    mean[i] = p.method == Method::rmsnorm ? 0.0f : a.mean[r + i];
    invstd[i] = a.invstd[r + i];
  }
  const float* gamma = kGamma ? w.gamma + j : nullptr;
  float* dg = kGamma ? pp.dgamma32.data() + j : nullptr;
  float* db = kBeta ? pp.dbeta32.data() + j : nullptr;
  const T* x = t.x + r * D + j;
  const T* dy = t.dy + r * D + j;
  BackwardSums part[kRowGroup];
  Prefetcher none;
  switch (count) {
    case 4:
      rows_backward_sums<T, kGamma, kBeta, 4>(x, dy, D, n, gamma, mean, invstd, dg, db, part, none);
      break;
    case 3:
      rows_backward_sums<T, kGamma, kBeta, 3>(x, dy, D, n, gamma, mean, invstd, dg, db, part, none);
      break;
    case 2:
      rows_backward_sums<T, kGamma, kBeta, 2>(x, dy, D, n, gamma, mean, invstd, dg, db, part, none);
      break;
    default:
      rows_backward_sums<T, kGamma, kBeta, 1>(x, dy, D, n, gamma, mean, invstd, dg, db, part, none);
  }
  for (int i = 0; i < count; ++i) out[i].add(part[i]);
}

template <class T, bool kGamma>
NB_AVX512 void write_row_dx(const T* x, const T* dy, T* dx, int64_t n, const float* gamma,
                            const RowBackward& b, bool stream, Prefetcher& pf) {
  RowBackwardOp<T, kGamma> op(x, dy, gamma, b.mean, b.invstd, b.c1, b.c0);
  write_span(dx, n, stream, op, pf);
}

/// Columns per chunk of the backward pipeline below (a multiple of 32, so the streaming stores of
/// 16-bit dx stay 64-byte aligned): a chunk of a 4-row group is 4 KiB of x in f32, 2 KiB in
/// 16 bits. Measured on the Intel hosts (2 threads, t16384d4096, interleaved runs of one binary
/// with the width set at run time, fraction of the paired non-temporal copy): LayerNorm f32
/// 0.73 (whole rows, before) -> 0.79 (512), 0.84-0.85 (256), 0.81-0.83 (128); bf16 0.60 ->
/// 0.68-0.71 (512), 0.70-0.72 (256), 0.46-0.51 (128, 64); RMSNorm bf16/f16 0.63 -> 0.76-0.77
/// (256). Cached shapes gain too (t1024d768 f32 207 -> 193 us).
inline constexpr int64_t kBackwardChunkColumns = 256;

/// Backward of whole rows [r0, r1) by one thread, kRowGroup rows at a time, software-pipelined
/// in column chunks: dx of group k is written one chunk of columns (all its rows) at a time,
/// each followed by the first pass over the same columns of group k+1, whose x and dy were
/// prefetched into L2 while the chunk of dx was written.
template <class T, bool kGamma, bool kBeta>
NB_AVX512 void backward_rows(const Problem& p, const KernelArgs& a, const RowParams& w, int64_t r0,
                             int64_t r1, ParamPartials& pp, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const int64_t D = w.length, step = kBackwardChunkColumns;
  const bool rms = p.method == Method::rmsnorm;
  auto group = [&](int64_t r) {
    return r < r1 ? static_cast<int>(std::min<int64_t>(kRowGroup, r1 - r)) : 0;
  };
  BackwardSums s[kRowGroup], s_next[kRowGroup];
  if (r0 < r1) {
    row_group_sums<T, kGamma, kBeta>(p, a, w, r0, group(r0), {0, D}, pp, s);
    if (kGamma) pp.rows_done(group(r0));
  }
  for (int64_t r = r0; r < r1;) {
    const int count = group(r);
    const int64_t next = r + count;
    const int count_next = group(next);
    RowBackward b[kRowGroup];
    for (int i = 0; i < count; ++i)
      b[i] = row_backward(a, r + i, s[i], static_cast<double>(D), rms);
    std::fill(s_next, s_next + kRowGroup, BackwardSums{});
    for (int64_t j0 = 0; j0 < D; j0 += step) {
      const int64_t j1 = std::min(D, j0 + step), n = j1 - j0;
      Prefetcher pf;  // these columns of the next group's x and dy, a line of each per line of dx
      if (prefetch && count_next > 0) {
        pf.add(t.x + next * D + j0, count_next, n * sizeof(T), D * sizeof(T));
        pf.add(t.dy + next * D + j0, count_next, n * sizeof(T), D * sizeof(T));
      }
      for (int i = 0; i < count; ++i) {
        const int64_t base = (r + i) * D + j0;
        write_row_dx<T, kGamma>(t.x + base, t.dy + base, t.dx + base, n,
                                kGamma ? w.gamma + j0 : nullptr, b[i], stream, pf);
      }
      if (count_next > 0)
        row_group_sums<T, kGamma, kBeta>(p, a, w, next, count_next, {j0, j1}, pp, s_next);
    }
    if (count_next > 0) {
      if (kGamma) pp.rows_done(count_next);
      std::copy(s_next, s_next + kRowGroup, s);
    }
    r = next;
  }
  end_streaming(stream);
}

template <class T, bool kGamma>
NB_AVX512 void backward_row_part(const KernelArgs& a, const RowParams& w, int64_t r, Range part,
                                 const RowBackward& b, bool stream) {
  const Typed<T> t(a);
  const int64_t base = r * w.length + part.begin;
  Prefetcher none;
  write_row_dx<T, kGamma>(t.x + base, t.dy + base, t.dx + base, part.end - part.begin,
                          kGamma ? w.gamma + part.begin : nullptr, b, stream, none);
  end_streaming(stream);
}

template <class T, bool kGamma, bool kBeta>
void backward(const Problem& p, const KernelArgs& a, const RowParams& w) {
  const int64_t D = w.length;
  const bool rms = p.method == Method::rmsnorm;
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(3 * p.numel() * sizeof(T));
  const bool prefetch = prefetch_next_unit(3 * p.numel() * sizeof(T), 2 * D * sizeof(T), threads);
  std::vector<BackwardSums> partial(threads);
  std::vector<ParamPartials*> partials(threads, nullptr);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    ParamPartials pp(D, kGamma, kBeta);
    partials[t] = &pp;
    const int64_t per_thread = p.n / nt;
    backward_rows<T, kGamma, kBeta>(p, a, w, t * per_thread, (t + 1) * per_thread, pp, stream,
                                    prefetch);
    for (int64_t r = per_thread * nt; r < p.n; ++r) {  // leftover rows: split each
      const Range part = split_range(D, t, nt);
      partial[t] = row_part_sums<T, kGamma, kBeta>(p, a, w, r, part, pp);
#pragma omp barrier
      BackwardSums s;
      for (int i = 0; i < nt; ++i) s.add(partial[i]);
      backward_row_part<T, kGamma>(a, w, r, part,
                                   row_backward(a, r, s, static_cast<double>(D), rms), stream);
#pragma omp barrier
    }
    if (kGamma) {  // merge the partials once, each thread a range of parameters
      pp.fold();
#pragma omp barrier
      const Range mine = split_range(D, t, nt);
      for (int64_t i = mine.begin; i < mine.end; ++i) {
        double g = 0, b = 0;
        for (int j = 0; j < nt; ++j) {
          g += partials[j]->dgamma64[i];
          if (kBeta) b += partials[j]->dbeta64[i];
        }
        a.dgamma[w.param_index(i)] = static_cast<float>(g);
        if (kBeta) a.dbeta[w.param_index(i)] = static_cast<float>(b);
      }
#pragma omp barrier
    }
  }
}

template <class T>
void run_rows(const Problem& p, const KernelArgs& a) {
  const RowParams w(p, a);
  if (p.pass == Pass::bwd) {  // beta is not an input of the backward: dbeta decides
    if (!w.gamma) return backward<T, false, false>(p, a, w);
    if (!a.dbeta) return backward<T, true, false>(p, a, w);
    return backward<T, true, true>(p, a, w);
  }
  if (!w.gamma) return forward<T, 0>(p, a, w);
  if (!w.beta) return forward<T, 1>(p, a, w);
  return forward<T, 2>(p, a, w);
}

}  // namespace

NB_AVX512_ENTRY(layernorm, run_rows)
NB_AVX512_ENTRY(rmsnorm, run_rows)

}  // namespace nb::avx512::NB_AVX512_VARIANT
