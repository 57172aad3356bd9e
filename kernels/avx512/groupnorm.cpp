// GroupNorm and InstanceNorm on the avx512 backend: fwd_train, fwd_infer and bwd, NCHW and NHWC,
// f32/bf16/f16 (CONVENTIONS section 1: statistics per (n, g) over C/G channels x H x W, per-channel
// gamma/beta; InstanceNorm is GroupNorm with G = C; fwd_infer = training y without saved stats).
//
// NCHW: the unit (n, g) is one contiguous span of (C/G)*H*W elements. Each thread takes whole
// units: statistics in 16 KiB blocks (two passes per L1-resident block, Chan merge), then y is
// written from the cached span, as one span across the unit's channels with per-channel scalars
// (SegmentedAffineOp, SegmentedBackwardOp in simd.hpp) when H*W >= 16: written channel by
// channel, a line shared by two channels was completed by two masked ordinary stores, each
// reading the line from DRAM first (f32 n192c1024h14w14g32, 2 threads, interleaved runs:
// training forward 12.2-12.8 -> 7.3-7.5 ms, 0.57-0.60 -> 0.93-0.99 of the paired non-temporal
// copy; backward 19.0 -> 14.4-15.4 ms, 0.53-0.56 -> 0.73-0.75). Consecutive units of a thread
// that share a line (a unit's bytes not a multiple of 64) carry it from one unit to the next
// (UnitCarry: InstanceNorm f32 n192c1024h14w14, training forward 17.0-17.4 -> 12.3-13.0 ms,
// 0.40-0.43 -> 0.55-0.59; backward 21.5-22.4 -> 16.1-16.2 ms, 0.47 -> 0.63-0.64). Beyond the cache
// (non-temporal stores) units are software-pipelined: y of unit u in 16 KiB chunks, each followed
// by the statistics of the same chunk of unit u+1, prefetched meanwhile (f32 n32c512h64w64g32, 2
// threads: 0.74-0.79 -> 0.90-0.93 of the paired non-temporal copy); a cached tensor takes a unit at
// a time (pipeline_units in kernels.hpp). The backward takes per-channel sum(dy) and sum(dy*(x -
// mean)) in one pass over the span (they give dgamma/dbeta and the group's two coefficients), then
// writes dx from the cache; beyond the cache software-pipelined the same way: dx of unit u in 16
// KiB chunks, each followed by the sums of the same chunk of unit u+1, prefetched meanwhile (f32
// n32c512h64w64g32, 2 threads: 0.56-0.58 -> 0.67 of the paired non-temporal copy with 128 KiB
// chunks, 0.67-0.68 -> 0.74-0.77 with 16 KiB ones, kPipelineChunk). Units under 4 KiB
// (InstanceNorm's 7 x 7 and 14 x 14 planes) go 16 at a time instead (nchw_forward_small_units,
// nchw_backward_small_units): the batch's statistics, then its y/dx, the units 16 KiB ahead
// prefetched meanwhile; unit by unit, each small unit's statistics and the write that waits for
// them formed one dependent chain per unit, and the prefetch of unit u+1 was read right after
// being issued (InstanceNorm, 2 threads, interleaved, fraction of the paired non-temporal copy:
// n192c1024h14w14 f32 training forward 0.56-0.57 -> 0.75, backward 0.62-0.64 -> 0.82, fwd_infer
// 0.59-0.62 -> 0.80, bf16 training forward 0.35-0.36 -> 0.57, backward 0.44-0.46 -> 0.64-0.70;
// n384c1024h7w7 f32 training forward 0.22-0.25 -> 0.43-0.44, backward 0.34-0.36 -> 0.55-0.56).
// NHWC: the unit is a sample's (H*W, C) block; vectorised along C with per-channel patterns
// (channels_last.hpp): per-channel moments (blocked two-pass + Chan), merged per group with Chan,
// then y; samples are pipelined the same way (y of sample n block by block, each block followed by
// the statistics of the same rows of sample n+1; the backward likewise), the blocks in snake order
// so that a write pass starts on the rows still in L2. A sample larger than the L2 (8 MiB in f32 at
// n32c512h64w64) is still read twice by the core, once from DRAM and once from the last-level cache
// for the write pass. Units left over when N*G (NCHW) or N (NHWC) is not a multiple of the thread
// count are split between the threads and their partials merged after a barrier. dgamma/dbeta:
// per-thread partials in double, merged once.
//
// Limits: NCHW with 1 < H*W < 16 runs with mostly masked vectors, one reduction per channel per
// unit (correct, not fast); H*W = 1 takes the NHWC path (the same memory).
#include <vector>

#include "kernels/avx512/channels_last.hpp"
#include "kernels/avx512/simd.hpp"

namespace nb::avx512::NB_AVX512_VARIANT {
namespace {

struct Groups {
  int64_t n, c, g, cg, s, length;  ///< N, C, groups, channels per group, H*W, (C/G)*H*W
  explicit Groups(const Problem& p)
      : n(p.n),
        c(p.c),
        g(p.effective_groups()),
        cg(p.c / p.effective_groups()),
        s(p.spatial()),
        length(p.c / p.effective_groups() * p.spatial()) {}
};

struct GroupStats {
  float mean, invstd;
};

/// Statistics of unit u = n*G + g (the saved-statistics index for both GroupNorm (N, G) and
/// InstanceNorm (N, C)); with `write`, saves them when the pass has mean/invstd.
GroupStats group_stats(const Problem& p, const KernelArgs& a, int64_t u, const Moments& m,
                       bool write) {
  const double invstd = 1.0 / std::sqrt(m.variance() + p.eps);
  if (write && a.mean) a.mean[u] = static_cast<float>(m.mean);
  if (write && a.invstd) a.invstd[u] = static_cast<float>(invstd);
  return {static_cast<float>(m.mean), static_cast<float>(invstd)};
}

/// Per-thread partial dgamma/dbeta (double, C each).
struct ParamPartials {
  std::vector<double> dgamma, dbeta;
  explicit ParamPartials(int64_t c = 0) : dgamma(c), dbeta(c) {}
};

/// The coefficients of dx = invstd*gamma_c*dy + (x - mean)*c1 + c0 for one unit, from its
/// channels' sums (sum_dy[k], sum_dyx[k] for channel c = g*cg + k): with g' = gamma*dy,
/// c0 = -invstd * mean(g'), c1 = -invstd^3 * mean(g' * (x - mean)). With `accumulate`, adds the
/// channels' dgamma += invstd*sum_dyx and dbeta += sum_dy to pp.
struct GroupBackward {
  float c1, c0;
};
GroupBackward group_backward(const KernelArgs& a, const Groups& gr, int64_t g, double invstd,
                             const double* sum_dy, const double* sum_dyx, ParamPartials& pp,
                             bool accumulate) {
  double sg = 0, sgx = 0;
  for (int64_t k = 0; k < gr.cg; ++k) {
    const int64_t c = g * gr.cg + k;
    const double gamma = a.gamma ? a.gamma[c] : 1.0;
    sg += gamma * sum_dy[k];
    sgx += gamma * sum_dyx[k];
    if (accumulate) {
      pp.dgamma[c] += invstd * sum_dyx[k];
      pp.dbeta[c] += sum_dy[k];
    }
  }
  const double count = static_cast<double>(gr.length);
  return {static_cast<float>(-invstd * invstd * invstd * sgx / count),
          static_cast<float>(-invstd * sg / count)};
}

/// Writes dgamma/dbeta: each thread sums the partials of a range of channels.
void merge_param_partials(const KernelArgs& a, const std::vector<ParamPartials>& parts, int t,
                          int nt, int64_t channels) {
  const Range mine = split_range(channels, t, nt);
  for (int64_t c = mine.begin; c < mine.end; ++c) {
    double g = 0, b = 0;
    for (int i = 0; i < nt; ++i) g += parts[i].dgamma[c], b += parts[i].dbeta[c];
    if (a.dgamma) a.dgamma[c] = static_cast<float>(g);
    if (a.dbeta) a.dbeta[c] = static_cast<float>(b);
  }
}

// ---------------------------------------------------------------------------------------------
// NCHW: unit u is the contiguous span x + u*L, channel k of the group at offset k*H*W.

/// The line that consecutive units of one thread share when a unit's bytes (or the output's
/// address) are not a multiple of 64 (InstanceNorm's 14 x 14 planes: 784 bytes), for the
/// pipelined loops: unit u's tail goes to `line` and unit u+1's head completes it there, to be
/// written whole with a non-temporal store (write_span_carried; as BatchNorm's PlaneCarry) rather
/// than by two masked ordinary stores that each read the line from DRAM first. The thread's first
/// unit writes its head, and its last unit its tail, with ordinary stores. Only with streaming
/// stores, units of at least 128 bytes that a pipeline chunk holds whole, and one span per unit
/// (InstanceNorm, or GroupNorm's segmented write); else off.
struct UnitCarry {
  alignas(64) unsigned char line[64];
  bool on = false;
  template <class T>
  UnitCarry(const Groups& gr, const T* out, bool stream) {
    const int64_t bytes = gr.length * static_cast<int64_t>(sizeof(T));
    const bool partial = ((reinterpret_cast<std::uintptr_t>(out) | bytes) & 63) != 0;
    on = stream && partial && bytes >= 128 && gr.length <= kPipelineChunk<T> &&
         (gr.cg == 1 || gr.s >= 16);
  }
  /// The ends of unit u of [u0, u1), whole (r is the unit).
  CarriedEnds ends(int64_t u, int64_t u0, int64_t u1) {
    if (!on) return {};
    return {u > u0 ? line : nullptr, u + 1 < u1 ? line : nullptr, true};
  }
};

template <class T>
NB_AVX512 void write_unit(const Typed<T>& t, const KernelArgs& a, const Groups& gr, int64_t u,
                          Range r, const GroupStats& st, bool stream, Prefetcher& pf,
                          const CarriedEnds& ends = {}) {
  const int64_t base = u * gr.length, g = u % gr.g;
  if (gr.cg > 1 && gr.s >= 16) {  // one span across the unit's channels (SegmentCursor)
    const float *gamma = a.gamma ? a.gamma + g * gr.cg : nullptr,
                *beta = a.beta ? a.beta + g * gr.cg : nullptr;
    const auto params = [gamma, beta, st](int64_t k) {
      return SegmentAffine{st.mean, (gamma ? gamma[k] : 1.0f) * st.invstd, beta ? beta[k] : 0.0f};
    };
    SegmentedAffineOp<T, decltype(params)> op(t.x + base + r.begin, params, gr.s, r.begin, gr.cg);
    return write_span_or_carried(t.y + base + r.begin, r.end - r.begin, stream, op, pf, ends);
  }
  for (Pieces pc(gr.s, gr.s, r.begin, r.end); pc.next();) {  // ends.on: one piece (cg = 1)
    const int64_t c = g * gr.cg + pc.offset / gr.s;
    const float gamma = a.gamma ? a.gamma[c] : 1.0f, beta = a.beta ? a.beta[c] : 0.0f;
    AffineOp<T> op(t.x + base + pc.offset, st.mean, gamma * st.invstd, beta);
    write_span_or_carried(t.y + base + pc.offset, pc.length, stream, op, pf, ends);
  }
}

/// Forward of whole units [u0, u1) by one thread when the tensor fits the cache (no streaming
/// stores; pipeline_units): a unit's statistics, then its y; with `prefetch` (only if the tensor
/// comes from DRAM, prefetch_next_unit) the next unit is prefetched in step with both passes.
template <class T>
NB_AVX512 void nchw_forward_units_cached(const Problem& p, const KernelArgs& a, int64_t u0,
                                         int64_t u1, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  CenterHint hint;  // the previous unit's statistics center this one's first block
  for (int64_t u = u0; u < u1; ++u) {
    const T* x = t.x + u * gr.length;
    Prefetcher pf;  // unit u+1, over the passes of unit u (statistics, then y)
    pf.pace(moment_passes<T>(gr.length, hint.valid) + 1);
    if (prefetch && u + 1 < u1) pf.add(x + gr.length, 1, gr.length * sizeof(T), 0);
    const Moments m = strided_moments(x, gr.length, gr.length, 0, gr.length, pf, hint);
    hint = CenterHint::of(m);
    const GroupStats st = group_stats(p, a, u, m, true);
    write_unit(t, a, gr, u, {0, gr.length}, st, false, pf);
  }
}

/// Forward of whole units [u0, u1) by one thread for tensors beyond the cache, pipelined like
/// BatchNorm's NCHW channels: y of unit u is written one chunk (kPipelineChunk) at a time, each
/// followed by the moments of the same chunk of unit u+1, whose lines were prefetched into L2
/// while the chunk was written. Measured against the unit-at-a-time loop above (2 threads,
/// n32c512h64w64g32, interleaved, fraction of the paired non-temporal copy): GroupNorm f32
/// training forward 0.74-0.77 -> 0.91-0.93, fwd_infer 0.76-0.79 -> 0.90-0.93, InstanceNorm f32
/// 0.82-0.84 -> 0.92-0.93; 16-bit within noise (0.78-0.86 both, also with 4-32 KiB chunks).
template <class T>
NB_AVX512 void nchw_forward_units(const Problem& p, const KernelArgs& a, int64_t u0, int64_t u1,
                                  bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const UnitChunks chunks(gr.length, kPipelineChunk<T>);
  Prefetcher none;
  UnitCarry carry(gr, t.y, stream);
  Moments m;
  if (u0 < u1) m = strided_moments(t.x + u0 * gr.length, gr.length, gr.length, 0, gr.length, none);
  for (int64_t u = u0; u < u1; ++u) {
    const GroupStats st = group_stats(p, a, u, m, true);
    const CenterHint hint = CenterHint::of(m);  // centers unit u+1's first chunk
    const bool more = u + 1 < u1;
    const T* x_next = t.x + (u + 1) * gr.length;
    Moments next;
    for (int64_t i = 0, e; i < gr.length; i = e) {
      e = chunks.end(i, gr.length);
      Prefetcher pf;  // the same chunk of unit u+1, a line per line of y
      if (prefetch && more) chunks.prefetch(pf, x_next, i, e, gr.length);
      write_unit(t, a, gr, u, {i, e}, st, stream, pf, carry.ends(u, u0, u1));
      if (more)
        next.merge(strided_moments(x_next, gr.length, gr.length, i, e, none,
                                   next.count > 0 ? CenterHint::of(next) : hint));
    }
    m = next;
  }
  end_streaming(stream);
}

/// Units under this many bytes take the small-unit loops below (beyond the cache).
inline constexpr int64_t kSmallUnitBytes = 4096;

/// Units per batch of the small-unit loops below.
inline constexpr int64_t kSmallUnitBatch = 16;

/// How many units ahead the small-unit loops prefetch: about kPipelineChunk (a thread's units are
/// contiguous). The unit-by-unit pipelines prefetch unit u+1 while unit u is written, which for a
/// small unit is read right after, before DRAM has answered: prefetching 16 KiB ahead instead
/// took InstanceNorm f32 n192c1024h14w14 (784-byte units, 2 threads, interleaved) training
/// forward 13.6-13.8 -> 12.1-12.3 ms and backward 18.3 -> 15.2-16.5 ms there.
template <class T>
int64_t prefetch_lead(int64_t unit_length) {
  return (kPipelineChunk<T> + unit_length - 1) / unit_length;
}

/// Forward of whole units [u0, u1) under kSmallUnitBytes by one thread for tensors beyond the
/// cache, kSmallUnitBatch units at a time: the batch's moments (centered by the previous batch's
/// last unit), their statistics, then their y, the units about kPipelineChunk ahead prefetched in
/// step with both passes. Unit by unit (nchw_forward_units), each small unit's statistics, their
/// square root and division, and the write that waits for them form one chain of dependent
/// instructions too long for the out-of-order window to overlap with the next unit's; in batches
/// the chains of a batch's units are independent.
template <class T>
NB_AVX512 void nchw_forward_small_units(const Problem& p, const KernelArgs& a, int64_t u0,
                                        int64_t u1, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const int64_t length = gr.length, lead = prefetch_lead<T>(length);
  UnitCarry carry(gr, t.y, stream);
  GroupStats st[kSmallUnitBatch];
  CenterHint hint;
  for (int64_t b0 = u0; b0 < u1; b0 += kSmallUnitBatch) {
    const int64_t b1 = std::min(u1, b0 + kSmallUnitBatch);
    Prefetcher pf;  // units [b0, b1) + lead, over the batch's two passes
    pf.pace(2);
    if (prefetch && b0 + lead < u1)
      pf.add(t.x + (b0 + lead) * length, 1,
             (std::min(u1, b1 + lead) - b0 - lead) * length * sizeof(T), 0);
    Moments m[kSmallUnitBatch];
    for (int64_t u = b0; u < b1; ++u)
      m[u - b0] = strided_moments(t.x + u * length, length, length, 0, length, pf, hint);
    for (int64_t u = b0; u < b1; ++u) st[u - b0] = group_stats(p, a, u, m[u - b0], true);
    hint = CenterHint::of(m[b1 - b0 - 1]);
    for (int64_t u = b0; u < b1; ++u)
      write_unit(t, a, gr, u, {0, length}, st[u - b0], stream, pf, carry.ends(u, u0, u1));
  }
  end_streaming(stream);
}

template <class T>
NB_AVX512 Moments nchw_unit_moments(const Problem& p, const KernelArgs& a, int64_t u, Range r) {
  const Groups gr(p);
  Prefetcher none;
  return strided_moments(static_cast<const T*>(a.x) + u * gr.length, gr.length, gr.length, r.begin,
                         r.end, none);
}

template <class T>
NB_AVX512 void nchw_write_unit_part(const Problem& p, const KernelArgs& a, int64_t u, Range r,
                                    const GroupStats& st, bool stream) {
  Prefetcher none;
  write_unit(Typed<T>(a), a, Groups(p), u, r, st, stream, none);
  end_streaming(stream);
}

template <class T>
void nchw_forward(const Problem& p, const KernelArgs& a) {
  const Groups gr(p);
  const int64_t units = gr.n * gr.g;
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const bool prefetch =
      prefetch_next_unit(2 * p.numel() * sizeof(T), gr.length * sizeof(T), threads);
  std::vector<Moments> partial(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = units / nt;
    if (pipeline_units(stream) && gr.length * static_cast<int64_t>(sizeof(T)) < kSmallUnitBytes)
      nchw_forward_small_units<T>(p, a, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    else if (pipeline_units(stream))
      nchw_forward_units<T>(p, a, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    else
      nchw_forward_units_cached<T>(p, a, t * per_thread, (t + 1) * per_thread, prefetch);
    for (int64_t u = per_thread * nt; u < units; ++u) {  // leftover units: split each
      const Range r = split_range(gr.length, t, nt);
      partial[t] = nchw_unit_moments<T>(p, a, u, r);
#pragma omp barrier
      Moments m;
      for (int i = 0; i < nt; ++i) m.merge(partial[i]);
      nchw_write_unit_part<T>(p, a, u, r, group_stats(p, a, u, m, t == 0), stream);
#pragma omp barrier
    }
  }
}

/// Per-channel backward sums of the part r of unit u: sum_dy[k], sum_dyx[k] += over channel k.
template <class T>
NB_AVX512 void nchw_unit_sums(const Typed<T>& t, const KernelArgs& a, const Groups& gr, int64_t u,
                              Range r, double* sum_dy, double* sum_dyx, Prefetcher& pf) {
  const int64_t base = u * gr.length;
  for (Pieces pc(gr.s, gr.s, r.begin, r.end); pc.next();) {
    const int64_t k = pc.offset / gr.s;
    const BackwardSums s = strided_backward_sums(t.x + base + pc.offset, t.dy + base + pc.offset,
                                                 pc.length, pc.length, 0, pc.length, a.mean[u], pf);
    sum_dy[k] += s.dy;
    sum_dyx[k] += s.dy_x;
  }
}

template <class T>
NB_AVX512 void write_unit_dx(const Typed<T>& t, const KernelArgs& a, const Groups& gr, int64_t u,
                             Range r, const GroupBackward& b, bool stream, Prefetcher& pf,
                             const CarriedEnds& ends = {}) {
  const int64_t base = u * gr.length, g = u % gr.g;
  const float invstd = a.invstd[u];
  if (gr.cg > 1 && gr.s >= 16) {  // one span across the unit's channels (SegmentCursor)
    SegmentedBackwardOp<T> op(t.x + base + r.begin, t.dy + base + r.begin,
                              a.gamma ? a.gamma + g * gr.cg : nullptr, a.mean[u], invstd, b.c1,
                              b.c0, gr.s, r.begin, gr.cg);
    return write_span_or_carried(t.dx + base + r.begin, r.end - r.begin, stream, op, pf, ends);
  }
  for (Pieces pc(gr.s, gr.s, r.begin, r.end); pc.next();) {
    const int64_t c = g * gr.cg + pc.offset / gr.s;
    const float k = (a.gamma ? a.gamma[c] : 1.0f) * invstd;
    BackwardOp<T> op(t.x + base + pc.offset, t.dy + base + pc.offset, a.mean[u], k, b.c1, b.c0);
    write_span_or_carried(t.dx + base + pc.offset, pc.length, stream, op, pf, ends);
  }
}

/// Backward of whole units [u0, u1) by one thread, pipelined like BatchNorm's NCHW channels: dx of
/// unit u is written one chunk (kPipelineChunk) at a time, each followed by the sums of the
/// same chunk of unit u+1, whose x and dy were prefetched into L2 while the chunk was written.
template <class T>
NB_AVX512 void nchw_backward_units(const Problem& p, const KernelArgs& a, int64_t u0, int64_t u1,
                                   ParamPartials& pp, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const UnitChunks chunks(gr.length, kPipelineChunk<T>);
  std::vector<double> sum_dy(gr.cg), sum_dyx(gr.cg), next_dy(gr.cg), next_dyx(gr.cg);
  Prefetcher none;
  UnitCarry carry(gr, t.dx, stream);
  if (u0 < u1) nchw_unit_sums(t, a, gr, u0, {0, gr.length}, sum_dy.data(), sum_dyx.data(), none);
  for (int64_t u = u0; u < u1; ++u) {
    const GroupBackward b =
        group_backward(a, gr, u % gr.g, a.invstd[u], sum_dy.data(), sum_dyx.data(), pp, true);
    const bool more = u + 1 < u1;
    const int64_t next_base = (u + 1) * gr.length;
    std::fill(next_dy.begin(), next_dy.end(), 0.0);
    std::fill(next_dyx.begin(), next_dyx.end(), 0.0);
    for (int64_t i = 0, e; i < gr.length; i = e) {
      e = chunks.end(i, gr.length);
      Prefetcher pf;  // x and dy of the same chunk of unit u+1, a line of each per line of dx
      if (prefetch && more) {
        chunks.prefetch(pf, t.x + next_base, i, e, gr.length);
        chunks.prefetch(pf, t.dy + next_base, i, e, gr.length);
      }
      write_unit_dx(t, a, gr, u, {i, e}, b, stream, pf, carry.ends(u, u0, u1));
      if (more) nchw_unit_sums(t, a, gr, u + 1, {i, e}, next_dy.data(), next_dyx.data(), none);
    }
    std::swap(sum_dy, next_dy);
    std::swap(sum_dyx, next_dyx);
  }
  end_streaming(stream);
}

/// Backward of whole units [u0, u1) under kSmallUnitBytes by one thread for tensors beyond the
/// cache, kSmallUnitBatch units at a time (as nchw_forward_small_units): the batch's per-channel
/// sums, their coefficients, then their dx, the x and dy of the units about kPipelineChunk ahead
/// prefetched in step with both passes.
template <class T>
NB_AVX512 void nchw_backward_small_units(const Problem& p, const KernelArgs& a, int64_t u0,
                                         int64_t u1, ParamPartials& pp, bool stream,
                                         bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const int64_t length = gr.length, lead = prefetch_lead<T>(length);
  std::vector<double> sum_dy(kSmallUnitBatch * gr.cg), sum_dyx(kSmallUnitBatch * gr.cg);
  UnitCarry carry(gr, t.dx, stream);
  GroupBackward b[kSmallUnitBatch];
  for (int64_t b0 = u0; b0 < u1; b0 += kSmallUnitBatch) {
    const int64_t b1 = std::min(u1, b0 + kSmallUnitBatch);
    Prefetcher pf;  // x and dy of units [b0, b1) + lead, over the batch's two passes
    pf.pace(2);
    if (prefetch && b0 + lead < u1) {
      const int64_t bytes = (std::min(u1, b1 + lead) - b0 - lead) * length * sizeof(T);
      pf.add(t.x + (b0 + lead) * length, 1, bytes, 0);
      pf.add(t.dy + (b0 + lead) * length, 1, bytes, 0);
    }
    std::fill(sum_dy.begin(), sum_dy.end(), 0.0);
    std::fill(sum_dyx.begin(), sum_dyx.end(), 0.0);
    for (int64_t u = b0; u < b1; ++u) {
      const int64_t i = (u - b0) * gr.cg;
      nchw_unit_sums(t, a, gr, u, {0, length}, sum_dy.data() + i, sum_dyx.data() + i, pf);
    }
    for (int64_t u = b0; u < b1; ++u) {
      const int64_t i = (u - b0) * gr.cg;
      b[u - b0] = group_backward(a, gr, u % gr.g, a.invstd[u], sum_dy.data() + i,
                                 sum_dyx.data() + i, pp, true);
    }
    for (int64_t u = b0; u < b1; ++u)
      write_unit_dx(t, a, gr, u, {0, length}, b[u - b0], stream, pf, carry.ends(u, u0, u1));
  }
  end_streaming(stream);
}

/// Backward of whole units [u0, u1) by one thread when the tensors fit the cache (no streaming
/// stores; pipeline_units): a unit's per-channel sums, then its dx; with `prefetch` the next
/// unit's x and dy are prefetched in step with both passes.
template <class T>
NB_AVX512 void nchw_backward_units_cached(const Problem& p, const KernelArgs& a, int64_t u0,
                                          int64_t u1, ParamPartials& pp, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  std::vector<double> sum_dy(gr.cg), sum_dyx(gr.cg);
  for (int64_t u = u0; u < u1; ++u) {
    std::fill(sum_dy.begin(), sum_dy.end(), 0.0);
    std::fill(sum_dyx.begin(), sum_dyx.end(), 0.0);
    Prefetcher pf;  // unit u+1, over the 2 passes of unit u
    pf.pace(2);
    if (prefetch && u + 1 < u1) {
      pf.add(t.x + (u + 1) * gr.length, 1, gr.length * sizeof(T), 0);
      pf.add(t.dy + (u + 1) * gr.length, 1, gr.length * sizeof(T), 0);
    }
    nchw_unit_sums(t, a, gr, u, {0, gr.length}, sum_dy.data(), sum_dyx.data(), pf);
    const GroupBackward b =
        group_backward(a, gr, u % gr.g, a.invstd[u], sum_dy.data(), sum_dyx.data(), pp, true);
    write_unit_dx(t, a, gr, u, {0, gr.length}, b, false, pf);
  }
}

template <class T>
NB_AVX512 void nchw_unit_part_sums(const Problem& p, const KernelArgs& a, int64_t u, Range r,
                                   double* sum_dy, double* sum_dyx) {
  Prefetcher none;
  nchw_unit_sums(Typed<T>(a), a, Groups(p), u, r, sum_dy, sum_dyx, none);
}

template <class T>
NB_AVX512 void nchw_write_unit_part_dx(const Problem& p, const KernelArgs& a, int64_t u, Range r,
                                       const GroupBackward& b, bool stream) {
  Prefetcher none;
  write_unit_dx(Typed<T>(a), a, Groups(p), u, r, b, stream, none);
  end_streaming(stream);
}

template <class T>
void nchw_backward(const Problem& p, const KernelArgs& a) {
  const Groups gr(p);
  const int64_t units = gr.n * gr.g;
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(3 * p.numel() * sizeof(T));
  const bool prefetch =
      prefetch_next_unit(3 * p.numel() * sizeof(T), 2 * gr.length * sizeof(T), threads);
  std::vector<ParamPartials> pp(threads, ParamPartials(gr.c));
  std::vector<std::vector<double>> sum_dy(threads), sum_dyx(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = units / nt;
    if (pipeline_units(stream) && gr.length * static_cast<int64_t>(sizeof(T)) < kSmallUnitBytes)
      nchw_backward_small_units<T>(p, a, t * per_thread, (t + 1) * per_thread, pp[t], stream,
                                   prefetch);
    else if (pipeline_units(stream))
      nchw_backward_units<T>(p, a, t * per_thread, (t + 1) * per_thread, pp[t], stream, prefetch);
    else
      nchw_backward_units_cached<T>(p, a, t * per_thread, (t + 1) * per_thread, pp[t], prefetch);
    for (int64_t u = per_thread * nt; u < units; ++u) {  // leftover units: split each
      const Range r = split_range(gr.length, t, nt);
      sum_dy[t].assign(gr.cg, 0.0);
      sum_dyx[t].assign(gr.cg, 0.0);
      nchw_unit_part_sums<T>(p, a, u, r, sum_dy[t].data(), sum_dyx[t].data());
#pragma omp barrier
      std::vector<double> dy(gr.cg), dyx(gr.cg);
      for (int i = 0; i < nt; ++i)
        for (int64_t k = 0; k < gr.cg; ++k) dy[k] += sum_dy[i][k], dyx[k] += sum_dyx[i][k];
      const GroupBackward b =
          group_backward(a, gr, u % gr.g, a.invstd[u], dy.data(), dyx.data(), pp[t], t == 0);
      nchw_write_unit_part_dx<T>(p, a, u, r, b, stream);
#pragma omp barrier
    }
#pragma omp barrier
    merge_param_partials(a, pp, t, nt, gr.c);
  }
}

// ---------------------------------------------------------------------------------------------
// NHWC: unit n is the sample's (H*W, C) block at x + n*H*W*C.

/// Group statistics of sample n from its per-channel moments (Chan merge over each group's
/// channels), expanded into the write patterns mean_c, scale_c = gamma_c*invstd_g, shift_c.
void nhwc_sample_stats(const Problem& p, const KernelArgs& a, const Groups& gr, int64_t n,
                       const ChannelMoments& cm, const ChannelPattern& pat, WritePatterns& w,
                       std::vector<float>& tmp, bool write) {
  std::vector<GroupStats> st(gr.g);
  for (int64_t g = 0; g < gr.g; ++g) {
    Moments m;
    for (int64_t c = g * gr.cg; c < (g + 1) * gr.cg; ++c) m.merge(cm.count, cm.mean[c], cm.m2[c]);
    st[g] = group_stats(p, a, n * gr.g + g, m, write);
  }
  for (int j = 0; j < 3; ++j) {
    for (int64_t c = 0; c < gr.c; ++c) {
      const GroupStats& s = st[c / gr.cg];
      tmp[c] = j == 0   ? s.mean
               : j == 1 ? (a.gamma ? a.gamma[c] : 1.0f) * s.invstd
                        : (a.beta ? a.beta[c] : 0.0f);
    }
    pat.expand(tmp.data(), w.p[j].data());
  }
}

template <class T>
NB_AVX512 void nhwc_write_sample(const T* x, T* y, int64_t n, const ChannelPattern& pat,
                                 const WritePatterns& w, bool stream, Prefetcher& pf) {
  PatternAffineOp<T> op{x, w.p[0].data(), w.p[1].data(), w.p[2].data(), pat.period};
  write_span(y, n, stream, op, pf);
}

/// Samples n0 .. n1-1 of one thread, software-pipelined across samples: y of sample n is written
/// one block of rows_per_moment_block rows at a time (x from the last-level cache: a sample of more
/// than the L2 was evicted since its statistics), and after each block the statistics of the same
/// rows of sample n+1 are accumulated (accumulate_moment_block), their lines prefetched into L2
/// while the block of y was written. The DRAM reads of sample n+1 thus overlap the streaming writes
/// of sample n, and the two statistics passes over a block read L2 rather than the LLC. The blocks
/// are those of accumulate_channel_moments and the hint the previous sample's moments. The blocks
/// go up and down the rows in turn (snake order): a sample's write pass starts with the blocks
/// its statistics read last, some of which are still in L2 rather than only in the LLC (measured
/// on the Intel hosts, f32 n32c512h64w64g32, 2 threads, interleaved runs: 19.7-20.0 ms -> 19.2-19.8
/// ms, 0.55-0.58 -> 0.57-0.61 of the paired non-temporal copy; bf16 within noise, +0-2 %).
template <class T>
NB_AVX512 void nhwc_forward_samples(const Problem& p, const KernelArgs& a, int64_t n0, int64_t n1,
                                    bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  ChannelScratch scratch(pat);
  WritePatterns w(pat);
  std::vector<float> tmp(gr.c);
  const int64_t block = gr.s * gr.c, block_rows = rows_per_moment_block<T>(pat);
  const int64_t nblocks = (gr.s + block_rows - 1) / block_rows;
  ChannelMoments cm(gr.c), next(gr.c);
  Prefetcher none;
  if (n0 < n1) {
    Prefetcher ahead = rows_ahead<T>(t.x + n0 * block, nullptr, gr.s, block_rows, pat,
                                     p.numel() * sizeof(T) > streaming_cache_bytes());
    accumulate_channel_moments(t.x + n0 * block, gr.s, pat, scratch, cm, ahead);
  }
  for (int64_t n = n0; n < n1; ++n) {
    nhwc_sample_stats(p, a, gr, n, cm, pat, w, tmp, true);
    const bool more = n + 1 < n1;
    const T* x_next = t.x + (n + 1) * block;
    next = ChannelMoments(gr.c);
    const bool down = (n - n0) % 2 != 0;  // snake order: see the comment above
    for (int64_t k = 0; k < nblocks; ++k) {
      const int64_t r0 = (down ? k : nblocks - 1 - k) * block_rows;
      const int64_t nr = std::min(block_rows, gr.s - r0), offset = r0 * gr.c;
      Prefetcher pf;  // the same rows of sample n+1, one line per line of y
      if (prefetch && more) pf.add(x_next + offset, 1, nr * gr.c * sizeof(T), 0);
      nhwc_write_sample(t.x + n * block + offset, t.y + n * block + offset, nr * gr.c, pat, w,
                        stream, pf);
      if (more) accumulate_moment_block(x_next + offset, nr, pat, scratch, next, none, &cm);
    }
    std::swap(cm, next);
  }
  end_streaming(stream);
}

template <class T>
NB_AVX512 void nhwc_rows_moments(const Problem& p, const KernelArgs& a, int64_t n, Range rows,
                                 ChannelMoments& cm) {
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  ChannelScratch scratch(pat);
  Prefetcher none;
  accumulate_channel_moments(static_cast<const T*>(a.x) + (n * gr.s + rows.begin) * gr.c,
                             rows.end - rows.begin, pat, scratch, cm, none);
}

template <class T>
NB_AVX512 void nhwc_write_rows(const Problem& p, const KernelArgs& a, int64_t n, Range rows,
                               const WritePatterns& w, bool stream) {
  const Typed<T> t(a);
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  const int64_t base = (n * gr.s + rows.begin) * gr.c;
  Prefetcher none;
  nhwc_write_sample(t.x + base, t.y + base, (rows.end - rows.begin) * gr.c, pat, w, stream, none);
  end_streaming(stream);
}

template <class T>
void nhwc_forward(const Problem& p, const KernelArgs& a) {
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(2 * p.numel() * sizeof(T));
  const bool prefetch =
      prefetch_next_unit(2 * p.numel() * sizeof(T), gr.c * gr.s * sizeof(T), threads);
  std::vector<ChannelMoments> partial(threads, ChannelMoments(gr.c));
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = gr.n / nt;
    nhwc_forward_samples<T>(p, a, t * per_thread, (t + 1) * per_thread, stream, prefetch);
    WritePatterns w(pat);
    std::vector<float> tmp(gr.c);
    for (int64_t n = per_thread * nt; n < gr.n; ++n) {  // leftover samples: split the rows
      const Range rows = split_range(gr.s, t, nt);
      partial[t] = ChannelMoments(gr.c);
      nhwc_rows_moments<T>(p, a, n, rows, partial[t]);
#pragma omp barrier
      ChannelMoments cm(gr.c);
      for (int i = 0; i < nt; ++i) cm.merge(partial[i]);
      nhwc_sample_stats(p, a, gr, n, cm, pat, w, tmp, t == 0);
      nhwc_write_rows<T>(p, a, n, rows, w, stream);
#pragma omp barrier
    }
  }
}

/// Backward coefficients of sample n from its per-channel sums, expanded into the patterns
/// k_c = gamma_c*invstd_g, c1_g, c0_g (w.p[1..3]; w.p[0] already holds the mean pattern).
void nhwc_sample_backward(const KernelArgs& a, const Groups& gr, int64_t n, const double* sum_dy,
                          const double* sum_dyx, const ChannelPattern& pat, WritePatterns& w,
                          std::vector<float>& tmp, ParamPartials& pp, bool accumulate) {
  std::vector<GroupBackward> b(gr.g);
  for (int64_t g = 0; g < gr.g; ++g)
    b[g] = group_backward(a, gr, g, a.invstd[n * gr.g + g], sum_dy + g * gr.cg, sum_dyx + g * gr.cg,
                          pp, accumulate);
  for (int j = 1; j < 4; ++j) {
    for (int64_t c = 0; c < gr.c; ++c) {
      const int64_t g = c / gr.cg;
      tmp[c] = j == 1   ? (a.gamma ? a.gamma[c] : 1.0f) * a.invstd[n * gr.g + g]
               : j == 2 ? b[g].c1
                        : b[g].c0;
    }
    pat.expand(tmp.data(), w.p[j].data());
  }
}

void nhwc_mean_pattern(const KernelArgs& a, const Groups& gr, int64_t n, const ChannelPattern& pat,
                       WritePatterns& w, std::vector<float>& tmp) {
  for (int64_t c = 0; c < gr.c; ++c) tmp[c] = a.mean[n * gr.g + c / gr.cg];
  pat.expand(tmp.data(), w.p[0].data());
}

template <class T>
NB_AVX512 void nhwc_write_sample_dx(const T* x, const T* dy, T* dx, int64_t n,
                                    const ChannelPattern& pat, const WritePatterns& w, bool stream,
                                    Prefetcher& pf) {
  PatternBackwardOp<T> op{x,         dy, w.p[0].data(), w.p[1].data(), w.p[2].data(), w.p[3].data(),
                          pat.period};
  write_span(dx, n, stream, op, pf);
}

/// Samples n0 .. n1-1 of one thread, pipelined like nhwc_forward_samples: dx of sample n is
/// written in blocks of whole fold periods (rows_per_fold) near rows_per_block rows, each followed
/// by the sums of the same rows of sample n+1, whose x and dy were prefetched into L2 while the
/// block of dx was written, in snake order as there. Blocks are multiples of the fold period.
template <class T>
NB_AVX512 void nhwc_backward_samples(const Problem& p, const KernelArgs& a, int64_t n0, int64_t n1,
                                     ParamPartials& pp, bool stream, bool prefetch) {
  const Typed<T> t(a);
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  ChannelScratch scratch(pat);
  WritePatterns w(pat), w_next(pat);
  std::vector<float> tmp(gr.c);
  std::vector<double> sum_dy(gr.c), sum_dyx(gr.c), next_dy(gr.c), next_dyx(gr.c);
  const int64_t block = gr.s * gr.c, fold_rows = rows_per_fold(pat);
  const int64_t block_rows = std::max<int64_t>(1, rows_per_block<T>(pat) / fold_rows) * fold_rows;
  const int64_t nblocks = (gr.s + block_rows - 1) / block_rows;
  Prefetcher none;
  if (n0 < n1) {
    nhwc_mean_pattern(a, gr, n0, pat, w, tmp);
    accumulate_channel_backward(t.x + n0 * block, t.dy + n0 * block, gr.s, w.p[0].data(), pat,
                                scratch, sum_dy.data(), sum_dyx.data(), none);
  }
  for (int64_t n = n0; n < n1; ++n) {
    nhwc_sample_backward(a, gr, n, sum_dy.data(), sum_dyx.data(), pat, w, tmp, pp, true);
    const bool more = n + 1 < n1;
    const int64_t next_base = (n + 1) * block;
    if (more) nhwc_mean_pattern(a, gr, n + 1, pat, w_next, tmp);
    std::fill(next_dy.begin(), next_dy.end(), 0.0);
    std::fill(next_dyx.begin(), next_dyx.end(), 0.0);
    const bool down = (n - n0) % 2 != 0;  // snake order, as in nhwc_forward_samples
    for (int64_t k = 0; k < nblocks; ++k) {
      const int64_t r0 = (down ? k : nblocks - 1 - k) * block_rows;
      const int64_t nr = std::min(block_rows, gr.s - r0), offset = r0 * gr.c;
      const int64_t here = n * block + offset;
      Prefetcher pf;  // x and dy of the same rows of sample n+1, a line of each per line of dx
      if (prefetch && more) {
        pf.add(t.x + next_base + offset, 1, nr * gr.c * sizeof(T), 0);
        pf.add(t.dy + next_base + offset, 1, nr * gr.c * sizeof(T), 0);
      }
      nhwc_write_sample_dx(t.x + here, t.dy + here, t.dx + here, nr * gr.c, pat, w, stream, pf);
      if (more)
        accumulate_channel_backward(t.x + next_base + offset, t.dy + next_base + offset, nr,
                                    w_next.p[0].data(), pat, scratch, next_dy.data(),
                                    next_dyx.data(), none);
    }
    std::swap(w, w_next);
    std::swap(sum_dy, next_dy);
    std::swap(sum_dyx, next_dyx);
  }
  end_streaming(stream);
}

template <class T>
NB_AVX512 void nhwc_rows_backward_sums(const Problem& p, const KernelArgs& a, int64_t n, Range rows,
                                       const WritePatterns& w, double* sum_dy, double* sum_dyx) {
  const Typed<T> t(a);
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  ChannelScratch scratch(pat);
  const int64_t base = (n * gr.s + rows.begin) * gr.c;
  Prefetcher none;
  accumulate_channel_backward(t.x + base, t.dy + base, rows.end - rows.begin, w.p[0].data(), pat,
                              scratch, sum_dy, sum_dyx, none);
}

template <class T>
NB_AVX512 void nhwc_write_rows_dx(const Problem& p, const KernelArgs& a, int64_t n, Range rows,
                                  const WritePatterns& w, bool stream) {
  const Typed<T> t(a);
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  const int64_t base = (n * gr.s + rows.begin) * gr.c;
  Prefetcher none;
  nhwc_write_sample_dx(t.x + base, t.dy + base, t.dx + base, (rows.end - rows.begin) * gr.c, pat, w,
                       stream, none);
  end_streaming(stream);
}

template <class T>
void nhwc_backward(const Problem& p, const KernelArgs& a) {
  const Groups gr(p);
  const ChannelPattern pat(gr.c);
  const int threads = thread_budget(p.numel());
  const bool stream = use_streaming(3 * p.numel() * sizeof(T));
  const bool prefetch =
      prefetch_next_unit(3 * p.numel() * sizeof(T), 2 * gr.c * gr.s * sizeof(T), threads);
  std::vector<ParamPartials> pp(threads, ParamPartials(gr.c));
  std::vector<std::vector<double>> sum_dy(threads), sum_dyx(threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t per_thread = gr.n / nt;
    nhwc_backward_samples<T>(p, a, t * per_thread, (t + 1) * per_thread, pp[t], stream, prefetch);
    WritePatterns w(pat);
    std::vector<float> tmp(gr.c);
    for (int64_t n = per_thread * nt; n < gr.n; ++n) {  // leftover samples: split the rows
      const Range rows = split_range(gr.s, t, nt);
      nhwc_mean_pattern(a, gr, n, pat, w, tmp);
      sum_dy[t].assign(gr.c, 0.0);
      sum_dyx[t].assign(gr.c, 0.0);
      nhwc_rows_backward_sums<T>(p, a, n, rows, w, sum_dy[t].data(), sum_dyx[t].data());
#pragma omp barrier
      std::vector<double> dy(gr.c), dyx(gr.c);
      for (int i = 0; i < nt; ++i)
        for (int64_t c = 0; c < gr.c; ++c) dy[c] += sum_dy[i][c], dyx[c] += sum_dyx[i][c];
      nhwc_sample_backward(a, gr, n, dy.data(), dyx.data(), pat, w, tmp, pp[t], t == 0);
      nhwc_write_rows_dx<T>(p, a, n, rows, w, stream);
#pragma omp barrier
    }
#pragma omp barrier
    merge_param_partials(a, pp, t, nt, gr.c);
  }
}

template <class T>
void run_groups(const Problem& p, const KernelArgs& a) {
  // NCHW with H*W = 1 is the NHWC memory of one row per sample: the pattern path vectorises along
  // C there instead of one masked lane per channel.
  const bool rows = p.layout == Layout::nhwc || p.spatial() == 1;
  if (p.pass == Pass::bwd) return rows ? nhwc_backward<T>(p, a) : nchw_backward<T>(p, a);
  return rows ? nhwc_forward<T>(p, a) : nchw_forward<T>(p, a);
}

}  // namespace

NB_AVX512_ENTRY(groupnorm, run_groups)
NB_AVX512_ENTRY(instancenorm, run_groups)

}  // namespace nb::avx512::NB_AVX512_VARIANT
