// Backward of the `openmp` backend for degenerate reduction units of at most 2 elements (BatchNorm
// with N*H*W = 2, GroupNorm with (C/G)*H*W <= 2, InstanceNorm with H*W <= 2, LayerNorm/RMSNorm
// with C*H*W <= 2), every method and layout, computed in fp64, serially.
//
// Why: with M <= 2 the normalised unit has at most one degree of freedom, and dx is what is left
// after the projection on xhat cancels it, dx ~ gamma * dy * invstd * (1 - xhat^2) with
// 1 - xhat^2 = eps * invstd^2 (e.g. RMSNorm with D = 1, BatchNorm of two values). An fp32
// evaluation of the usual formula loses var / eps (~1e5) in relative accuracy there; fp64 sums and
// fp64 coefficients keep it. Such units are not a performance target.
//
// Algorithm: per unit, sums of g*dy and g*dy*(x - mean) in fp64 over its elements (found with
// Problem::offset, any layout), then dx = invstd*g*dy - (x - mean)*invstd^3*sum(g dy (x-mean))/M
// - invstd*sum(g dy)/M (RMSNorm: mean = 0 and no last term), dgamma/dbeta accumulated in fp64.
//
// Limits: serial and scalar, for units of <= 2 elements only (the caller checks).
#include <vector>

#include "common.hpp"

namespace nb::omp {

void degenerate_backward(const Problem& p, const KernelArgs& a) {
  const Index hw = p.spatial(), G = p.effective_groups(), group_size = p.c / G;
  const bool rms = p.method == Method::rmsnorm;
  // Calls f(memory offset, parameter index) for every element of unit u.
  auto for_each_element = [&](Index u, auto&& f) {
    auto plane = [&](Index n, Index c, auto&& param) {
      for (Index i = 0; i < hw; ++i) f(p.offset(n, c, i / p.w, i % p.w), param(c, i));
    };
    switch (p.method) {
      case Method::batchnorm:
        for (Index n = 0; n < p.n; ++n) plane(n, u, [](Index c, Index) { return c; });
        break;
      case Method::layernorm:
      case Method::rmsnorm:
        for (Index c = 0; c < p.c; ++c) plane(u, c, [&](Index ch, Index i) { return ch * hw + i; });
        break;
      case Method::groupnorm:
      case Method::instancenorm:
        for (Index c = (u % G) * group_size; c < (u % G + 1) * group_size; ++c)
          plane(u / G, c, [](Index ch, Index) { return ch; });
        break;
    }
  };
  std::vector<double> dgamma(p.param_count(), 0.0), dbeta(p.param_count(), 0.0);
  for (Index u = 0; u < p.stats_count(); ++u) {
    const double mean = rms ? 0.0 : a.mean[u];
    const double invstd = a.invstd[u];
    double sum_gdy = 0, sum_gdy_xmu = 0, count = 0;
    for_each_element(u, [&](Index at, Index param) {
      const double gamma = a.gamma ? a.gamma[param] : 1.0;
      const double dy = load_as_double(a.dy, p.dtype, at);
      const double xmu = load_as_double(a.x, p.dtype, at) - mean;
      sum_gdy += gamma * dy;
      sum_gdy_xmu += gamma * dy * xmu;
      count += 1;
      dgamma[param] += dy * xmu * invstd;
      dbeta[param] += dy;
    });
    for_each_element(u, [&](Index at, Index param) {
      const double gamma = a.gamma ? a.gamma[param] : 1.0;
      const double dy = load_as_double(a.dy, p.dtype, at);
      const double xmu = load_as_double(a.x, p.dtype, at) - mean;
      const double dx = invstd * gamma * dy - xmu * invstd * invstd * invstd * sum_gdy_xmu / count -
                        (rms ? 0.0 : invstd * sum_gdy / count);
      store_from_double(a.dx, p.dtype, at, dx);
    });
  }
  for (Index j = 0; j < p.param_count(); ++j) {
    if (a.dgamma) a.dgamma[j] = static_cast<float>(dgamma[j]);
    if (a.dbeta) a.dbeta[j] = static_cast<float>(dbeta[j]);
  }
}

}  // namespace nb::omp
