// BatchNorm on the avx512 backend: fwd_train, fwd_infer and bwd, NCHW and NHWC, f32/bf16/f16
// (CONVENTIONS section 1: batch statistics per channel over N x H x W, biased variance for y,
// unbiased into running_var; backward in training mode from the saved mean/invstd).
//
// NCHW: the reduction unit is a channel's N x H x W slice (N segments of H*W elements, C*H*W
// apart), read from DRAM once: each thread takes whole channels; a channel's statistics come from
// blocks of 16 KiB (two passes per L1-resident block, Chan merge between blocks), then the slice
// is normalised while it is still in L2/L3 and y leaves with non-temporal stores; the next
// channel's slice is prefetched in step with these three passes, so its DRAM reads overlap both
// this channel's cache-resident statistics and its streaming writes. The backward takes sum(dy)
// and sum(dy * (x - mean)) in one pass over the slice, then writes dx from the cached slice. The
// channels left over when C is not a multiple of the thread count (all of them when C < threads)
// are split between the threads, whose partial moments/sums are merged after a barrier. The
// backward splits every channel that way when a channel's x and dy exceed half the L2
// (split_channels in kernels.hpp), with no software prefetch: each thread's part stays in L2 for
// the dx pass (measured on the Intel hosts, f32 n64c256h64w64: 0.44-0.47 -> 0.55-0.63 of the
// paired non-temporal copy; prefetching the next channel's part beside it, over both passes or
// over the dx pass only, evicted the current part and fell back to 0.47-0.51).
// Inference: y = (x - running_mean) * a + beta with a = gamma / sqrt(running_var + eps), one
// streaming pass split evenly over the threads.
// NHWC, and NCHW with H*W = 1 (the same memory): every row holds every channel, so the unit is the
// whole tensor; threads take row ranges, vectorise along C (channels_last.hpp), merge per-channel
// moments/sums across threads, then write y/dx in a second pass over their rows (x is read twice
// once the tensor exceeds the cache, as the traffic model counts).
//
// Limits: NCHW with 1 < H*W < 16 runs with mostly masked vectors (correct, not fast).
#include <vector>

#include "kernels/avx512/channels_last.hpp"
#include "kernels/avx512/simd.hpp"

namespace nb::avx512::NB_AVX512_VARIANT {
namespace {

/// Per-channel coefficients of y = (x - mean) * scale + shift.
struct ChannelAffine {
  float mean, scale, shift;
};

/// From the batch moments of channel c: the forward coefficients, and with `write` the saved
/// mean/invstd and the running statistics update (momentum; unbiased variance M/(M-1)).
ChannelAffine train_affine(const Problem& p, const KernelArgs& a, int64_t c, const Moments& m,
                           bool write) {
  const double var = m.variance(), invstd = 1.0 / std::sqrt(var + p.eps);
  if (write) {
    a.mean[c] = static_cast<float>(m.mean);
    a.invstd[c] = static_cast<float>(invstd);
    const double mom = p.momentum, count = m.count;
    if (a.running_mean)
      a.running_mean[c] = static_cast<float>((1 - mom) * a.running_mean[c] + mom * m.mean);
    if (a.running_var)
      a.running_var[c] =
          static_cast<float>((1 - mom) * a.running_var[c] + mom * var * count / (count - 1));
  }
  const double gamma = a.gamma ? a.gamma[c] : 1.0;
  return {static_cast<float>(m.mean), static_cast<float>(gamma * invstd),
          a.beta ? a.beta[c] : 0.0f};
}

/// Inference coefficients from the running statistics.
ChannelAffine infer_affine(const Problem& p, const KernelArgs& a, int64_t c) {
  const double gamma = a.gamma ? a.gamma[c] : 1.0;
  return {a.running_mean[c],
          static_cast<float>(gamma / std::sqrt(static_cast<double>(a.running_var[c]) + p.eps)),
          a.beta ? a.beta[c] : 0.0f};
}

/// Backward coefficients of dx = k * dy + (x - mean) * c1 + c0 for one channel, and its dgamma
/// and dbeta: dgamma = invstd * sum(dy * (x - mean)), dbeta = sum(dy).
struct ChannelBackward {
  float mean, k, c1, c0;
};
ChannelBackward backward_coefficients(const KernelArgs& a, int64_t c, const BackwardSums& s,
                                      double count, bool write) {
  const double invstd = a.invstd[c], gamma = a.gamma ? a.gamma[c] : 1.0, k = gamma * invstd;
  if (write && a.dgamma) a.dgamma[c] = static_cast<float>(s.dy_x * invstd);
  if (write && a.dbeta) a.dbeta[c] = static_cast<float>(s.dy);
  return {a.mean[c], static_cast<float>(k),
          static_cast<float>(-k * invstd * invstd * s.dy_x / count),
          static_cast<float>(-k * s.dy / count)};
}

// ---------------------------------------------------------------------------------------------
// NCHW: channel c is the strided unit at x + c*S with N segments of S, C*S apart.

struct Slices {
  int64_t s, stride, length;  ///< H*W, C*H*W, N*H*W
  explicit Slices(const Problem& p)
      : s(p.spatial()), stride(p.c * p.spatial()), length(p.n * p.spatial()) {}
};

template <class T>
NB_AVX512 void write_channel(const T* x, T* y, const Slices& g, int64_t begin, int64_t end,
                             const ChannelAffine& f, bool stream, Prefetcher& pf) {
  for (Pieces pc(g.s, g.stride, begin, end); pc.next();) {
    AffineOp<T> op(x + pc.offset, f.mean, f.scale, f.shift);
    write_span(y + pc.offset, pc.length, stream, op, pf);
  }
}

template <class T>
NB_AVX512 void write_channel_dx(const T* x, const T* dy, T* dx, const Slices& g, int64_t begin,
                                int64_t end, const ChannelBackward& b, bool stream,
                                Prefetcher& pf) {
  for (Pieces pc(g.s, g.stride, begin, end); pc.next();) {
    BackwardOp<T> op(x + pc.offset, dy + pc.offset, b.mean, b.k, b.c1, b.c0);
    write_span(dx + pc.offset, pc.length, stream, op, pf);
  }
}

/// Training forward of whole channels [c0, c1) by one thread: statistics, then y from the cached
/// slice while the next slice is prefetched.
template <class T>
NB_AVX512 void nchw_train_channels(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                   bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  CenterHint hint;  // the previous channel's statistics center this one's first block
  for (int64_t c = c0; c < c1; ++c) {
    Prefetcher pf;  // channel c+1, over the passes of channel c (statistics, then y)
    pf.pace(moment_passes<T>(g.length, hint.valid) + 1);
    if (prefetch && c + 1 < c1)
      pf.add(t.x + (c + 1) * g.s, p.n, g.s * sizeof(T), g.stride * sizeof(T));
    const Moments m = strided_moments(t.x + c * g.s, g.s, g.stride, 0, g.length, pf, hint);
    hint = CenterHint::of(m);
    const ChannelAffine f = train_affine(p, a, c, m, true);
    write_channel(t.x + c * g.s, t.y + c * g.s, g, 0, g.length, f, stream, pf);
  }
  end_streaming(stream);
}

template <class T>
NB_AVX512 Moments nchw_channel_moments(const Problem& p, const KernelArgs& a, int64_t c, Range r) {
  const Slices g(p);
  Prefetcher none;
  return strided_moments(static_cast<const T*>(a.x) + c * g.s, g.s, g.stride, r.begin, r.end, none);
}

template <class T>
NB_AVX512 void nchw_write_channel(const Problem& p, const KernelArgs& a, int64_t c, Range r,
                                  const ChannelAffine& f, bool stream) {
  const Typed<T> t(a);
  const Slices g(p);
  Prefetcher none;
  write_channel(t.x + c * g.s, t.y + c * g.s, g, r.begin, r.end, f, stream, none);
  end_streaming(stream);
}

template <class T>
void nchw_train(const Problem& p, const KernelArgs& a) {
  const int64_t length = p.n * p.spatial();
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const bool prefetch = prefetch_next_unit(length * sizeof(T), threads);
  std::vector<Moments> partial(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = p.c / nt;
    nchw_train_channels<T>(p, a, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    for (int64_t c = per_thread * nt; c < p.c; ++c) {  // leftover channels: split each
      const Range r = split_range(length, t, nt);
      partial[t] = nchw_channel_moments<T>(p, a, c, r);
#pragma omp barrier
      Moments m;
      for (int i = 0; i < nt; ++i) m.merge(partial[i]);
      const ChannelAffine f = train_affine(p, a, c, m, t == 0);
      nchw_write_channel<T>(p, a, c, r, f, stream);
#pragma omp barrier
    }
  }
}

template <class T>
NB_AVX512 void nchw_infer_range(const Problem& p, const KernelArgs& a, Range r,
                                const std::vector<ChannelAffine>& f, bool stream) {
  const Typed<T> t(a);
  const int64_t s = p.spatial();
  Prefetcher none;
  for (Pieces pc(s, s, r.begin, r.end); pc.next();) {
    const ChannelAffine& k = f[(pc.offset / s) % p.c];
    AffineOp<T> op(t.x + pc.offset, k.mean, k.scale, k.shift);
    write_span(t.y + pc.offset, pc.length, stream, op, none);
  }
  end_streaming(stream);
}

template <class T>
void nchw_infer(const Problem& p, const KernelArgs& a) {
  std::vector<ChannelAffine> f(p.c);
  for (int64_t c = 0; c < p.c; ++c) f[c] = infer_affine(p, a, c);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
#pragma omp parallel num_threads(threads)
  nchw_infer_range<T>(p, a, split_range(p.numel(), omp_get_thread_num(), omp_get_num_threads()), f,
                      stream);
}

/// Backward of whole channels [c0, c1) by one thread: the two sums over the slice, dgamma/dbeta,
/// then dx from the cached slice while the next channel's x and dy are prefetched.
template <class T>
NB_AVX512 void nchw_backward_channels(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                      bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t base = c * g.s;
    Prefetcher pf;  // channel c+1, over the 2 passes of channel c
    pf.pace(2);
    if (prefetch && c + 1 < c1) {
      pf.add(t.x + base + g.s, p.n, g.s * sizeof(T), g.stride * sizeof(T));
      pf.add(t.dy + base + g.s, p.n, g.s * sizeof(T), g.stride * sizeof(T));
    }
    const BackwardSums s =
        strided_backward_sums(t.x + base, t.dy + base, g.s, g.stride, 0, g.length, a.mean[c], pf);
    const ChannelBackward b = backward_coefficients(a, c, s, static_cast<double>(g.length), true);
    write_channel_dx(t.x + base, t.dy + base, t.dx + base, g, 0, g.length, b, stream, pf);
  }
  end_streaming(stream);
}

template <class T>
NB_AVX512 BackwardSums nchw_channel_backward_sums(const Problem& p, const KernelArgs& a, int64_t c,
                                                  Range r) {
  const Typed<T> t(a);
  const Slices g(p);
  Prefetcher none;
  return strided_backward_sums(t.x + c * g.s, t.dy + c * g.s, g.s, g.stride, r.begin, r.end,
                               a.mean[c], none);
}

template <class T>
NB_AVX512 void nchw_write_channel_dx(const Problem& p, const KernelArgs& a, int64_t c, Range r,
                                     const ChannelBackward& b, bool stream) {
  const Typed<T> t(a);
  const Slices g(p);
  const int64_t base = c * g.s;
  Prefetcher none;
  write_channel_dx(t.x + base, t.dy + base, t.dx + base, g, r.begin, r.end, b, stream, none);
  end_streaming(stream);
}

template <class T>
void nchw_backward(const Problem& p, const KernelArgs& a) {
  const int64_t length = p.n * p.spatial();
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(3 * p.numel() * sizeof(T));
  const bool prefetch = prefetch_next_unit(2 * length * sizeof(T), threads);
  const bool split = split_channels(2 * length * sizeof(T), p.c, threads);
  std::vector<BackwardSums> partial(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = split ? 0 : p.c / nt;
    nchw_backward_channels<T>(p, a, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    const Range r = split_range(length, t, nt);
    for (int64_t c = per_thread * nt; c < p.c; ++c) {  // leftover (or all) channels: split each
      partial[t] = nchw_channel_backward_sums<T>(p, a, c, r);
#pragma omp barrier
      BackwardSums s;
      for (int i = 0; i < nt; ++i) s.add(partial[i]);
      const ChannelBackward b = backward_coefficients(a, c, s, static_cast<double>(length), t == 0);
      nchw_write_channel_dx<T>(p, a, c, r, b, stream);
#pragma omp barrier
    }
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC (and NCHW with H*W = 1): rows of C channels; the unit is the whole tensor.

template <class T>
NB_AVX512 void nhwc_write_rows(const T* x, T* y, int64_t rows, const ChannelPattern& pat,
                               const WritePatterns& w, bool stream) {
  PatternAffineOp<T> op{x, w.p[0].data(), w.p[1].data(), w.p[2].data(), pat.period};
  Prefetcher none;
  write_span(y, rows * pat.channels, stream, op, none);
  end_streaming(stream);
}

template <class T>
NB_AVX512 void nhwc_write_rows_dx(const T* x, const T* dy, T* dx, int64_t rows,
                                  const ChannelPattern& pat, const WritePatterns& w, bool stream) {
  PatternBackwardOp<T> op{x,         dy, w.p[0].data(), w.p[1].data(), w.p[2].data(), w.p[3].data(),
                          pat.period};
  Prefetcher none;
  write_span(dx, rows * pat.channels, stream, op, none);
  end_streaming(stream);
}

/// Expands the per-channel affine coefficients into patterns and writes y for rows r.
template <class T>
void nhwc_write_affine(const Typed<T>& t, Range r, const ChannelPattern& pat,
                       const std::vector<ChannelAffine>& f, bool stream) {
  const int64_t C = pat.channels;
  std::vector<float> v(C);
  WritePatterns w(pat);
  for (int j = 0; j < 3; ++j) {
    for (int64_t c = 0; c < C; ++c) v[c] = j == 0 ? f[c].mean : j == 1 ? f[c].scale : f[c].shift;
    pat.expand(v.data(), w.p[j].data());
  }
  nhwc_write_rows<T>(t.x + r.begin * C, t.y + r.begin * C, r.end - r.begin, pat, w, stream);
}

template <class T>
void nhwc_train(const Problem& p, const KernelArgs& a) {
  const int64_t C = p.c, rows = p.numel() / C;
  const ChannelPattern pat(C);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const Typed<T> t(a);
  std::vector<ChannelMoments> partial(threads, ChannelMoments(C));
  std::vector<ChannelAffine> f(C);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const Range r = split_range(rows, tid, nt);
    {
      ChannelScratch s(pat);
      Prefetcher none;  // a streaming pass: the hardware prefetcher suffices
      accumulate_channel_moments<T>(t.x + r.begin * C, r.end - r.begin, pat, s, partial[tid], none);
    }
#pragma omp barrier
    const Range cr = split_range(C, tid, nt);
    for (int64_t c = cr.begin; c < cr.end; ++c) {
      Moments m;
      for (int i = 0; i < nt; ++i) m.merge(partial[i].count, partial[i].mean[c], partial[i].m2[c]);
      f[c] = train_affine(p, a, c, m, true);
    }
#pragma omp barrier
    nhwc_write_affine<T>(t, r, pat, f, stream);
  }
}

template <class T>
void nhwc_infer(const Problem& p, const KernelArgs& a) {
  const int64_t C = p.c, rows = p.numel() / C;
  const ChannelPattern pat(C);
  std::vector<ChannelAffine> f(C);
  for (int64_t c = 0; c < C; ++c) f[c] = infer_affine(p, a, c);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const Typed<T> t(a);
#pragma omp parallel num_threads(threads)
  nhwc_write_affine<T>(t, split_range(rows, omp_get_thread_num(), omp_get_num_threads()), pat, f,
                       stream);
}

template <class T>
void nhwc_backward(const Problem& p, const KernelArgs& a) {
  const int64_t C = p.c, rows = p.numel() / C;
  const ChannelPattern pat(C);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(3 * p.numel() * sizeof(T));
  const Typed<T> t(a);
  std::vector<std::vector<double>> sum_dy(threads, std::vector<double>(C)),
      sum_dyx(threads, std::vector<double>(C));
  std::vector<ChannelBackward> b(C);
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const Range r = split_range(rows, tid, nt);
    WritePatterns w(pat);
    pat.expand(a.mean, w.p[0].data());
    {
      ChannelScratch s(pat);
      Prefetcher none;
      accumulate_channel_backward<T>(t.x + r.begin * C, t.dy + r.begin * C, r.end - r.begin,
                                     w.p[0].data(), pat, s, sum_dy[tid].data(), sum_dyx[tid].data(),
                                     none);
    }
#pragma omp barrier
    const Range cr = split_range(C, tid, nt);
    for (int64_t c = cr.begin; c < cr.end; ++c) {
      BackwardSums s;
      for (int i = 0; i < nt; ++i) s.add({sum_dy[i][c], sum_dyx[i][c]});
      b[c] = backward_coefficients(a, c, s, static_cast<double>(rows), true);
    }
#pragma omp barrier
    std::vector<float> v(C);
    for (int j = 1; j < 4; ++j) {
      for (int64_t c = 0; c < C; ++c) v[c] = j == 1 ? b[c].k : j == 2 ? b[c].c1 : b[c].c0;
      pat.expand(v.data(), w.p[j].data());
    }
    nhwc_write_rows_dx<T>(t.x + r.begin * C, t.dy + r.begin * C, t.dx + r.begin * C,
                          r.end - r.begin, pat, w, stream);
  }
}

template <class T>
void run_batchnorm(const Problem& p, const KernelArgs& a) {
  const bool rows = p.layout == Layout::nhwc || p.spatial() == 1;
  switch (p.pass) {
    case Pass::fwd_train:
      return rows ? nhwc_train<T>(p, a) : nchw_train<T>(p, a);
    case Pass::fwd_infer:
      return rows ? nhwc_infer<T>(p, a) : nchw_infer<T>(p, a);
    case Pass::bwd:
      return rows ? nhwc_backward<T>(p, a) : nchw_backward<T>(p, a);
  }
}

}  // namespace

NB_AVX512_ENTRY(batchnorm, run_batchnorm)

}  // namespace nb::avx512::NB_AVX512_VARIANT
