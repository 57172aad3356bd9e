// BatchNorm reference in fp64 (Ioffe & Szegedy 2015, Algorithms 1 and 2; PyTorch
// aten/src/ATen/native/Normalization.cpp; CONVENTIONS section 1).
//
// Statistics per channel c over the M = N*H*W elements (n, c, h, w) of that channel: two passes,
// mean first, then the biased variance sum((x - mean)^2) / M, invstd = 1 / sqrt(var + eps).
//   y  = gamma_c * (x - mean_c) * invstd_c + beta_c
//   running_mean <- (1 - momentum) * running_mean + momentum * mean
//   running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)   (unbiased)
// Backward (training mode, statistics depend on x), sums over the channel's M elements:
//   dbeta_c = sum(dy), dgamma_c = sum(dy * xhat), xhat = (x - mean_c) * invstd_c
//   dx = gamma_c * invstd_c / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))
// Elements are addressed by logical (n, c, h, w) through Problem::offset, so NCHW and NHWC share
// the code. Entry points are declared and called by reference.cpp after the size checks.
#include <cmath>
#include <vector>

#include "reference.hpp"

namespace nb::ref {

namespace {

/// Batch mean and biased variance of every channel, two passes.
void channel_mean_var(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                      std::vector<double>& var) {
  const double m = static_cast<double>(p.reduction_size());
  mean.assign(static_cast<std::size_t>(p.c), 0.0);
  var.assign(static_cast<std::size_t>(p.c), 0.0);
  for (std::int64_t c = 0; c < p.c; ++c) {
    double sum = 0.0;
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) sum += x[p.offset(n, c, h, w)];
    mean[c] = sum / m;
    double sum_sq = 0.0;
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const double d = x[p.offset(n, c, h, w)] - mean[c];
          sum_sq += d * d;
        }
    var[c] = sum_sq / m;
  }
}

}  // namespace

void batchnorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd) {
  std::vector<double> var;
  channel_mean_var(p, x, mean, var);
  for (std::int64_t c = 0; c < p.c; ++c) invstd[c] = 1.0 / std::sqrt(var[c] + p.eps);
}

void batchnorm_update_running(const Problem& p, const std::vector<double>& x,
                              std::vector<double>& running_mean, std::vector<double>& running_var) {
  std::vector<double> mean, var;
  channel_mean_var(p, x, mean, var);
  const double m = static_cast<double>(p.reduction_size());  // > 1, checked by validate()
  for (std::int64_t c = 0; c < p.c; ++c) {
    running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean[c];
    running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * var[c] * m / (m - 1.0);
  }
}

void batchnorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t) {
  for (std::int64_t c = 0; c < p.c; ++c) {
    const double gamma = t.gamma.empty() ? 1.0 : t.gamma[c];
    const double beta = t.beta.empty() ? 0.0 : t.beta[c];
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          t.y[i] = gamma * (t.x[i] - mean[c]) * invstd[c] + beta;
        }
  }
}

void batchnorm_backward(const Problem& p, Tensors& t) {
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t c = 0; c < p.c; ++c) {
    const double gamma = t.gamma.empty() ? 1.0 : t.gamma[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const double xhat = (t.x[i] - t.mean[c]) * t.invstd[c];
          sum_dy += t.dy[i];
          sum_dy_xhat += t.dy[i] * xhat;
        }
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) {
          const std::int64_t i = p.offset(n, c, h, w);
          const double xhat = (t.x[i] - t.mean[c]) * t.invstd[c];
          t.dx[i] = gamma * t.invstd[c] / m * (m * t.dy[i] - sum_dy - xhat * sum_dy_xhat);
        }
    if (!t.dgamma.empty()) t.dgamma[c] = sum_dy_xhat;
    if (!t.dbeta.empty()) t.dbeta[c] = sum_dy;
  }
}

}  // namespace nb::ref
