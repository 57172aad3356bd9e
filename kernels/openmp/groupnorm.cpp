// GroupNorm and InstanceNorm (= GroupNorm with G = C) in the `openmp` backend: forward (y, and
// the saved mean/invstd per (n, g) in fwd_train; fwd_infer saves nothing) and the training-mode
// backward (dx, dgamma, dbeta from saved mean/invstd), NCHW and NHWC, f32/bf16/f16.
//
// Algorithm: in NCHW a group (n, g) is C/G adjacent planes, one contiguous span: its exact
// statistics (common.hpp) are taken and it is normalised with per-channel gamma/beta while it is
// still in cache, the next group being prefetched meanwhile; backward takes per-channel
// sum(dy), sum(dy * (x - mean)) over the cached group in a first pass (for dgamma/dbeta and the
// gamma-folded sums of the dx formula), then writes dx. NHWC goes to channels_last.cpp (a sample's
// H*W x C block is the unit, vectorised along C).
//
// Passes over memory: x read once (forward) and x, dy read once (backward) when a group fits in
// this thread's cache share, else twice. Both cores: groups are dealt out whole, the N*G % T
// leftover groups are split between all threads with partial results merged. dgamma/dbeta are
// per-thread fp64 partials merged once at the end.
//
// Limits: none in shape (G = 1, G = C, H = W = 1 all handled); no non-temporal stores.
#include <vector>

#include "common.hpp"

namespace nb::omp {
namespace {

template <DType DT>
NB_OMP_KERNEL void forward_nchw(const Problem& p, const KernelArgs& a, Moments* slots,
                                bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  E* y = static_cast<E*>(a.y);
  const Index G = p.effective_groups(), group_size = p.c / G, hw = p.spatial();
  const Index M = group_size * hw;
  const Segments planes{group_size, hw, hw};
  run_units(
      p.n * G, M, 1, false, slots,
      [&](Index u, Index b, Index e, Moments* part)
          NB_OMP_LAMBDA { part[0] = range_moments<DT>(x + u * M, planes, b, e); },
      [&](Index u, Index b, Index e, const Moments* all, bool owner, Index next) NB_OMP_LAMBDA {
        const Moments& m = all[0];
        const double invstd = invstd_of(m, p.eps);
        if (owner) {
          if (a.mean) a.mean[u] = static_cast<float>(m.mean);
          if (a.invstd) a.invstd[u] = static_cast<float>(invstd);
        }
        const Index c0 = (u % G) * group_size;
        range_apply<DT>(
            x + u * M, y + u * M, planes, b, e,
            [&](Index k) NB_OMP_LAMBDA {
              const Index c = c0 + k;
              return affine_about(m.mean, (a.gamma ? a.gamma[c] : 1.0) * invstd,
                                  a.beta ? a.beta[c] : 0.0);
            },
            prefetch_next && next >= 0 ? x + next * M : nullptr);
      });
}

template <DType DT>
NB_OMP_KERNEL void backward_nchw(const Problem& p, const KernelArgs& a, Sums* slots,
                                 double* gradient_sums, bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  const E* dy = static_cast<const E*>(a.dy);
  E* dx = static_cast<E*>(a.dx);
  const int threads = omp_get_num_threads(), t = omp_get_thread_num();
  const Index C = p.c, G = p.effective_groups(), group_size = C / G, hw = p.spatial();
  const Index M = group_size * hw;
  const Segments planes{group_size, hw, hw};
  // This thread's sums of invstd * sum(dy * (x - mean)) and sum(dy) per channel.
  double* dgamma = gradient_sums + 2 * C * t;
  double* dbeta = dgamma + C;
  for (Index c = 0; c < 2 * C; ++c) dgamma[c] = 0;
  run_units(
      p.n * G, M, 1, false, slots,
      [&](Index u, Index b, Index e, Sums* part) NB_OMP_LAMBDA {
        const Index c0 = (u % G) * group_size;
        const double invstd = a.invstd[u];
        range_backward_sums<DT>(x + u * M, dy + u * M, planes, b, e, a.mean[u],
                                [&](Index k, double s1, double s2) NB_OMP_LAMBDA {
                                  const Index c = c0 + k;
                                  const double gamma = a.gamma ? a.gamma[c] : 1.0;
                                  part->s1 += gamma * s1;
                                  part->s2 += gamma * s2;
                                  dgamma[c] += invstd * s2;
                                  dbeta[c] += s1;
                                });
      },
      [&](Index u, Index b, Index e, const Sums* all, bool, Index next) NB_OMP_LAMBDA {
        const Index c0 = (u % G) * group_size;
        const double invstd = a.invstd[u];
        const bool pf = prefetch_next && next >= 0;
        range_backward_apply<DT>(
            x + u * M, dy + u * M, dx + u * M, planes, b, e,
            [&](Index k) NB_OMP_LAMBDA {
              return gradient_of(a.mean[u], invstd, a.gamma ? a.gamma[c0 + k] : 1.0, all->s1,
                                 all->s2, static_cast<double>(M));
            },
            pf ? x + next * M : nullptr, pf ? dy + next * M : nullptr);
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

void groupnorm_instancenorm(const Problem& p, const KernelArgs& a) {
  const Index G = p.effective_groups();
  // NHWC with C = 1 or H = W = 1 is the NCHW layout in memory.
  if (p.layout == Layout::nhwc && p.c > 1 && p.spatial() > 1) {
    const ChannelsLast s{p.n, p.spatial(), p.c, G, p.eps, 0.0};
    if (p.pass == Pass::bwd)
      channels_last_backward(s, p.dtype, a);
    else
      channels_last_forward(s, p.dtype, a);
    return;
  }
  const Index threads = omp_get_max_threads();
  const Index group_bytes = p.c / G * p.spatial() * static_cast<Index>(element_size(p.dtype));
  if (p.pass == Pass::bwd) {
    std::vector<Sums> slots(run_units_slots(threads));
    std::vector<double> gradient_sums(threads * 2 * p.c);
    const bool pf = prefetch_worthwhile(2 * group_bytes);
    with_dtype(p.dtype, [&]<DType DT>() {
#pragma omp parallel
      backward_nchw<DT>(p, a, slots.data(), gradient_sums.data(), pf);
    });
  } else {
    std::vector<Moments> slots(run_units_slots(threads));
    const bool pf = prefetch_worthwhile(group_bytes);
    with_dtype(p.dtype, [&]<DType DT>() {
#pragma omp parallel
      forward_nchw<DT>(p, a, slots.data(), pf);
    });
  }
}

}  // namespace nb::omp
