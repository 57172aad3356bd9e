// Backward of the avx512 backend for degenerate reduction units of at most 2 elements (BatchNorm
// with N*H*W = 2, LayerNorm/RMSNorm with C*H*W <= 2, GroupNorm with (C/G)*H*W <= 2, InstanceNorm
// with H*W <= 2), every method and layout, in fp64, serially, without intrinsics.
//
// Why: with M <= 2 a unit has at most one degree of freedom and the projection on xhat removes it:
// dx ~ gamma * invstd * dy * eps / (var + eps), what is left after terms of size gamma*invstd*dy
// cancel. An fp32 evaluation of the usual dx = k*dy + (x - mean)*c1 + c0 keeps only about
// 1e-7 * (var + eps) / eps of it relative accuracy; fp64 sums and coefficients keep it all. Such
// units are not a performance target.
//
// Algorithm: per unit, sum(g*dy) and sum(g*dy*(x - mean)) in fp64 over its elements (located with
// Problem::offset, any layout), then dx = invstd*g*dy + (x - mean)*c1 + c0 with the coefficients
// of CONVENTIONS section 1 (RMSNorm: mean = 0, c0 = 0); dgamma/dbeta accumulated in fp64.
//
// Limits: scalar and single-threaded; called for reduction_size() <= 2 only (register.cpp).
#include <vector>

#include "kernels/avx512/kernels.hpp"

namespace nb::avx512 {

void degenerate_backward(const Problem& p, const KernelArgs& a) {
  const std::int64_t hw = p.spatial(), groups = p.effective_groups(), per_group = p.c / groups;
  const bool rms = p.method == Method::rmsnorm;
  const double count = static_cast<double>(p.reduction_size());
  // Memory offsets and parameter indices of the elements of unit u.
  std::vector<std::int64_t> at, param;
  auto unit_elements = [&](std::int64_t u) {
    at.clear(), param.clear();
    auto plane = [&](std::int64_t n, std::int64_t c, bool elementwise) {
      for (std::int64_t s = 0; s < hw; ++s) {
        at.push_back(p.offset(n, c, s / p.w, s % p.w));
        param.push_back(elementwise ? c * hw + s : c);
      }
    };
    switch (p.method) {
      case Method::batchnorm:
        for (std::int64_t n = 0; n < p.n; ++n) plane(n, u, false);
        break;
      case Method::layernorm:
      case Method::rmsnorm:
        for (std::int64_t c = 0; c < p.c; ++c) plane(u, c, true);
        break;
      case Method::groupnorm:
      case Method::instancenorm:
        for (std::int64_t c = (u % groups) * per_group; c < (u % groups + 1) * per_group; ++c)
          plane(u / groups, c, false);
        break;
    }
  };
  std::vector<double> dgamma(p.param_count(), 0.0), dbeta(p.param_count(), 0.0);
  for (std::int64_t u = 0; u < p.stats_count(); ++u) {
    unit_elements(u);
    const double mean = rms ? 0.0 : a.mean[u], invstd = a.invstd[u];
    double sum_gdy = 0, sum_gdy_xmu = 0;
    for (std::size_t i = 0; i < at.size(); ++i) {
      const double x = load_as_double(a.x, p.dtype, at[i]) - mean;
      const double dy = load_as_double(a.dy, p.dtype, at[i]);
      const double g = a.gamma ? a.gamma[param[i]] : 1.0;
      sum_gdy += g * dy;
      sum_gdy_xmu += g * dy * x;
      dgamma[param[i]] += dy * x * invstd;
      dbeta[param[i]] += dy;
    }
    const double c1 = -invstd * invstd * invstd * sum_gdy_xmu / count;
    const double c0 = rms ? 0.0 : -invstd * sum_gdy / count;
    for (std::size_t i = 0; i < at.size(); ++i) {
      const double x = load_as_double(a.x, p.dtype, at[i]) - mean;
      const double dy = load_as_double(a.dy, p.dtype, at[i]);
      const double g = a.gamma ? a.gamma[param[i]] : 1.0;
      store_from_double(a.dx, p.dtype, at[i], invstd * g * dy + x * c1 + c0);
    }
  }
  for (std::int64_t i = 0; i < p.param_count(); ++i) {
    if (a.dgamma) a.dgamma[i] = static_cast<float>(dgamma[i]);
    if (a.dbeta) a.dbeta[i] = static_cast<float>(dbeta[i]);
  }
}

}  // namespace nb::avx512
