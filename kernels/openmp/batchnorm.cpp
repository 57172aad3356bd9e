// BatchNorm in the `openmp` backend: fwd_train (y, saved mean/invstd, running statistics updated
// with the unbiased variance), fwd_infer (y from running statistics) and the training-mode
// backward (dx, dgamma, dbeta from saved mean/invstd), NCHW and NHWC, f32/bf16/f16.
//
// Algorithm: NCHW training treats each channel's N x H*W slice as a reduction unit, takes its
// exact statistics (common.hpp) and normalises it while it is still in cache, prefetching the next
// channel's slice meanwhile; NHWC training (every row holds every channel) goes to the
// channels-last kernels (channels_last.cpp); inference is one streaming pass
// y = (x - running_mean) * a + beta.
//
// Passes over memory (NCHW): forward reads x once and writes y when a slice fits in this thread's
// cache share (else the normalise pass re-reads x: 3 passes); backward reads x and dy once (a
// first pass over the cached slice for sum(dy), sum(dy * (x - mean)), then dx), else twice.
// Both cores: channels are dealt out whole, C % T leftover channels are split between all
// threads with partial statistics merged (C = 1, 3 keep both cores busy).
//
// Inference form: y = (x - running_mean_c) * a_c + beta_c with a_c = gamma_c / sqrt(var_c + eps)
// is the folded y = a_c x + b_c of CONVENTIONS plus one subtraction per element: the same single
// streaming pass, but exact for inputs near running_mean (a_c x + b_c cancels |mean| * a_c).
//
// Limits: layouts where the channels-last kernels are faster are routed there (C > 1 with
// NHWC, or H = W = 1 where NCHW is the same (N, C) matrix); no non-temporal stores (common.hpp).
#include <vector>

#include "common.hpp"

namespace nb::omp {
namespace {

/// One channel's slice in NCHW: N planes of H*W elements, C*H*W apart.
Segments channel_slice(const Problem& p) { return {p.n, p.spatial(), p.c * p.spatial()}; }

template <DType DT>
NB_OMP_KERNEL void forward_train_nchw(const Problem& p, const KernelArgs& a, Moments* slots,
                                      bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  E* y = static_cast<E*>(a.y);
  const Index hw = p.spatial();
  const Segments slice = channel_slice(p);
  run_units(
      p.c, p.n * hw, 1, false, slots,
      [&](Index c, Index b, Index e, Moments* part)
          NB_OMP_LAMBDA { part[0] = range_moments<DT>(x + c * hw, slice, b, e); },
      [&](Index c, Index b, Index e, const Moments* all, bool owner, Index next) NB_OMP_LAMBDA {
        const Moments& m = all[0];
        const double invstd = invstd_of(m, p.eps);
        if (owner) {
          if (a.mean) a.mean[c] = static_cast<float>(m.mean);
          if (a.invstd) a.invstd[c] = static_cast<float>(invstd);
          const double mom = p.momentum;
          if (a.running_mean)
            a.running_mean[c] = static_cast<float>((1 - mom) * a.running_mean[c] + mom * m.mean);
          if (a.running_var)
            a.running_var[c] =
                static_cast<float>((1 - mom) * a.running_var[c] + mom * m.m2 / (m.count - 1));
        }
        const Affine k =
            affine_about(m.mean, (a.gamma ? a.gamma[c] : 1.0) * invstd, a.beta ? a.beta[c] : 0.0);
        range_apply<DT>(
            x + c * hw, y + c * hw, slice, b, e, [&](Index) NB_OMP_LAMBDA { return k; },
            prefetch_next && next >= 0 ? x + next * hw : nullptr);
      });
}

template <DType DT>
NB_OMP_KERNEL void backward_nchw(const Problem& p, const KernelArgs& a, Sums* slots,
                                 bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  const E* dy = static_cast<const E*>(a.dy);
  E* dx = static_cast<E*>(a.dx);
  const Index hw = p.spatial();
  const Index count = p.n * hw;
  const Segments slice = channel_slice(p);
  run_units(
      p.c, count, 1, false, slots,
      [&](Index c, Index b, Index e, Sums* part) NB_OMP_LAMBDA {
        range_backward_sums<DT>(x + c * hw, dy + c * hw, slice, b, e, a.mean[c],
                                [&](Index, double s1, double s2) NB_OMP_LAMBDA {
                                  part->s1 += s1;
                                  part->s2 += s2;
                                });
      },
      [&](Index c, Index b, Index e, const Sums* all, bool owner, Index next) NB_OMP_LAMBDA {
        const double invstd = a.invstd[c];
        const double gamma = a.gamma ? a.gamma[c] : 1.0;
        if (owner) {
          if (a.dgamma) a.dgamma[c] = static_cast<float>(invstd * all->s2);
          if (a.dbeta) a.dbeta[c] = static_cast<float>(all->s1);
        }
        const Gradient k =
            gradient_of(a.mean[c], invstd, gamma, gamma * all->s1, gamma * all->s2, count);
        const bool pf = prefetch_next && next >= 0;
        range_backward_apply<DT>(
            x + c * hw, dy + c * hw, dx + c * hw, slice, b, e,
            [&](Index) NB_OMP_LAMBDA { return k; }, pf ? x + next * hw : nullptr,
            pf ? dy + next * hw : nullptr);
      });
}

/// Inference, any layout: the tensor as `segments` runs of `length` elements whose coefficient
/// index is channel(segment, offset); each thread streams its share of the flat tensor.
template <DType DT>
NB_OMP_KERNEL void forward_infer(const Problem& p, const KernelArgs& a, const float* shift,
                                 const float* scale, const float* bias) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  E* y = static_cast<E*>(a.y);
  const int threads = omp_get_num_threads(), t = omp_get_thread_num();
  const Index numel = p.numel();
  const Index b = share_begin(numel, t, threads), e = share_begin(numel, t + 1, threads);
  if (p.layout == Layout::nchw) {
    // Planes of H*W elements; plane s is channel s % C.
    const Index hw = p.spatial();
    for_each_piece(Segments{p.n * p.c, hw, hw}, b, e,
                   [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
                     const Index c = s % p.c;
                     const Affine k{shift[c], scale[c], bias[c]};
                     const E* xs = x + s * hw + o;
                     E* ys = y + s * hw + o;
#pragma omp simd
                     for (Index i = 0; i < len; ++i)
                       store<DT>(ys, i, (load<DT>(xs, i) - k.shift) * k.scale + k.bias);
                   });
  } else {
    // Rows of C channels; element o + i of a row is channel o + i.
    const Index C = p.c;
    for_each_piece(Segments{p.n * p.spatial(), C, C}, b, e,
                   [&](Index s, Index o, Index len) NB_OMP_LAMBDA {
                     const E* xs = x + s * C + o;
                     E* ys = y + s * C + o;
                     const float* sh = shift + o;
                     const float* sc = scale + o;
                     const float* bi = bias + o;
#pragma omp simd
                     for (Index i = 0; i < len; ++i)
                       store<DT>(ys, i, (load<DT>(xs, i) - sh[i]) * sc[i] + bi[i]);
                   });
  }
}

void run_forward_infer(const Problem& p, const KernelArgs& a) {
  const Index C = p.c;
  std::vector<float> shift(C), scale(C), bias(C);
  for (Index c = 0; c < C; ++c) {
    shift[c] = a.running_mean[c];
    scale[c] = static_cast<float>((a.gamma ? a.gamma[c] : 1.0) /
                                  std::sqrt(static_cast<double>(a.running_var[c]) + p.eps));
    bias[c] = a.beta ? a.beta[c] : 0.0f;
  }
  with_dtype(p.dtype, [&]<DType DT>() {
#pragma omp parallel
    forward_infer<DT>(p, a, shift.data(), scale.data(), bias.data());
  });
}

}  // namespace

void batchnorm(const Problem& p, const KernelArgs& a) {
  // NHWC with C = 1 is the NCHW layout; NCHW with H = W = 1 is the NHWC one (an (N, C) matrix).
  const bool channels_last = p.c > 1 && (p.layout == Layout::nhwc || p.spatial() == 1);
  if (p.pass == Pass::fwd_infer) {
    Problem q = p;
    q.layout = channels_last ? Layout::nhwc : Layout::nchw;
    run_forward_infer(q, a);
    return;
  }
  if (channels_last) {
    ChannelsLast s{1, p.n * p.spatial(), p.c, p.c, p.eps, p.momentum};
    if (p.pass == Pass::fwd_train)
      channels_last_forward(s, p.dtype, a);
    else
      channels_last_backward(s, p.dtype, a);
    return;
  }
  const Index threads = omp_get_max_threads();
  const Index slice_bytes = p.n * p.spatial() * static_cast<Index>(element_size(p.dtype));
  if (p.pass == Pass::fwd_train) {
    std::vector<Moments> slots(run_units_slots(threads));
    const bool pf = prefetch_worthwhile(slice_bytes);
    with_dtype(p.dtype, [&]<DType DT>() {
#pragma omp parallel
      forward_train_nchw<DT>(p, a, slots.data(), pf);
    });
  } else {
    std::vector<Sums> slots(run_units_slots(threads));
    const bool pf = prefetch_worthwhile(2 * slice_bytes);
    with_dtype(p.dtype, [&]<DType DT>() {
#pragma omp parallel
      backward_nchw<DT>(p, a, slots.data(), pf);
    });
  }
}

}  // namespace nb::omp
