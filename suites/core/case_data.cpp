#include "case_data.hpp"

#include <omp.h>

#include <cmath>
#include <numbers>
#include <stdexcept>

namespace nb {

std::string_view to_string(Distribution d) {
  return d == Distribution::normal ? "normal" : "large_offset";
}

Distribution parse_distribution(std::string_view s) {
  if (s == "normal") return Distribution::normal;
  if (s == "large_offset") return Distribution::large_offset;
  throw std::invalid_argument("unknown distribution '" + std::string(s) +
                              "' (expected normal, large_offset)");
}

double distribution_offset(Distribution d, DType dt) {
  if (d == Distribution::normal) return 0.0;
  switch (dt) {
    case DType::f32:
      return 1e4;
    case DType::f16:
      return 256.0;
    case DType::bf16:
      return 32.0;
  }
  return 0.0;
}

std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

namespace {

// splitmix64: a tiny, well-mixed generator whose stream is defined here, not by the standard
// library, so inputs are identical across compilers and thread counts.
struct SplitMix {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

enum class Fill { normal, uniform };

// Fills t with offset + N(0,1) (Box-Muller) or lo + (hi-lo)*U(0,1), in blocks of 4096 elements
// seeded by (seed, block index) so the result does not depend on the thread count.
void fill(HostTensor& t, Fill kind, std::uint64_t seed, double a, double b) {
  const std::int64_t n = static_cast<std::int64_t>(t.numel());
  const std::int64_t block = 4096;
  const std::int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (std::int64_t bi = 0; bi < blocks; ++bi) {
    SplitMix rng{seed ^ (0xd1b54a32d192ed03ull * static_cast<std::uint64_t>(bi + 1))};
    const std::int64_t end = std::min(n, (bi + 1) * block);
    for (std::int64_t i = bi * block; i < end; ++i) {
      double v;
      if (kind == Fill::uniform) {
        v = a + (b - a) * rng.uniform();
      } else {
        const double u1 = 1.0 - rng.uniform();  // (0, 1]
        const double u2 = rng.uniform();
        v = a + std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
      }
      t.set(static_cast<std::size_t>(i), v);
    }
  }
}

}  // namespace

CaseInputs make_inputs(const Problem& p, Distribution dist, std::uint64_t seed,
                       std::size_t misalign_bytes) {
  require_valid(p);
  CaseInputs in;
  const std::size_t numel = static_cast<std::size_t>(p.numel());
  const double offset = distribution_offset(dist, p.dtype);
  in.x = HostTensor(p.dtype, numel, misalign_bytes);
  fill(in.x, Fill::normal, seed ^ 0x1, offset, 0);
  if (p.affine) {
    in.gamma = HostTensor(DType::f32, static_cast<std::size_t>(p.param_count()));
    fill(in.gamma, Fill::uniform, seed ^ 0x2, 0.5, 1.5);
    if (p.has_beta()) {
      in.beta = HostTensor(DType::f32, static_cast<std::size_t>(p.param_count()));
      fill(in.beta, Fill::uniform, seed ^ 0x3, -0.5, 0.5);
    }
  }
  if (p.method == Method::batchnorm && p.pass != Pass::bwd) {
    in.running_mean = HostTensor(DType::f32, static_cast<std::size_t>(p.c));
    in.running_var = HostTensor(DType::f32, static_cast<std::size_t>(p.c));
    fill(in.running_mean, Fill::uniform, seed ^ 0x4, offset - 0.5, offset + 0.5);
    fill(in.running_var, Fill::uniform, seed ^ 0x5, 0.5, 1.5);
  }
  if (p.pass == Pass::bwd) {
    in.dy = HostTensor(p.dtype, numel, misalign_bytes);
    fill(in.dy, Fill::normal, seed ^ 0x6, 0.0, 0);
    std::vector<double> mean, invstd;
    ref::statistics(p, in.x.to_double(), mean, invstd);
    if (p.method != Method::rmsnorm) {
      in.mean = HostTensor(DType::f32, mean.size());
      in.mean.assign(mean);
    }
    in.invstd = HostTensor(DType::f32, invstd.size());
    in.invstd.assign(invstd);
  }
  return in;
}

CaseOutputs make_outputs(const Problem& p, const CaseInputs& in, std::size_t misalign_bytes) {
  CaseOutputs out;
  const std::size_t numel = static_cast<std::size_t>(p.numel());
  const std::size_t stats = static_cast<std::size_t>(p.stats_count());
  if (p.pass == Pass::bwd) {
    out.dx = HostTensor(p.dtype, numel, misalign_bytes);
    if (p.affine) {
      out.dgamma = HostTensor(DType::f32, static_cast<std::size_t>(p.param_count()));
      if (p.has_beta())
        out.dbeta = HostTensor(DType::f32, static_cast<std::size_t>(p.param_count()));
    }
    return out;
  }
  out.y = HostTensor(p.dtype, numel, misalign_bytes);
  if (p.pass == Pass::fwd_train) {
    if (p.method != Method::rmsnorm) out.mean = HostTensor(DType::f32, stats);
    out.invstd = HostTensor(DType::f32, stats);
  }
  if (p.method == Method::batchnorm) {
    out.running_mean = in.running_mean.clone();
    out.running_var = in.running_var.clone();
  }
  return out;
}

KernelArgs bind(const Problem& p, const CaseInputs& in, CaseOutputs& out) {
  KernelArgs a;
  a.x = in.x.data();
  a.gamma = in.gamma.f32();
  if (p.pass == Pass::bwd) {
    a.dy = in.dy.data();
    a.mean = const_cast<float*>(in.mean.f32());  // read-only in bwd
    a.invstd = const_cast<float*>(in.invstd.f32());
    a.dx = out.dx.data();
    a.dgamma = out.dgamma.f32();
    a.dbeta = out.dbeta.f32();
    return a;
  }
  a.beta = in.beta.f32();
  a.y = out.y.data();
  a.mean = out.mean.f32();
  a.invstd = out.invstd.f32();
  a.running_mean = out.running_mean.f32();
  a.running_var = out.running_var.f32();
  return a;
}

ref::Tensors reference_outputs(const Problem& p, const CaseInputs& in) {
  ref::Tensors t;
  t.x = in.x.to_double();
  t.gamma = in.gamma.to_double();
  t.beta = in.beta.to_double();
  t.running_mean = in.running_mean.to_double();
  t.running_var = in.running_var.to_double();
  if (p.pass == Pass::bwd) {
    t.dy = in.dy.to_double();
    t.mean = in.mean.to_double();
    t.invstd = in.invstd.to_double();
  }
  ref::run(p, t);
  return t;
}

std::uint64_t case_memory_bytes(const Problem& p, int backends) {
  const std::uint64_t numel = static_cast<std::uint64_t>(p.numel());
  const std::uint64_t e = element_size(p.dtype);
  const std::uint64_t big_inputs = p.pass == Pass::bwd ? 2 : 1;  // x (and dy)
  // inputs in dtype + per backend one big output + fp64 reference: inputs, output, and the
  // to_double temporaries of the comparison (one tensor at a time).
  return numel * (big_inputs * e + static_cast<std::uint64_t>(backends) * e + 8 * (big_inputs + 2));
}

}  // namespace nb
