// Channels-last (NHWC) statistics of the `openmp` backend, shared by BatchNorm (one unit: all
// N*H*W rows, a group per channel), GroupNorm (a unit per sample, G groups of C/G adjacent
// channels) and InstanceNorm (a unit per sample, a group per channel): forward (y, optional saved
// mean/invstd, optional running statistics) and training-mode backward (dx, dgamma, dbeta).
//
// Algorithm: vectorise along C (chunks of 32 channels whose accumulators stay in registers while
// the rows of a block stream by); each thread reduces blocks of rows into per-channel fp32 sums
// (corrected two-pass per block, common.hpp), folds them into per-group fp64 partial moments
// (Chan merge), the threads' partials of a unit are merged, and a second pass over the same rows
// writes y = (x - shift_c) * scale_c + bias_c. Backward: a first pass gives per-channel sum(dy),
// sum(dy * (x - mean)) of the unit, then dx; per-thread dgamma/dbeta partials merged once.
//
// Passes over memory: a GroupNorm/InstanceNorm sample (H*W*C) is processed while it is in cache
// (x read once, the next sample prefetched while this one is written); the BatchNorm unit is the
// whole tensor, so x (and dy) are read twice unless the tensor fits in cache: the three-pass
// (forward) or five-pass (backward) count of CONVENTIONS section 3.
//
// Limits: channels beyond the last multiple of 8 run in scalar loops (C = 3 is scalar); C = 1 and,
// for BatchNorm, H = W = 1 are routed by the callers to whichever layout is the same in memory.
#include <vector>

#include "common.hpp"

namespace nb::omp {
namespace {

/// Rows per statistics block: about 4096 elements (16 KiB fp32), at least 8 rows.
Index row_block(Index channels) { return std::clamp<Index>(4096 / channels, 8, 512); }

constexpr Index kForwardScratch = 7;   // per-thread float arrays of C entries
constexpr Index kBackwardScratch = 4;  // per-thread float arrays of C entries

/// Per-thread fp32 scratch of the forward: kForwardScratch arrays of C, plus (16-bit data) a row
/// block widened once for the second statistics pass.
Index forward_scratch(Index channels, DType dt) {
  return kForwardScratch * channels + (dt == DType::f32 ? 0 : row_block(channels) * channels);
}

/// Calls f.template operator()<W>(c0) for chunks [c0, c0 + W) covering channels [0, C): W = 32
/// while they last, then 8, then 1. Each kernel loops over the rows of a block inside a chunk, so
/// a chunk's accumulators and coefficients (fixed-size local arrays) stay in vector registers
/// across rows instead of being loaded and stored for every row.
template <class F>
NB_OMP_INLINE void for_each_chunk(Index C, F&& f) {
  Index c0 = 0;
  for (; c0 + 32 <= C; c0 += 32) f.template operator()<32>(c0);
  for (; c0 + 8 <= C; c0 += 8) f.template operator()<8>(c0);
  for (; c0 < C; ++c0) f.template operator()<1>(c0);
}

template <DType DT>
NB_OMP_KERNEL void forward_thread(const ChannelsLast& s, const KernelArgs& a, Moments* slots,
                                  float* scratch, bool prefetch_next) {
  constexpr bool kWiden = DT != DType::f32;
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  E* y = static_cast<E*>(a.y);
  const Index C = s.channels, G = s.groups, group_size = C / G;
  float* sum = scratch + omp_get_thread_num() * forward_scratch(C, DT);
  float* rough = sum + C;  // rough (pass 1) mean of each channel's group
  float* d1 = rough + C;
  float* d2 = d1 + C;
  float* shift = d2 + C;
  float* scale = shift + C;
  float* bias = scale + C;
  float* widened = kWiden ? bias + C : nullptr;  // rows_per_block x C
  const Index rows_per_block = row_block(C);
  run_units(
      s.units, s.rows, G, false, slots,
      [&](Index u, Index r0, Index r1, Moments* part) NB_OMP_LAMBDA {
        for (Index rb = r0; rb < r1; rb += rows_per_block) {
          const Index nr = std::min(rows_per_block, r1 - rb);
          const E* xb = x + (u * s.rows + rb) * C;
          // Pass 1: per-channel sums (and the widened copy of 16-bit data).
          for_each_chunk(C, [&]<Index W>(Index c0) NB_OMP_LAMBDA {
            float acc[W] = {};
            for (Index r = 0; r < nr; ++r) {
              const E* xr = xb + r * C + c0;
              float* wr = kWiden ? widened + r * C + c0 : nullptr;
#pragma omp simd
              for (Index j = 0; j < W; ++j) {
                const float v = load<DT>(xr, j);
                if constexpr (kWiden) wr[j] = v;
                acc[j] += v;
              }
            }
            for (Index j = 0; j < W; ++j) sum[c0 + j] = acc[j];
          });
          const float count = static_cast<float>(nr * group_size);
          for (Index g = 0; g < G; ++g) {
            float total = 0;
            for (Index c = g * group_size; c < (g + 1) * group_size; ++c) total += sum[c];
            const float m = round_to<DT>(total / count);
            for (Index c = g * group_size; c < (g + 1) * group_size; ++c) rough[c] = m;
          }
          // Pass 2 over the L1-resident block: sums of deviations from the rough mean.
          for_each_chunk(C, [&]<Index W>(Index c0) NB_OMP_LAMBDA {
            float m[W], acc1[W] = {}, acc2[W] = {};
            for (Index j = 0; j < W; ++j) m[j] = rough[c0 + j];
            for (Index r = 0; r < nr; ++r) {
              const E* xr = xb + r * C + c0;
              const float* wr = kWiden ? widened + r * C + c0 : nullptr;
#pragma omp simd
              for (Index j = 0; j < W; ++j) {
                const float d = (kWiden ? wr[j] : load<DT>(xr, j)) - m[j];
                acc1[j] += d;
                acc2[j] += d * d;
              }
            }
            for (Index j = 0; j < W; ++j) {
              d1[c0 + j] = acc1[j];
              d2[c0 + j] = acc2[j];
            }
          });
          for (Index g = 0; g < G; ++g) {
            double s1 = 0, s2 = 0;
            for (Index c = g * group_size; c < (g + 1) * group_size; ++c) {
              s1 += d1[c];
              s2 += d2[c];
            }
            combine(part[g], block_moments(nr * group_size, rough[g * group_size], s1, s2));
          }
        }
      },
      [&](Index u, Index r0, Index r1, const Moments* all, bool owner, Index next) NB_OMP_LAMBDA {
        for (Index g = 0; g < G; ++g) {
          const Moments& m = all[g];
          const double invstd = invstd_of(m, s.eps);
          const Index stat = u * G + g;
          if (owner) {
            if (a.mean) a.mean[stat] = static_cast<float>(m.mean);
            if (a.invstd) a.invstd[stat] = static_cast<float>(invstd);
            if (a.running_mean)
              a.running_mean[stat] =
                  static_cast<float>((1 - s.momentum) * a.running_mean[stat] + s.momentum * m.mean);
            if (a.running_var)
              a.running_var[stat] = static_cast<float>((1 - s.momentum) * a.running_var[stat] +
                                                       s.momentum * m.m2 / (m.count - 1));
          }
          for (Index c = g * group_size; c < (g + 1) * group_size; ++c) {
            const Affine k = affine_about(m.mean, (a.gamma ? a.gamma[c] : 1.0) * invstd,
                                          a.beta ? a.beta[c] : 0.0);
            shift[c] = k.shift;
            scale[c] = k.scale;
            bias[c] = k.bias;
          }
        }
        for (Index rb = r0; rb < r1; rb += rows_per_block) {
          const Index nr = std::min(rows_per_block, r1 - rb);
          const Index at = (u * s.rows + rb) * C;
          for_each_chunk(C, [&]<Index W>(Index c0) NB_OMP_LAMBDA {
            float sh[W], sc[W], bi[W];
            for (Index j = 0; j < W; ++j) {
              sh[j] = shift[c0 + j];
              sc[j] = scale[c0 + j];
              bi[j] = bias[c0 + j];
            }
            for (Index r = 0; r < nr; ++r) {
              const E* xr = x + at + r * C + c0;
              E* yr = y + at + r * C + c0;
#pragma omp simd
              for (Index j = 0; j < W; ++j)
                store<DT>(yr, j, (load<DT>(xr, j) - sh[j]) * sc[j] + bi[j]);
            }
          });
          if (prefetch_next && next >= 0)
            prefetch(x + (next * s.rows + rb) * C, nr * C * Index{sizeof(E)});
        }
      });
}

template <DType DT>
NB_OMP_KERNEL void backward_thread(const ChannelsLast& s, const KernelArgs& a, Sums* slots,
                                   float* scratch, double* gradient_sums, bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  const E* dy = static_cast<const E*>(a.dy);
  E* dx = static_cast<E*>(a.dx);
  const int threads = omp_get_num_threads(), t = omp_get_thread_num();
  const Index C = s.channels, G = s.groups, group_size = C / G;
  float* mean = scratch + t * kBackwardScratch * C;  // the saved mean of each channel's group
  float* ka = mean + C;                              // Gradient coefficients per channel
  float* kb = ka + C;
  float* kc = kb + C;
  // This thread's sums of invstd * sum(dy * (x - mean)) and sum(dy) per channel over its units.
  double* dgamma = gradient_sums + 2 * C * t;
  double* dbeta = dgamma + C;
  for (Index c = 0; c < 2 * C; ++c) dgamma[c] = 0;
  const Index rows_per_block = row_block(C);
  run_units(
      s.units, s.rows, C, false, slots,
      [&](Index u, Index r0, Index r1, Sums* part) NB_OMP_LAMBDA {
        for (Index c = 0; c < C; ++c) mean[c] = a.mean[u * G + c / group_size];
        for (Index rb = r0; rb < r1; rb += rows_per_block) {
          const Index nr = std::min(rows_per_block, r1 - rb);
          const Index at = (u * s.rows + rb) * C;
          for_each_chunk(C, [&]<Index W>(Index c0) NB_OMP_LAMBDA {
            float m[W], acc1[W] = {}, acc2[W] = {};
            for (Index j = 0; j < W; ++j) m[j] = mean[c0 + j];
            for (Index r = 0; r < nr; ++r) {
              const E* xr = x + at + r * C + c0;
              const E* dyr = dy + at + r * C + c0;
#pragma omp simd
              for (Index j = 0; j < W; ++j) {
                const float d = load<DT>(dyr, j);
                acc1[j] += d;
                acc2[j] += d * (load<DT>(xr, j) - m[j]);
              }
            }
            for (Index j = 0; j < W; ++j) {
              part[c0 + j].s1 += acc1[j];
              part[c0 + j].s2 += acc2[j];
            }
          });
        }
      },
      [&](Index u, Index r0, Index r1, const Sums* all, bool owner, Index next) NB_OMP_LAMBDA {
        for (Index g = 0; g < G; ++g) {
          const double invstd = a.invstd[u * G + g];
          double sum_gamma_dy = 0, sum_gamma_dy_xmu = 0;
          for (Index c = g * group_size; c < (g + 1) * group_size; ++c) {
            const double gamma = a.gamma ? a.gamma[c] : 1.0;
            sum_gamma_dy += gamma * all[c].s1;
            sum_gamma_dy_xmu += gamma * all[c].s2;
            if (owner) {
              dgamma[c] += invstd * all[c].s2;
              dbeta[c] += all[c].s1;
            }
          }
          for (Index c = g * group_size; c < (g + 1) * group_size; ++c) {
            const Gradient k =
                gradient_of(a.mean[u * G + g], invstd, a.gamma ? a.gamma[c] : 1.0, sum_gamma_dy,
                            sum_gamma_dy_xmu, static_cast<double>(s.rows * group_size));
            mean[c] = k.mean;
            ka[c] = k.a;
            kb[c] = k.b;
            kc[c] = k.c;
          }
        }
        for (Index rb = r0; rb < r1; rb += rows_per_block) {
          const Index nr = std::min(rows_per_block, r1 - rb);
          const Index at = (u * s.rows + rb) * C;
          for_each_chunk(C, [&]<Index W>(Index c0) NB_OMP_LAMBDA {
            float m[W], k1[W], k2[W], k3[W];
            for (Index j = 0; j < W; ++j) {
              m[j] = mean[c0 + j];
              k1[j] = ka[c0 + j];
              k2[j] = kb[c0 + j];
              k3[j] = kc[c0 + j];
            }
            for (Index r = 0; r < nr; ++r) {
              const E* xr = x + at + r * C + c0;
              const E* dyr = dy + at + r * C + c0;
              E* dxr = dx + at + r * C + c0;
#pragma omp simd
              for (Index j = 0; j < W; ++j)
                store<DT>(dxr, j,
                          k1[j] * load<DT>(dyr, j) - (load<DT>(xr, j) - m[j]) * k2[j] - k3[j]);
            }
          });
          if (prefetch_next && next >= 0) {
            const Index bytes = nr * C * Index{sizeof(E)};
            prefetch(x + (next * s.rows + rb) * C, bytes);
            prefetch(dy + (next * s.rows + rb) * C, bytes);
          }
        }
      });
  if (!a.dgamma && !a.dbeta) return;
#pragma omp barrier
  const Index c0 = share_begin(C, t, threads), c1 = share_begin(C, t + 1, threads);
  for (Index c = c0; c < c1; ++c) {
    double dg = 0, db = 0;
    for (int i = 0; i < threads; ++i) {
      dg += gradient_sums[2 * C * i + c];
      db += gradient_sums[2 * C * i + C + c];
    }
    if (a.dgamma) a.dgamma[c] = static_cast<float>(dg);
    if (a.dbeta) a.dbeta[c] = static_cast<float>(db);
  }
}

}  // namespace

void channels_last_forward(const ChannelsLast& s, DType dt, const KernelArgs& a) {
  const Index threads = omp_get_max_threads();
  std::vector<Moments> slots(run_units_slots(threads) * s.groups);
  std::vector<float> scratch(threads * forward_scratch(s.channels, dt));
  const bool pf = prefetch_worthwhile(s.rows * s.channels * static_cast<Index>(element_size(dt)));
  with_dtype(dt, [&]<DType DT>() {
#pragma omp parallel
    forward_thread<DT>(s, a, slots.data(), scratch.data(), pf);
  });
}

void channels_last_backward(const ChannelsLast& s, DType dt, const KernelArgs& a) {
  const Index threads = omp_get_max_threads();
  std::vector<Sums> slots(run_units_slots(threads) * s.channels);
  std::vector<float> scratch(threads * kBackwardScratch * s.channels);
  std::vector<double> gradient_sums(threads * 2 * s.channels);
  const bool pf =
      prefetch_worthwhile(2 * s.rows * s.channels * static_cast<Index>(element_size(dt)));
  with_dtype(dt, [&]<DType DT>() {
#pragma omp parallel
    backward_thread<DT>(s, a, slots.data(), scratch.data(), gradient_sums.data(), pf);
  });
}

}  // namespace nb::omp
