// LayerNorm reference in fp64 (Ba, Kiros & Hinton 2016; PyTorch
// aten/src/ATen/native/layer_norm.cpp; CONVENTIONS section 1).
//
// normalized_shape = (C, H, W): statistics per sample n over its M = C*H*W elements, two passes
// (mean, then the biased variance), invstd = 1 / sqrt(var + eps). gamma and beta are elementwise
// over normalized_shape, index k = c*H*W + h*W + w whatever the layout of x.
//   y = gamma_k * (x - mean_n) * invstd_n + beta_k
// Backward, with g = gamma_k * dy and sums over the sample's M elements:
//   dx = invstd_n / M * (M * g - sum(g) - xhat * sum(g * xhat)),  xhat = (x - mean_n) * invstd_n
//   dgamma_k = sum over n of dy * xhat,  dbeta_k = sum over n of dy
// Entry points are declared and called by reference.cpp after the size checks.
#include <cmath>
#include <vector>

#include "reference.hpp"

namespace nb::ref {

namespace {

/// Index of (c, h, w) in normalized_shape, C-major.
std::int64_t param_index(const Problem& p, std::int64_t c, std::int64_t h, std::int64_t w) {
  return (c * p.h + h) * p.w + w;
}

}  // namespace

void layernorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd) {
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n) {
    double sum = 0.0;
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) sum += x[p.offset(n, c, h, w)];
    mean[n] = sum / m;
    double sum_sq = 0.0;
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const double d = x[p.offset(n, c, h, w)] - mean[n];
          sum_sq += d * d;
        }
    invstd[n] = 1.0 / std::sqrt(sum_sq / m + p.eps);
  }
}

void layernorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t) {
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const std::int64_t k = param_index(p, c, h, w);
          const double gamma = t.gamma.empty() ? 1.0 : t.gamma[k];
          const double beta = t.beta.empty() ? 0.0 : t.beta[k];
          t.y[i] = gamma * (t.x[i] - mean[n]) * invstd[n] + beta;
        }
}

void layernorm_backward(const Problem& p, Tensors& t) {
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n) {
    double sum_g = 0.0, sum_g_xhat = 0.0;
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const std::int64_t k = param_index(p, c, h, w);
          const double g = (t.gamma.empty() ? 1.0 : t.gamma[k]) * t.dy[i];
          const double xhat = (t.x[i] - t.mean[n]) * t.invstd[n];
          sum_g += g;
          sum_g_xhat += g * xhat;
          if (!t.dgamma.empty()) t.dgamma[k] += t.dy[i] * xhat;
          if (!t.dbeta.empty()) t.dbeta[k] += t.dy[i];
        }
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const double g = (t.gamma.empty() ? 1.0 : t.gamma[param_index(p, c, h, w)]) * t.dy[i];
          const double xhat = (t.x[i] - t.mean[n]) * t.invstd[n];
          t.dx[i] = t.invstd[n] / m * (m * g - sum_g - xhat * sum_g_xhat);
        }
  }
}

}  // namespace nb::ref
