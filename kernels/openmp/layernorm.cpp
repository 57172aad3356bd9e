// LayerNorm and RMSNorm over a sample's C*H*W elements (rows of a (T, D) tensor: N = T, C = D) in
// the `openmp` backend: forward (y, and saved mean/invstd per row in fwd_train; RMSNorm saves
// invstd = 1/sqrt(mean(x^2) + eps) only) and training-mode backward (dx, per-element dgamma and,
// LayerNorm only, dbeta), NCHW and NHWC, f32/bf16/f16.
//
// Algorithm: a row is the reduction unit and sits in L1/L2: its exact statistics (LayerNorm:
// corrected two-pass per block with Chan merge; RMSNorm: blocked sum of squares, no cancellation
// possible) are taken, then it is normalised with per-element gamma/beta while cached and the
// next row is prefetched. Backward: a first pass over the cached row gives sum(g dy) and
// sum(g dy (x - mean)), the second writes dx and adds dy * xhat, dy into per-thread fp32
// dgamma/dbeta partials, flushed into fp64 every kFlushRows rows and merged once at the end.
//
// Passes over memory: x read once, y written once (forward); x, dy read once, dx written once
// (backward), for rows up to this thread's cache share. Both cores: rows are dealt out whole and
// the N % T leftover rows split between the threads; when N < 16 T the backward splits every
// row instead, so each thread owns a slice of dgamma (no T x D partial buffers for few huge rows).
//
// NHWC: a sample's memory order is (h, w, c) while gamma/beta are indexed c*H*W + h*W + w
// (problem.hpp); with C > 1 and H*W > 1 gamma/beta are permuted into memory order once per call
// (D floats, in parallel) and dgamma/dbeta permuted back, so the row loops stay contiguous.
//
// Limits: the per-call permutation costs 2 x D floats of traffic (NHWC with H*W > 1 only); the
// backward's partial buffers are 24 bytes x D per thread when N >= 16 T; no non-temporal stores.
#include <vector>

#include "common.hpp"

namespace nb::omp {
namespace {

/// Rows a thread adds into its fp32 dgamma/dbeta partials before flushing them into fp64.
constexpr Index kFlushRows = 32;

/// Row position j (memory order) -> parameter index (c*H*W + h*W + w).
struct ParamOrder {
  bool permuted = false;
  Index channels = 1, spatial = 1;
  Index operator()(Index j) const { return permuted ? (j % channels) * spatial + j / channels : j; }
};

ParamOrder param_order(const Problem& p) {
  return {p.layout == Layout::nhwc && p.c > 1 && p.spatial() > 1, p.c, p.spatial()};
}

/// Gathers src (parameter order) into dst (memory order), this thread's share; then a barrier.
NB_OMP_INLINE void permute_params(const ParamOrder& order, Index D, const float* src, float* dst) {
  const int threads = omp_get_num_threads(), t = omp_get_thread_num();
  const Index j1 = share_begin(D, t + 1, threads);
  for (Index j = share_begin(D, t, threads); j < j1; ++j) dst[j] = src[order(j)];
#pragma omp barrier
}

template <DType DT, bool kRms>
NB_OMP_KERNEL void forward_thread(const Problem& p, const KernelArgs& a, Moments* slots,
                                  float* permuted, bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  E* y = static_cast<E*>(a.y);
  const Index D = p.c * p.spatial();
  const ParamOrder order = param_order(p);
  const float* gamma = a.gamma;
  const float* beta = kRms ? nullptr : a.beta;
  if (order.permuted && gamma) {
    permute_params(order, D, gamma, permuted);
    gamma = permuted;
    if (beta) {
      permute_params(order, D, beta, permuted + D);
      beta = permuted + D;
    }
  }
  const Segments row{1, D, D};
  run_units(
      p.n, D, 1, false, slots,
      [&](Index u, Index b, Index e, Moments* part) NB_OMP_LAMBDA {
        const E* xu = x + u * D;
        if constexpr (kRms) {
          double sumsq = 0;
          for (Index b0 = b; b0 < e; b0 += kBlock) {
            const Index len = std::min(kBlock, e - b0);
            float block = 0;
#pragma omp simd reduction(+ : block)
            for (Index i = 0; i < len; ++i) {
              const float v = load<DT>(xu + b0, i);
              block += v * v;
            }
            sumsq += block;
          }
          part[0] = Moments{static_cast<double>(e - b), 0.0, sumsq};  // mean 0: Chan = addition
        } else {
          part[0] = range_moments<DT>(xu, row, b, e);
        }
      },
      [&](Index u, Index b, Index e, const Moments* all, bool owner, Index next) NB_OMP_LAMBDA {
        const Moments& m = all[0];
        const double invstd = invstd_of(m, p.eps);  // RMSNorm: m2 / count = mean(x^2)
        if (owner) {
          if (a.mean && !kRms) a.mean[u] = static_cast<float>(m.mean);
          if (a.invstd) a.invstd[u] = static_cast<float>(invstd);
        }
        const Affine k = kRms ? Affine{0.0f, static_cast<float>(invstd), 0.0f}
                              : affine_about(m.mean, invstd, 0.0);
        const E* xu = x + u * D;
        E* yu = y + u * D;
        auto apply = [&]<bool kGamma, bool kBeta>(Index j0, Index len) NB_OMP_LAMBDA {
          const E* xs = xu + j0;
          E* ys = yu + j0;
          const float* g = kGamma ? gamma + j0 : nullptr;
          const float* bt = kBeta ? beta + j0 : nullptr;
#pragma omp simd
          for (Index i = 0; i < len; ++i) {
            float v = (load<DT>(xs, i) - k.shift) * k.scale + k.bias;
            if constexpr (kGamma) v *= g[i];
            if constexpr (kBeta) v += bt[i];
            store<DT>(ys, i, v);
          }
        };
        for (Index j0 = b; j0 < e; j0 += kBlock) {
          const Index len = std::min(kBlock, e - j0);
          if (gamma && beta)
            apply.template operator()<true, true>(j0, len);
          else if (gamma)
            apply.template operator()<true, false>(j0, len);
          else
            apply.template operator()<false, false>(j0, len);
          if (prefetch_next && next >= 0) prefetch(x + next * D + j0, len * Index{sizeof(E)});
        }
      });
}

template <DType DT, bool kRms>
NB_OMP_KERNEL void backward_thread(const Problem& p, const KernelArgs& a, Sums* slots,
                                   float* permuted, float* partial, double* partial_fp64,
                                   bool split_all, bool prefetch_next) {
  using E = Storage<DT>;
  const E* x = static_cast<const E*>(a.x);
  const E* dy = static_cast<const E*>(a.dy);
  E* dx = static_cast<E*>(a.dx);
  const int threads = omp_get_num_threads(), t = omp_get_thread_num();
  const Index D = p.c * p.spatial();
  const ParamOrder order = param_order(p);
  const float* gamma = a.gamma;
  if (order.permuted && gamma) {
    permute_params(order, D, gamma, permuted);
    gamma = permuted;
  }
  const bool affine = gamma != nullptr;
  const bool with_dbeta = !kRms && a.dbeta != nullptr;
  // dgamma/dbeta partials: one pair of D-arrays per thread, or one shared pair of which each
  // thread owns the slice [b, e) when every row is split.
  const Index b = share_begin(D, t, threads), e = share_begin(D, t + 1, threads);
  const Index own_begin = split_all ? b : 0, own_end = split_all ? e : D;
  const Index mine = split_all ? 0 : 2 * D * t;
  float* dgamma_acc = affine ? partial + mine : nullptr;
  float* dbeta_acc = affine ? dgamma_acc + D : nullptr;
  double* dgamma_sum = affine ? partial_fp64 + mine : nullptr;
  double* dbeta_sum = affine ? dgamma_sum + D : nullptr;
  auto flush = [&]() NB_OMP_LAMBDA {
#pragma omp simd
    for (Index j = own_begin; j < own_end; ++j) {
      dgamma_sum[j] += dgamma_acc[j];
      dbeta_sum[j] += dbeta_acc[j];
      dgamma_acc[j] = dbeta_acc[j] = 0;
    }
  };
  if (affine) {
    for (Index j = own_begin; j < own_end; ++j) {
      dgamma_acc[j] = dbeta_acc[j] = 0;
      dgamma_sum[j] = dbeta_sum[j] = 0;
    }
  }
  Index rows_since_flush = 0;
  run_units(
      p.n, D, 1, split_all, slots,
      [&](Index u, Index b0, Index e0, Sums* part) NB_OMP_LAMBDA {
        const float mean = kRms ? 0.0f : a.mean[u];
        const E* xu = x + u * D;
        const E* dyu = dy + u * D;
        auto sums = [&]<bool kAffine>(Index j0, Index len) NB_OMP_LAMBDA {
          float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
          for (Index i = 0; i < len; ++i) {
            float g_dy = load<DT>(dyu + j0, i);
            if constexpr (kAffine) g_dy *= gamma[j0 + i];
            s1 += g_dy;
            s2 += g_dy * (load<DT>(xu + j0, i) - mean);
          }
          part->s1 += s1;
          part->s2 += s2;
        };
        for (Index j0 = b0; j0 < e0; j0 += kBlock) {
          const Index len = std::min(kBlock, e0 - j0);
          if (affine)
            sums.template operator()<true>(j0, len);
          else
            sums.template operator()<false>(j0, len);
        }
      },
      [&](Index u, Index b0, Index e0, const Sums* all, bool, Index next) NB_OMP_LAMBDA {
        const float mean = kRms ? 0.0f : a.mean[u];
        const double invstd = a.invstd[u];
        const Gradient k =
            gradient_of(mean, invstd, 1.0, kRms ? 0.0 : all->s1, all->s2, static_cast<double>(D));
        const float r = static_cast<float>(invstd);
        const E* xu = x + u * D;
        const E* dyu = dy + u * D;
        E* dxu = dx + u * D;
        auto apply = [&]<bool kAffine, bool kBeta>(Index j0, Index len) NB_OMP_LAMBDA {
          const E* xs = xu + j0;
          const E* dys = dyu + j0;
          E* dxs = dxu + j0;
          const float* g = kAffine ? gamma + j0 : nullptr;
          float* dg = kAffine ? dgamma_acc + j0 : nullptr;
          float* db = kBeta ? dbeta_acc + j0 : nullptr;
#pragma omp simd
          for (Index i = 0; i < len; ++i) {
            const float d = load<DT>(dys, i);
            const float xmu = load<DT>(xs, i) - k.mean;
            const float g_dy = kAffine ? d * g[i] : d;
            store<DT>(dxs, i, k.a * g_dy - xmu * k.b - k.c);
            if constexpr (kAffine) dg[i] += d * xmu * r;
            if constexpr (kBeta) db[i] += d;
          }
        };
        for (Index j0 = b0; j0 < e0; j0 += kBlock) {
          const Index len = std::min(kBlock, e0 - j0);
          if (affine && with_dbeta)
            apply.template operator()<true, true>(j0, len);
          else if (affine)
            apply.template operator()<true, false>(j0, len);
          else
            apply.template operator()<false, false>(j0, len);
          if (prefetch_next && next >= 0) {
            prefetch(x + next * D + j0, len * Index{sizeof(E)});
            prefetch(dy + next * D + j0, len * Index{sizeof(E)});
          }
        }
        if (affine && ++rows_since_flush == kFlushRows) {
          flush();
          rows_since_flush = 0;
        }
      });
  if (!affine) return;
  flush();
#pragma omp barrier
  const int arrays = split_all ? 1 : threads;
  for (Index j = b; j < e; ++j) {
    double dg = 0, db = 0;
    for (int i = 0; i < arrays; ++i) {
      dg += partial_fp64[2 * D * i + j];
      db += partial_fp64[2 * D * i + D + j];
    }
    a.dgamma[order(j)] = static_cast<float>(dg);
    if (with_dbeta) a.dbeta[order(j)] = static_cast<float>(db);
  }
}

}  // namespace

void layernorm_rmsnorm(const Problem& p, const KernelArgs& a) {
  const Index threads = omp_get_max_threads();
  const Index D = p.c * p.spatial();
  const Index row_bytes = D * static_cast<Index>(element_size(p.dtype));
  const bool rms = p.method == Method::rmsnorm;
  std::vector<float> permuted(param_order(p).permuted && a.gamma ? 2 * D : 0);
  if (p.pass != Pass::bwd) {
    std::vector<Moments> slots(run_units_slots(threads));
    const bool pf = prefetch_worthwhile(row_bytes);
    with_dtype(p.dtype, [&]<DType DT>() {
      if (rms) {
#pragma omp parallel
        forward_thread<DT, true>(p, a, slots.data(), permuted.data(), pf);
      } else {
#pragma omp parallel
        forward_thread<DT, false>(p, a, slots.data(), permuted.data(), pf);
      }
    });
    return;
  }
  std::vector<Sums> slots(run_units_slots(threads));
  const bool split_all = p.n < 16 * threads;
  const Index arrays = a.gamma ? (split_all ? 1 : threads) : 0;
  std::vector<float> partial(arrays * 2 * D);
  std::vector<double> partial_fp64(arrays * 2 * D);
  const bool pf = prefetch_worthwhile(2 * row_bytes);
  with_dtype(p.dtype, [&]<DType DT>() {
    if (rms) {
#pragma omp parallel
      backward_thread<DT, true>(p, a, slots.data(), permuted.data(), partial.data(),
                                partial_fp64.data(), split_all, pf);
    } else {
#pragma omp parallel
      backward_thread<DT, false>(p, a, slots.data(), permuted.data(), partial.data(),
                                 partial_fp64.data(), split_all, pf);
    }
  });
}

}  // namespace nb::omp
