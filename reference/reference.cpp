// Dispatch of the fp64 reference (reference.hpp): checks the problem and the size of every tensor
// a pass reads, sizes the tensors it writes, and calls the per-method file (batchnorm.cpp,
// layernorm.cpp, rmsnorm.cpp, groupnorm.cpp; instancenorm is groupnorm with G = C). The sizes are
// those of nb::KernelArgs (suites/core/registry.hpp); the formulas are CONVENTIONS section 1.
//
// Affine follows the problem: with p.affine, gamma (and beta, for every method but rmsnorm, in a
// forward) must have param_count() elements; without it they must be empty, and dgamma/dbeta are
// left empty. A mismatch is a caller's bug and throws rather than guessing which one was meant.
#include "reference.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

namespace nb::ref {

// Per-method kernels, defined in the method files. They run after the checks below, so they may
// index every tensor they read without checking and write into tensors already sized.
//   *_statistics: mean (empty for rmsnorm) and invstd, stats_count() elements each.
//   batchnorm_update_running: the momentum update of running_mean/running_var from the batch.
//   *_normalize:  y from x, the given statistics, gamma and beta (empty = 1 and 0).
//   *_backward:   dx and, when gamma is not empty, dgamma (and dbeta), from the saved statistics.
void batchnorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd);
void batchnorm_update_running(const Problem& p, const std::vector<double>& x,
                              std::vector<double>& running_mean, std::vector<double>& running_var);
void batchnorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t);
void batchnorm_backward(const Problem& p, Tensors& t);

void layernorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd);
void layernorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t);
void layernorm_backward(const Problem& p, Tensors& t);

void rmsnorm_statistics(const Problem& p, const std::vector<double>& x,
                        std::vector<double>& invstd);
void rmsnorm_normalize(const Problem& p, const std::vector<double>& invstd, Tensors& t);
void rmsnorm_backward(const Problem& p, Tensors& t);

void groupnorm_statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                          std::vector<double>& invstd);
void groupnorm_normalize(const Problem& p, const std::vector<double>& mean,
                         const std::vector<double>& invstd, Tensors& t);
void groupnorm_backward(const Problem& p, Tensors& t);

namespace {

void require_size(const std::vector<double>& v, std::int64_t expected, const Problem& p,
                  const char* name) {
  if (static_cast<std::int64_t>(v.size()) != expected)
    throw std::invalid_argument(to_repro(p) + ": tensor '" + name + "' has " +
                                std::to_string(v.size()) + " elements, expected " +
                                std::to_string(expected));
}

void require_params(const Problem& p, const Tensors& t, bool check_beta) {
  require_size(t.gamma, p.affine ? p.param_count() : 0, p, "gamma");
  if (check_beta) require_size(t.beta, p.has_beta() ? p.param_count() : 0, p, "beta");
}

void check_stats(const Problem& p, const Tensors& t) {
  if (p.method != Method::rmsnorm) require_size(t.mean, p.stats_count(), p, "mean");
  require_size(t.invstd, p.stats_count(), p, "invstd");
}

}  // namespace

void statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                std::vector<double>& invstd) {
  require_valid(p);
  require_size(x, p.numel(), p, "x");
  const auto count = static_cast<std::size_t>(p.stats_count());
  invstd.assign(count, 0.0);
  if (p.method == Method::rmsnorm) {
    mean.clear();
    rmsnorm_statistics(p, x, invstd);
    return;
  }
  mean.assign(count, 0.0);
  switch (p.method) {
    case Method::batchnorm:
      batchnorm_statistics(p, x, mean, invstd);
      break;
    case Method::layernorm:
      layernorm_statistics(p, x, mean, invstd);
      break;
    case Method::groupnorm:
    case Method::instancenorm:
      groupnorm_statistics(p, x, mean, invstd);
      break;
    case Method::rmsnorm:
      break;
  }
}

void forward(const Problem& p, Tensors& t) {
  require_valid(p);
  if (p.pass == Pass::bwd)
    throw std::invalid_argument(to_repro(p) + ": forward() needs pass fwd_train or fwd_infer");
  require_size(t.x, p.numel(), p, "x");
  require_params(p, t, /*check_beta=*/true);
  const bool batchnorm = p.method == Method::batchnorm;
  if (batchnorm) {
    require_size(t.running_mean, p.c, p, "running_mean");
    require_size(t.running_var, p.c, p, "running_var");
  }
  t.y.assign(static_cast<std::size_t>(p.numel()), 0.0);

  if (batchnorm && p.pass == Pass::fwd_infer) {
    // Inference: the running statistics play the part of the batch statistics.
    std::vector<double> invstd(static_cast<std::size_t>(p.c));
    for (std::int64_t c = 0; c < p.c; ++c) invstd[c] = 1.0 / std::sqrt(t.running_var[c] + p.eps);
    batchnorm_normalize(p, t.running_mean, invstd, t);
    return;
  }

  // Training-mode statistics; fwd_infer of the other methods computes the same y and saves none.
  std::vector<double> mean, invstd;
  statistics(p, t.x, mean, invstd);
  switch (p.method) {
    case Method::batchnorm:
      batchnorm_normalize(p, mean, invstd, t);
      batchnorm_update_running(p, t.x, t.running_mean, t.running_var);
      break;
    case Method::layernorm:
      layernorm_normalize(p, mean, invstd, t);
      break;
    case Method::rmsnorm:
      rmsnorm_normalize(p, invstd, t);
      break;
    case Method::groupnorm:
    case Method::instancenorm:
      groupnorm_normalize(p, mean, invstd, t);
      break;
  }
  if (p.pass == Pass::fwd_train) {
    t.mean = std::move(mean);  // empty for rmsnorm
    t.invstd = std::move(invstd);
  }
}

void backward(const Problem& p, Tensors& t) {
  require_valid(p);
  if (p.pass != Pass::bwd) throw std::invalid_argument(to_repro(p) + ": backward() needs pass bwd");
  require_size(t.x, p.numel(), p, "x");
  require_size(t.dy, p.numel(), p, "dy");
  require_params(p, t, /*check_beta=*/false);
  check_stats(p, t);
  t.dx.assign(static_cast<std::size_t>(p.numel()), 0.0);
  const auto params = static_cast<std::size_t>(p.affine ? p.param_count() : 0);
  t.dgamma.assign(params, 0.0);
  if (p.has_beta())
    t.dbeta.assign(params, 0.0);
  else
    t.dbeta.clear();
  switch (p.method) {
    case Method::batchnorm:
      batchnorm_backward(p, t);
      break;
    case Method::layernorm:
      layernorm_backward(p, t);
      break;
    case Method::rmsnorm:
      rmsnorm_backward(p, t);
      break;
    case Method::groupnorm:
    case Method::instancenorm:
      groupnorm_backward(p, t);
      break;
  }
}

void run(const Problem& p, Tensors& t) {
  if (p.pass == Pass::bwd)
    backward(p, t);
  else
    forward(p, t);
}

}  // namespace nb::ref
