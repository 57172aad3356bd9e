// The oracle: plain fp64 implementations of the five normalization methods, forward (training and
// inference) and backward, written to be read against the formulas of CONVENTIONS section 1
// (Ioffe & Szegedy 2015; Ba et al. 2016 LayerNorm; Wu & He 2018 GroupNorm; Ulyanov et al. 2016
// InstanceNorm; Zhang & Sennrich 2019 RMSNorm; PyTorch aten/src/ATen/native/Normalization.cpp,
// layer_norm.cpp, group_norm.cpp). Two-pass statistics in double; no blocking, no cleverness.
// It is never timed as a competitor.
#pragma once

#include <vector>

#include "problem.hpp"

namespace nb::ref {

/// All tensors of one case in fp64. Shapes and orders are those of nb::KernelArgs
/// (suites/core/registry.hpp): x, y, dy, dx have problem.numel() elements in problem.layout;
/// gamma, beta, dgamma, dbeta have param_count(); mean, invstd have stats_count();
/// running_mean, running_var have C. An empty gamma (or beta) means affine off: gamma = 1,
/// beta = 0. An unused tensor is left empty.
struct Tensors {
  std::vector<double> x, gamma, beta;
  std::vector<double> y, mean, invstd;
  std::vector<double> running_mean, running_var;
  std::vector<double> dy, dx, dgamma, dbeta;
};

/// fwd_train: writes y, mean (not for rmsnorm), invstd; batchnorm also updates running_mean and
/// running_var in place (running_var takes the unbiased batch variance, var * M / (M - 1)).
/// fwd_infer: writes y only; batchnorm normalises with running_mean/running_var.
/// Throws std::invalid_argument if the problem is invalid or a tensor has the wrong size.
void forward(const Problem& p, Tensors& t);

/// Training-mode backward: reads x, dy, gamma and the saved mean/invstd (as given, so a
/// backend's dx can be compared on the same saved statistics), writes dx and, when affine,
/// dgamma and dbeta (dbeta not for rmsnorm). Throws std::invalid_argument as forward().
void backward(const Problem& p, Tensors& t);

/// forward() for fwd_train/fwd_infer, backward() for bwd.
void run(const Problem& p, Tensors& t);

/// Computes the saved statistics only (mean, invstd as fwd_train would), for setting up a
/// backward case. Batch/running statistics are not touched.
void statistics(const Problem& p, const std::vector<double>& x, std::vector<double>& mean,
                std::vector<double>& invstd);

}  // namespace nb::ref
