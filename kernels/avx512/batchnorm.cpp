// BatchNorm on the avx512 backend: fwd_train, fwd_infer and bwd, NCHW and NHWC, f32/bf16/f16
// (CONVENTIONS section 1: batch statistics per channel over N x H x W, biased variance for y,
// unbiased into running_var; backward in training mode from the saved mean/invstd).
//
// NCHW: the reduction unit is a channel's N x H x W slice (N segments of H*W elements, C*H*W
// apart), read from DRAM once. A channel's statistics come from blocks of 16 KiB (two passes per
// L1-resident block, Chan merge between blocks); the backward takes sum(dy) and
// sum(dy * (x - mean)) in one pass. Channels are software-pipelined: y (dx) of channel c is
// written with non-temporal stores one 16 KiB chunk at a time from the L2-resident slice, and
// after each chunk the same chunk of channel c+1, prefetched into L2 while that chunk was written,
// is reduced; so the DRAM reads of c+1 overlap the streaming writes of c (tensors that fit the
// cache take a channel at a time: pipeline_units in kernels.hpp). Each thread takes whole
// channels, or, when a channel's x (and dy) fill half the L2 or more, every channel is split
// between the threads with one barrier per channel to merge the parts' moments/sums
// (split_channels in kernels.hpp, with the measurements that chose the rule). Measured on the
// Intel hosts (2 threads, n64c256h64w64, interleaved with the previous code, fraction of the
// paired non-temporal copy): forward f32 0.56 -> 0.72-0.77, bf16 0.65-0.68 -> 0.72-0.75, f16
// 0.67-0.69 -> 0.72-0.73; backward bf16 0.44-0.49 -> 0.62-0.64 (f32 0.58 either way: it was
// split before). The previous code prefetched the whole next slice over the passes of the current
// one, so two slices competed for L2. The channels left over when C is not a multiple of the
// thread count (all of them when C < threads) are split between the threads, whose partial
// moments/sums are merged after a barrier. Planes whose bytes are not a multiple of 64 share a
// line with the next channel's plane; a thread carries those lines from one of its channels to
// the next and writes them whole (PlaneCarry; 2 threads, interleaved: n192c1024h14w14 training
// forward f32 14.1-14.2 -> 8.9-9.4 ms, 0.48-0.51 -> 0.71-0.76 of the paired non-temporal copy,
// bf16, whose 392-byte planes were too short for streaming stores, 20.5-21.0 -> 7.1-7.2 ms;
// backward f32 23.6-25.8 -> 20.3-22.2 ms; n384c1024h7w7 f32 training forward 29.6-29.8 ->
// 11.6-11.8 ms).
// Planes of at most 512 bytes (7 x 7, and 14 x 14 in 16-bit types), taken channel by channel,
// are read as one short piece per sample (196 bytes for 7 x 7 f32, 200 KiB apart at C = 1024),
// which DRAM serves at about half the rate of runs of a few KiB; there each thread takes its
// channels in blocks of consecutive channels (channel_block: runs of up to 2 KiB per sample): each
// channel's statistics from the L2-resident block (the backward's two sums for the whole block in
// one sample-major sweep, block_backward_sums), y/dx one run per sample written as one span across
// the block's planes, the next block prefetched meanwhile. 2 threads, interleaved with the previous
// code, fraction of the paired non-temporal copy: ResNet-50's n50c2048h7w7 training forward f32
// 0.62 -> 0.86 (1.34-1.40 -> 0.97-0.99 ms), bf16 0.23 -> 0.64-0.65; backward f32 0.62-0.63 ->
// 0.87-0.88, bf16 0.31-0.32 -> 0.74-0.75; n384c1024h7w7 f32 training forward 10.9-11.5 -> 4.9-5.0
// ms (0.30 -> 0.67-0.68), backward 18.3-18.8 -> 13.2-13.3 ms (0.27 -> 0.37); n192c1024h14w14 bf16
// training forward 0.57-0.58 -> 0.64-0.68, backward 0.44-0.45 -> 0.46-0.51. Pieces that short also
// take accumulate_short_deviations (simd.hpp) for the statistics, which carries its accumulators
// from piece to piece (n384c1024h7w7 training forward 6.0-6.3 -> 5.2-5.5 ms in one A/B run).
// Inference: y = (x - running_mean) * a + beta with a = gamma / sqrt(running_var + eps), one
// streaming pass split evenly over the threads, each range written as one span across its (n, c)
// planes (SegmentedAffineOp) when H*W >= 16, so that a line shared by two planes is not completed
// by two masked ordinary stores that each read it from DRAM first (2 threads, interleaved:
// n192c1024h14w14 f32 10.3-10.8 -> 6.3-6.6 ms, 0.64-0.66 -> 1.04 of the paired non-temporal
// copy; bf16 5.1-5.3 -> 3.4-3.5 ms; n384c1024h7w7 f32, whose 196-byte planes were too short for
// streaming stores, 6.0 -> 3.1 ms; n64c256h64w64 unchanged).
// NHWC, and NCHW with H*W = 1 (the same memory): every row holds every channel, so the unit is the
// whole tensor; threads take row ranges, vectorise along C (channels_last.hpp), merge per-channel
// moments/sums across threads, then write y/dx in a second pass over their rows (x is read twice
// once the tensor exceeds the cache, as the traffic model counts).
//
// Limits: NCHW with 1 < H*W < 16 runs with mostly masked vectors (correct, not fast). The
// backward on small planes with power-of-two C: n192c1024h14w14 f32 0.43-0.62 of the paired copy
// against 0.75 at C = 1000, n384c1024h7w7 0.37 against 0.47-0.53. The L2's set index repeats
// every 128 KiB, and a channel's planes then lie 16 KiB (14 x 14) or 4 KiB (7 x 7) multiples
// apart modulo 128 KiB: 14 x 14 planes fall on 104 of the 2048 sets, 24 lines of x and 24 of dy
// per 16-way set (7 x 7: 12 and 12), so the slice does not stay in L2 between the two passes and
// is read again from the last-level cache (README, CPU results).
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
[[gnu::always_inline]] inline ChannelAffine train_affine(const Problem& p, const KernelArgs& a,
                                                         int64_t c, const Moments& m, bool write) {
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

/// The partial lines that one thread's consecutive channels share, for the pipelined NCHW loops:
/// plane (n, c) ends inside the line where plane (n, c+1) starts when H*W*sizeof(T) (or the
/// output's address) is not a multiple of 64 bytes. Written as they come, channel c's tail and
/// channel c+1's head complete each such line with masked ordinary stores, each first reading the
/// line from DRAM while later stores wait. Instead, channel c's tails go to lines[n] and channel
/// c+1's heads complete them there, to be written whole with non-temporal stores
/// (write_span_carried). The thread's first channel writes its heads, and its last channel its
/// tails, with ordinary stores (the neighbouring channels are another thread's). Only with
/// streaming stores, whole channels per thread (not split), whole planes per pipeline chunk and
/// planes of at least 128 bytes; else `lines` is null.
struct PlaneCarry {
  AlignedArray<unsigned char> storage;
  unsigned char* lines = nullptr;
  template <class T>
  PlaneCarry(const Slices& g, const T* out, bool stream, bool split)
      : storage(g.length / g.s * 64) {
    const int64_t bytes = g.s * static_cast<int64_t>(sizeof(T));
    const bool partial = ((reinterpret_cast<std::uintptr_t>(out) | bytes) & 63) != 0;
    if (stream && !split && partial && bytes >= 128 && g.s <= kPipelineChunk<T>)
      lines = storage.data();
  }
  /// The carried ends of plane n of channel c of [c0, c1): its head completes the line the
  /// previous channel's plane left (not for c0), its tail starts the next one's (not for c1 - 1).
  CarriedEnds ends(int64_t n, int64_t c, int64_t c0, int64_t c1) const {
    if (!lines) return {};
    return {c > c0 ? lines + 64 * n : nullptr, c + 1 < c1 ? lines + 64 * n : nullptr, true};
  }
};

/// Channel c of [c0, c1) and the carry of the calling loop (none: write every plane alone).
struct ChannelCarry {
  const PlaneCarry* carry = nullptr;
  int64_t c = 0, c0 = 0, c1 = 0;
  CarriedEnds ends(int64_t n) const { return carry ? carry->ends(n, c, c0, c1) : CarriedEnds{}; }
};

template <class T>
NB_AVX512 void write_channel(const T* x, T* y, const Slices& g, int64_t begin, int64_t end,
                             const ChannelAffine& f, bool stream, Prefetcher& pf,
                             const ChannelCarry& cc = {}) {
  for (Pieces pc(g.s, g.stride, begin, end); pc.next();) {
    AffineOp<T> op(x + pc.offset, f.mean, f.scale, f.shift);
    write_span_or_carried(y + pc.offset, pc.length, stream, op, pf, cc.ends(pc.segment));
  }
}

template <class T>
NB_AVX512 void write_channel_dx(const T* x, const T* dy, T* dx, const Slices& g, int64_t begin,
                                int64_t end, const ChannelBackward& b, bool stream, Prefetcher& pf,
                                const ChannelCarry& cc = {}) {
  for (Pieces pc(g.s, g.stride, begin, end); pc.next();) {
    BackwardOp<T> op(x + pc.offset, dy + pc.offset, b.mean, b.k, b.c1, b.c0);
    write_span_or_carried(dx + pc.offset, pc.length, stream, op, pf, cc.ends(pc.segment));
  }
}

/// The reduction of channel c over all threads' parts of it, for the split pipelines: this
/// thread's `mine` goes to partial[c % 2][me], one barrier, then every thread combines all parts
/// (combine(total, part)). Double-buffered by channel parity, so a thread may store channel c+1's
/// part while another still reads channel c's. Without `split`, returns `mine`.
template <class S, class Combine>
S merged_parts(std::vector<S> (&partial)[2], int64_t c, bool split, const S& mine,
               Combine combine) {
  if (!split) return mine;
  partial[c % 2][omp_get_thread_num()] = mine;
#pragma omp barrier
  S total;
  for (int i = 0; i < omp_get_num_threads(); ++i) combine(total, partial[c % 2][i]);
  return total;
}

/// Training forward of whole channels [c0, c1) by one thread, software-pipelined across channels:
/// y of channel c is written one chunk (UnitChunks, kPipelineChunk) at a time, each followed by the
/// moments of the same chunk of channel c+1, whose lines were prefetched into L2 while the chunk of
/// y was written; the chunk moments are merged with Chan's update. So the DRAM reads of c+1
/// overlap the streaming writes of c, its statistics read L2, and in L2 only about one slice lives
/// at a time (each written chunk of c dies as a chunk of c+1 arrives).
template <class T>
NB_AVX512 void nchw_train_channels(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                   Range r, bool split, std::vector<Moments> (&partial)[2],
                                   bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  const UnitChunks chunks(g.s, kPipelineChunk<T>);
  const int me = split ? omp_get_thread_num() : 0;
  Prefetcher none;
  // The moments of channel c (this thread's part merged with the others' when split).
  auto merged = [&](int64_t c, const Moments& mine) {
    return merged_parts(partial, c, split, mine,
                        [](Moments& total, const Moments& part) { total.merge(part); });
  };
  const PlaneCarry carry(g, t.y, stream, split);
  Moments m;
  if (c0 < c1) m = merged(c0, strided_moments(t.x + c0 * g.s, g.s, g.stride, r.begin, r.end, none));
  for (int64_t c = c0; c < c1; ++c) {
    const ChannelAffine f = train_affine(p, a, c, m, me == 0);
    const CenterHint hint = CenterHint::of(m);  // centers channel c+1's first chunk
    const bool more = c + 1 < c1;
    const T* x_next = t.x + (c + 1) * g.s;
    Moments next;
    for (int64_t b = r.begin, e; b < r.end; b = e) {
      e = chunks.end(b, r.end);
      Prefetcher pf;  // the same chunk of channel c+1, a line per line of y
      if (prefetch && more) chunks.prefetch(pf, x_next, b, e, g.stride);
      write_channel(t.x + c * g.s, t.y + c * g.s, g, b, e, f, stream, pf, {&carry, c, c0, c1});
      if (more)
        next.merge(strided_moments(x_next, g.s, g.stride, b, e, none,
                                   next.count > 0 ? CenterHint::of(next) : hint));
    }
    if (more) m = merged(c + 1, next);
  }
  end_streaming(stream);
}

/// Training forward of whole channels [c0, c1) by one thread when the tensor fits the cache (no
/// streaming stores; pipeline_units): a channel's moments, then its y; with `prefetch` (only if
/// the tensor comes from DRAM, prefetch_next_unit) the next channel is prefetched in step with
/// both passes.
template <class T>
NB_AVX512 void nchw_train_channels_cached(const Problem& p, const KernelArgs& a, int64_t c0,
                                          int64_t c1, bool prefetch) {
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
    write_channel(t.x + c * g.s, t.y + c * g.s, g, 0, g.length, train_affine(p, a, c, m, true),
                  false, pf);
  }
}

/// Channels per block for the NCHW training passes on small planes (nchw_train_blocks,
/// nchw_backward_blocks), or 1 (channel by channel): for planes of at most kBlockPlaneBytes, as
/// many consecutive channels as make a run of at most kBlockRunBytes per sample, so that the DRAM
/// reads and prefetches of a unit are runs of 1-2 KiB instead of single planes, and a block's
/// slice of x (slice_bytes per channel) at most kBlockSliceBytes so that it and the next block's
/// (with dy, for the backward) stay in L2. Measured on the Intel hosts (2 threads): reading an
/// n384c1024h7w7 f32 tensor in block order (196-byte planes 200 KiB apart) moves 15-23 GB/s a
/// channel at a time, 26-43 GB/s 8 channels at a time, 36-48 GB/s in order. Training forward,
/// interleaved runs: n384c1024h7w7 f32 k = 6 (the rule) 4.4-4.7 ms, k = 3 5.0, k = 13 5.7-6.1;
/// n192c1024h14w14 bf16 (392-byte planes) k = 5 4.7-5.0 ms, k = 1 5.4-5.6; f32 (784-byte planes)
/// k = 1 8.2-8.9 ms, k = 2 8.8, k = 3 9.0-9.3, hence kBlockPlaneBytes.
inline constexpr int64_t kBlockPlaneBytes = 512;
inline constexpr int64_t kBlockRunBytes = 2048;
inline constexpr int64_t kBlockSliceBytes = 512 << 10;
inline int64_t channel_block(int64_t plane_bytes, int64_t slice_bytes, int64_t channels) {
  if (plane_bytes <= 0 || plane_bytes > kBlockPlaneBytes || slice_bytes <= 0) return 1;
  return std::max<int64_t>(
      1, std::min({kBlockRunBytes / plane_bytes, kBlockSliceBytes / slice_bytes, channels,
                   kMaxBlockChannels}));
}

/// A block of k consecutive channels [cb, cb + k) as one strided unit: N runs of k * H*W
/// elements, C*H*W apart (the layout of one channel with planes k times larger).
inline Slices block_slices(Slices g, int64_t k) {
  g.length = g.length / g.s * g.s * k;
  g.s *= k;
  return g;
}

/// The blocks of k channels of a thread's channels [c0, c1): block b holds channels
/// [first, first + size) (the last one may be smaller); `next` channels follow it in the range.
struct ChannelBlocks {
  int64_t c0, c1, k, count;
  ChannelBlocks(int64_t c0_, int64_t c1_, int64_t k_)
      : c0(c0_), c1(c1_), k(k_), count((c1_ - c0_ + k_ - 1) / k_) {}
  struct Block {
    int64_t first, size, next;
  };
  Block operator[](int64_t b) const {
    const int64_t first = c0 + b * k, size = std::min(k, c1 - first);
    return {first, size, std::min(k, c1 - first - size)};
  }
};

/// Training forward of whole channels [c0, c1) by one thread in blocks of k channels
/// (channel_block), for planes too small to read well one channel at a time: each channel's
/// moments over its N planes (from L2: the block was prefetched while the previous one was
/// processed), then y of the block one run of k planes per sample, each run one span across its
/// k channels (SegmentedAffineOp), the next block prefetched in step with both passes; the lines
/// shared by two blocks' runs are carried (PlaneCarry).
template <class T>
NB_AVX512 void nchw_train_blocks(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                 int64_t k, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  const PlaneCarry carry(block_slices(g, k), t.y, stream, false);
  std::vector<SegmentAffine> f(k);
  CenterHint hint;  // the previous channel's statistics center this one's first block
  const ChannelBlocks blocks(c0, c1, k);
  for (int64_t b = 0; b < blocks.count; ++b) {
    const auto [cb, kk, next] = blocks[b];
    Prefetcher pf;  // the next block, over this block's passes (moments, then y)
    pf.pace(2);
    if (prefetch && next > 0)
      pf.add(t.x + (cb + kk) * g.s, p.n, next * g.s * sizeof(T), g.stride * sizeof(T));
    for (int64_t j = 0; j < kk; ++j) {
      const Moments m = strided_moments(t.x + (cb + j) * g.s, g.s, g.stride, 0, g.length, pf, hint);
      hint = CenterHint::of(m);
      const ChannelAffine ca = train_affine(p, a, cb + j, m, true);
      f[j] = {ca.mean, ca.scale, ca.shift};
    }
    const SegmentAffine* fb = f.data();
    const auto params = [fb](int64_t j) { return fb[j]; };
    for (int64_t n = 0; n < p.n; ++n) {
      const int64_t o = n * g.stride + cb * g.s;
      SegmentedAffineOp<T, decltype(params)> op(t.x + o, params, g.s, 0, kk);
      write_span_or_carried(t.y + o, kk * g.s, stream, op, pf, carry.ends(n, b, 0, blocks.count));
    }
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
  const bool prefetch = prefetch_next_unit(2 * p.numel() * sizeof(T), length * sizeof(T), threads);
  const bool split = split_channels(length * sizeof(T), p.c, threads);
  std::vector<Moments> partial[2] = {std::vector<Moments>(threads), std::vector<Moments>(threads)};
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (split) {
      nchw_train_channels<T>(p, a, 0, p.c, split_range(length, t, nt), true, partial, stream,
                             prefetch);
    } else {
      const int64_t per_thread = p.c / nt;
      const int64_t k = channel_block(p.spatial() * sizeof(T), length * sizeof(T), per_thread);
      if (pipeline_units(stream) && k > 1 && p.spatial() >= 16)
        nchw_train_blocks<T>(p, a, t * per_thread, (t + 1) * per_thread, k, stream, prefetch);
      else if (pipeline_units(stream))
        nchw_train_channels<T>(p, a, t * per_thread, (t + 1) * per_thread, {0, length}, false,
                               partial, stream, prefetch);
      else
        nchw_train_channels_cached<T>(p, a, t * per_thread, (t + 1) * per_thread, prefetch);
      const Range r = split_range(length, t, nt);
      for (int64_t c = per_thread * nt; c < p.c; ++c) {  // leftover channels: split each
        partial[0][t] = nchw_channel_moments<T>(p, a, c, r);
#pragma omp barrier
        Moments m;
        for (int i = 0; i < nt; ++i) m.merge(partial[0][i]);
        const ChannelAffine f = train_affine(p, a, c, m, t == 0);
        nchw_write_channel<T>(p, a, c, r, f, stream);
#pragma omp barrier
      }
    }
  }
}

template <class T>
NB_AVX512 void nchw_infer_range(const Problem& p, const KernelArgs& a, Range r,
                                const std::vector<ChannelAffine>& f, bool stream) {
  const Typed<T> t(a);
  const int64_t s = p.spatial();
  Prefetcher none;
  if (s >= 16) {  // one span across the (n, c) planes (SegmentCursor in simd.hpp)
    const ChannelAffine* fc = f.data();
    const int64_t channels = p.c;
    const auto params = [fc, channels](int64_t plane) {
      const ChannelAffine& k = fc[plane % channels];
      return SegmentAffine{k.mean, k.scale, k.shift};
    };
    SegmentedAffineOp<T, decltype(params)> op(t.x + r.begin, params, s, r.begin, p.numel() / s);
    write_span(t.y + r.begin, r.end - r.begin, stream, op, none);
    return end_streaming(stream);
  }
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

/// Backward of channels [c0, c1), elements r of each, pipelined like nchw_train_channels: dx of
/// channel c is written one chunk at a time, each followed by the sums of the same chunk of
/// channel c+1, whose x and dy were prefetched into L2 while the chunk of dx was written. With
/// `split` every thread runs this on its part r of the same channels; the parts' sums are merged
/// through partial[c % 2][thread] after one barrier per channel (double-buffered: a thread may
/// write channel c+1's partials while another still reads channel c's), and thread 0 writes
/// dgamma/dbeta. Without, r is the whole channel and the thread owns the channels.
template <class T>
NB_AVX512 void nchw_backward_channels(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                      Range r, bool split, std::vector<BackwardSums> (&partial)[2],
                                      bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  const UnitChunks chunks(g.s, kPipelineChunk<T>);
  const int me = split ? omp_get_thread_num() : 0;
  Prefetcher none;
  // The sums of channel c (this thread's part added to the others' when split).
  auto merged = [&](int64_t c, const BackwardSums& mine) {
    return merged_parts(partial, c, split, mine,
                        [](BackwardSums& total, const BackwardSums& part) { total.add(part); });
  };
  const PlaneCarry carry(g, t.dx, stream, split);
  BackwardSums sums;
  if (c0 < c1)
    sums = merged(c0, strided_backward_sums(t.x + c0 * g.s, t.dy + c0 * g.s, g.s, g.stride, r.begin,
                                            r.end, a.mean[c0], none));
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t base = c * g.s, next_base = base + g.s;
    const ChannelBackward b =
        backward_coefficients(a, c, sums, static_cast<double>(g.length), me == 0);
    const bool more = c + 1 < c1;
    BackwardSums next;
    for (int64_t i = r.begin, e; i < r.end; i = e) {
      e = chunks.end(i, r.end);
      Prefetcher pf;  // x and dy of the same chunk of channel c+1, a line of each per line of dx
      if (prefetch && more) {
        chunks.prefetch(pf, t.x + next_base, i, e, g.stride);
        chunks.prefetch(pf, t.dy + next_base, i, e, g.stride);
      }
      write_channel_dx(t.x + base, t.dy + base, t.dx + base, g, i, e, b, stream, pf,
                       {&carry, c, c0, c1});
      if (more)
        next.add(strided_backward_sums(t.x + next_base, t.dy + next_base, g.s, g.stride, i, e,
                                       a.mean[c + 1], none));
    }
    if (more) sums = merged(c + 1, next);
  }
  end_streaming(stream);
}

/// Backward of whole channels [c0, c1) by one thread when the tensors fit the cache (no streaming
/// stores; pipeline_units): a channel's two sums, dgamma/dbeta, then its dx; with `prefetch` the
/// next channel's x and dy are prefetched in step with both passes.
template <class T>
NB_AVX512 void nchw_backward_channels_cached(const Problem& p, const KernelArgs& a, int64_t c0,
                                             int64_t c1, bool prefetch) {
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
    write_channel_dx(t.x + base, t.dy + base, t.dx + base, g, 0, g.length, b, false, pf);
  }
}

/// Backward of whole channels [c0, c1) by one thread in blocks of k channels (channel_block),
/// as nchw_train_blocks: each channel's two sums and dgamma/dbeta, then dx of the block one run
/// of k planes per sample, one span across its channels (SegmentedChannelsBackwardOp), the next
/// block's x and dy prefetched in step with both passes, the lines shared by two blocks' runs
/// carried.
template <class T>
NB_AVX512 void nchw_backward_blocks(const Problem& p, const KernelArgs& a, int64_t c0, int64_t c1,
                                    int64_t k, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Slices g(p);
  const PlaneCarry carry(block_slices(g, k), t.dx, stream, false);
  std::vector<SegmentBackward> f(k);
  const ChannelBlocks blocks(c0, c1, k);
  for (int64_t b = 0; b < blocks.count; ++b) {
    const auto [cb, kk, next] = blocks[b];
    Prefetcher pf;  // the next block's x and dy, over this block's passes (sums, then dx)
    pf.pace(2);
    if (prefetch && next > 0) {
      const int64_t run = next * g.s * sizeof(T), stride = g.stride * sizeof(T);
      pf.add(t.x + (cb + kk) * g.s, p.n, run, stride);
      pf.add(t.dy + (cb + kk) * g.s, p.n, run, stride);
    }
    BackwardSums sums[kMaxBlockChannels];
    block_backward_sums(t.x + cb * g.s, t.dy + cb * g.s, g.s, g.stride, p.n, kk, a.mean + cb, sums,
                        pf);
    for (int64_t j = 0; j < kk; ++j) {
      const ChannelBackward cbw =
          backward_coefficients(a, cb + j, sums[j], static_cast<double>(g.length), true);
      f[j] = {cbw.mean, cbw.k, cbw.c1, cbw.c0};
    }
    const SegmentBackward* fb = f.data();
    const auto params = [fb](int64_t j) { return fb[j]; };
    for (int64_t n = 0; n < p.n; ++n) {
      const int64_t o = n * g.stride + cb * g.s;
      SegmentedChannelsBackwardOp<T, decltype(params)> op(t.x + o, t.dy + o, params, g.s, 0, kk);
      write_span_or_carried(t.dx + o, kk * g.s, stream, op, pf, carry.ends(n, b, 0, blocks.count));
    }
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
  const bool prefetch =
      prefetch_next_unit(3 * p.numel() * sizeof(T), 2 * length * sizeof(T), threads);
  const bool split = split_channels(2 * length * sizeof(T), p.c, threads);
  std::vector<BackwardSums> partial[2] = {std::vector<BackwardSums>(threads),
                                          std::vector<BackwardSums>(threads)};
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (split) {
      nchw_backward_channels<T>(p, a, 0, p.c, split_range(length, t, nt), true, partial, stream,
                                prefetch);
    } else {
      const int64_t per_thread = p.c / nt;
      const int64_t k = channel_block(p.spatial() * sizeof(T), length * sizeof(T), per_thread);
      if (pipeline_units(stream) && k > 1 && p.spatial() >= 16)
        nchw_backward_blocks<T>(p, a, t * per_thread, (t + 1) * per_thread, k, stream, prefetch);
      else if (pipeline_units(stream))
        nchw_backward_channels<T>(p, a, t * per_thread, (t + 1) * per_thread, {0, length}, false,
                                  partial, stream, prefetch);
      else
        nchw_backward_channels_cached<T>(p, a, t * per_thread, (t + 1) * per_thread, prefetch);
      const Range r = split_range(length, t, nt);
      for (int64_t c = per_thread * nt; c < p.c; ++c) {  // leftover channels: split each
        partial[0][t] = nchw_channel_backward_sums<T>(p, a, c, r);
#pragma omp barrier
        BackwardSums s;
        for (int i = 0; i < nt; ++i) s.add(partial[0][i]);
        const ChannelBackward b =
            backward_coefficients(a, c, s, static_cast<double>(length), t == 0);
        nchw_write_channel_dx<T>(p, a, c, r, b, stream);
#pragma omp barrier
      }
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
      Prefetcher ahead =
          rows_ahead<T>(t.x + r.begin * C, nullptr, r.end - r.begin, rows_per_block<T>(pat), pat,
                        p.numel() * sizeof(T) > streaming_cache_bytes());
      accumulate_channel_moments<T>(t.x + r.begin * C, r.end - r.begin, pat, s, partial[tid],
                                    ahead);
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
      Prefetcher none;  // sequential rows: the hardware prefetcher serves them (see rows_ahead)
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
