// RMSNorm reference in fp64 (Zhang & Sennrich 2019; PyTorch torch.nn.RMSNorm; CONVENTIONS
// section 1).
//
// normalized_shape = (C, H, W): per sample n, over its M = C*H*W elements and with no mean,
//   invstd_n = 1 / sqrt(sum(x^2) / M + eps)      ("invrms"; saved as invstd, no mean is saved)
//   y = gamma_k * x * invstd_n,  k = c*H*W + h*W + w (C-major whatever the layout); no beta.
// Backward, with xhat = x * invstd_n and g = gamma_k * dy, sums over the sample's M elements:
//   dx = invstd_n * (g - xhat * sum(g * xhat) / M)
//   dgamma_k = sum over n of dy * xhat
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

void rmsnorm_statistics(const Problem& p, const std::vector<double>& x,
                        std::vector<double>& invstd) {
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n) {
    double sum_sq = 0.0;
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const double v = x[p.offset(n, c, h, w)];
          sum_sq += v * v;
        }
    invstd[n] = 1.0 / std::sqrt(sum_sq / m + p.eps);
  }
}

void rmsnorm_normalize(const Problem& p, const std::vector<double>& invstd, Tensors& t) {
  for (std::int64_t n = 0; n < p.n; ++n)
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const double gamma = t.gamma.empty() ? 1.0 : t.gamma[param_index(p, c, h, w)];
          t.y[i] = gamma * t.x[i] * invstd[n];
        }
}

void rmsnorm_backward(const Problem& p, Tensors& t) {
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n) {
    double sum_g_xhat = 0.0;
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const std::int64_t k = param_index(p, c, h, w);
          const double g = (t.gamma.empty() ? 1.0 : t.gamma[k]) * t.dy[i];
          const double xhat = t.x[i] * t.invstd[n];
          sum_g_xhat += g * xhat;
          if (!t.dgamma.empty()) t.dgamma[k] += t.dy[i] * xhat;
        }
    for (std::int64_t c = 0; c < p.c; ++c)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const double g = (t.gamma.empty() ? 1.0 : t.gamma[param_index(p, c, h, w)]) * t.dy[i];
          const double xhat = t.x[i] * t.invstd[n];
          t.dx[i] = t.invstd[n] * (g - xhat * sum_g_xhat / m);
        }
  }
}

}  // namespace nb::ref
