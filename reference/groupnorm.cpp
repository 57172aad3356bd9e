// GroupNorm and InstanceNorm reference in fp64 (Wu & He 2018; Ulyanov et al. 2016; PyTorch
// aten/src/ATen/native/group_norm.cpp; CONVENTIONS section 1).
//
// The C channels of each sample are split into G groups of C/G consecutive channels (G = C for
// InstanceNorm: one group per (n, c) plane). Statistics per (n, g) over the M = (C/G)*H*W elements
// of channels g*C/G .. (g+1)*C/G - 1 at every spatial position, two passes (mean, then the biased
// variance), invstd = 1 / sqrt(var + eps); saved in (N, G) order ((N, C) for InstanceNorm).
//   y = gamma_c * (x - mean_ng) * invstd_ng + beta_c      (gamma, beta per channel)
// Backward, with g = gamma_c * dy and sums over the group's M elements:
//   dx = invstd_ng / M * (M * g - sum(g) - xhat * sum(g * xhat)),  xhat = (x - mean_ng) * invstd_ng
//   dgamma_c = sum over n, h, w of dy * xhat,  dbeta_c = sum over n, h, w of dy
// Entry points are declared and called by reference.cpp after the size checks.
#include <cmath>
#include <vector>

#include "reference.hpp"

namespace nb::ref {

void groupnorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd) {
  const std::int64_t groups = p.effective_groups();
  const std::int64_t channels_per_group = p.c / groups;
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t s = n * groups + g;
      const std::int64_t c_begin = g * channels_per_group, c_end = c_begin + channels_per_group;
      double sum = 0.0;
      for (std::int64_t c = c_begin; c < c_end; ++c)
        for (std::int64_t h = 0; h < p.h; ++h)
          for (std::int64_t w = 0; w < p.w; ++w) sum += x[p.offset(n, c, h, w)];
      mean[s] = sum / m;
      double sum_sq = 0.0;
      for (std::int64_t c = c_begin; c < c_end; ++c)
        for (std::int64_t h = 0; h < p.h; ++h)
          for (std::int64_t w = 0; w < p.w; ++w) {
            const double d = x[p.offset(n, c, h, w)] - mean[s];
            sum_sq += d * d;
          }
      invstd[s] = 1.0 / std::sqrt(sum_sq / m + p.eps);
    }
}

void groupnorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t) {
  const std::int64_t groups = p.effective_groups();
  const std::int64_t channels_per_group = p.c / groups;
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t c = 0; c < p.c; ++c) {
      const std::int64_t s = n * groups + c / channels_per_group;
      const double gamma = t.gamma.empty() ? 1.0 : t.gamma[c];
      const double beta = t.beta.empty() ? 0.0 : t.beta[c];
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          t.y[i] = gamma * (t.x[i] - mean[s]) * invstd[s] + beta;
        }
    }
}

void groupnorm_backward(const Problem& p, Tensors& t) {
  const std::int64_t groups = p.effective_groups();
  const std::int64_t channels_per_group = p.c / groups;
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t g = 0; g < groups; ++g) {
      const std::int64_t s = n * groups + g;
      const std::int64_t c_begin = g * channels_per_group, c_end = c_begin + channels_per_group;
      double sum_g = 0.0, sum_g_xhat = 0.0;
      for (std::int64_t c = c_begin; c < c_end; ++c) {
        const double gamma = t.gamma.empty() ? 1.0 : t.gamma[c];
        for (std::int64_t h = 0; h < p.h; ++h)
          for (std::int64_t w = 0; w < p.w; ++w) {
            const std::int64_t i = p.offset(n, c, h, w);
            const double xhat = (t.x[i] - t.mean[s]) * t.invstd[s];
            sum_g += gamma * t.dy[i];
            sum_g_xhat += gamma * t.dy[i] * xhat;
            if (!t.dgamma.empty()) t.dgamma[c] += t.dy[i] * xhat;
            if (!t.dbeta.empty()) t.dbeta[c] += t.dy[i];
          }
      }
      for (std::int64_t c = c_begin; c < c_end; ++c) {
        const double gamma = t.gamma.empty() ? 1.0 : t.gamma[c];
        for (std::int64_t h = 0; h < p.h; ++h)
          for (std::int64_t w = 0; w < p.w; ++w) {
            const std::int64_t i = p.offset(n, c, h, w);
            const double xhat = (t.x[i] - t.mean[s]) * t.invstd[s];
            t.dx[i] = t.invstd[s] / m * (m * gamma * t.dy[i] - sum_g - xhat * sum_g_xhat);
          }
      }
    }
}

}  // namespace nb::ref
