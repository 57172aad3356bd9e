#include "traffic.hpp"

#include <fmt/format.h>

namespace nb {

std::int64_t reduction_unit_elements(const Problem& p) {
  const bool nchw = p.layout == Layout::nchw;
  switch (p.method) {
    case Method::batchnorm:
      return nchw ? p.n * p.spatial() : p.numel();
    case Method::layernorm:
    case Method::rmsnorm:
      return p.c * p.spatial();
    case Method::groupnorm:
      return nchw ? (p.c / p.groups) * p.spatial() : p.c * p.spatial();
    case Method::instancenorm:
      return nchw ? p.spatial() : p.c * p.spatial();
  }
  return p.numel();
}

Traffic traffic(const Problem& p, int threads, std::uint64_t llc_bytes) {
  Traffic t;
  const std::uint64_t e = element_size(p.dtype);
  const std::uint64_t numel = static_cast<std::uint64_t>(p.numel());
  const std::uint64_t tensors_per_unit = p.pass == Pass::bwd ? 2 : 1;  // x, or x and dy
  t.unit_bytes = static_cast<std::uint64_t>(reduction_unit_elements(p)) * e * tensors_per_unit;
  t.unit_fits = t.unit_bytes <= llc_bytes / (2 * static_cast<std::uint64_t>(threads));
  t.x_reads = t.unit_fits ? 1 : 2;

  std::uint64_t passes = 0;  // multiples of numel*e
  if (p.method == Method::batchnorm && p.pass == Pass::fwd_infer) {
    passes = 2;
    t.x_reads = 1;
  } else if (p.pass == Pass::bwd) {
    passes = t.unit_fits ? 3 : 5;
  } else {
    passes = t.unit_fits ? 2 : 3;
  }
  const std::uint64_t f = 4;  // fp32 parameters and statistics
  const std::uint64_t params = static_cast<std::uint64_t>(p.param_count());
  const std::uint64_t stats = static_cast<std::uint64_t>(p.stats_count());
  const std::uint64_t n_param_tensors = p.affine ? (p.has_beta() ? 2 : 1) : 0;
  const std::uint64_t n_stat_tensors = p.method == Method::rmsnorm ? 1 : 2;
  std::uint64_t small = params * f * n_param_tensors;  // gamma/beta read
  if (p.pass == Pass::fwd_train) {
    small += stats * f * n_stat_tensors;                          // mean, invstd written
    if (p.method == Method::batchnorm) small += 2 * 2 * p.c * f;  // running stats read+write
  } else if (p.pass == Pass::fwd_infer) {
    if (p.method == Method::batchnorm) small += 2 * p.c * f;  // running stats read
  } else {
    small += stats * f * n_stat_tensors;    // saved statistics read
    small += params * f * n_param_tensors;  // dgamma/dbeta written
  }
  t.bytes = passes * numel * e + small;
  t.model = fmt::format("{}x{}", passes, t.unit_fits ? "" : " (unit exceeds LLC share)");
  return t;
}

}  // namespace nb
