// Finite-difference gradient check of the fp64 reference backward (reference/reference.hpp) for all
// five methods, both layouts, with and without affine parameters.
//
// loss(x, gamma, beta) = sum_i y_i * w_i for a fixed random w, y from a training-mode forward
// (statistics recomputed from the perturbed x each time; BatchNorm updates a scratch copy of the
// running statistics). The analytic gradients are nb::ref::backward with dy = w and the saved
// statistics of the unperturbed forward; the numerical ones are central differences
//   d loss / d v ~ (loss(v + h) - loss(v - h)) / (2h),  h = 1e-5 * max(1, |v|).
// Truncation error is O(h^2) ~ 1e-10 and rounding error ~ 1e-16 * |loss| / h ~ 1e-10 here, so the
// check allows 1e-6 relative: |analytic - numerical| <= 1e-6 * max(|numerical|, scale), with scale
// the largest |numerical| of the tensor (a floor for elements whose gradient is near zero). A
// formula error (a dropped mean term, a biased/unbiased mix-up, a missing gamma) is >= 1e-3; the
// Detects* tests below show that the checker rejects such an error and a 1e-5 relative one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "reference.hpp"

namespace {

using nb::ref::Tensors;

constexpr double kTolerance = 1e-6;

std::vector<double> random_vector(std::size_t count, std::mt19937_64& rng, double lo, double hi) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(count);
  for (double& e : v) e = dist(rng);
  return v;
}

/// Inputs of one gradient check: x, gamma, beta, running statistics and the loss weights w.
struct GradcheckCase {
  nb::Problem train;  // pass fwd_train
  nb::Problem bwd;    // same problem, pass bwd
  Tensors t;          // x, gamma, beta, running_mean, running_var
  std::vector<double> w;
};

GradcheckCase make_case(const std::string& repro_without_pass) {
  // repro_without_pass is "METHOD:LAYOUT:SHAPE[:OPTION...]"; the pass and dtype are inserted.
  const auto colon = repro_without_pass.find(':');
  const std::string method = repro_without_pass.substr(0, colon);
  const std::string rest = repro_without_pass.substr(colon + 1);
  GradcheckCase s;
  s.train = nb::parse_repro(method + ":fwd_train:f32:" + rest);
  s.bwd = nb::parse_repro(method + ":bwd:f32:" + rest);
  const nb::Problem& p = s.train;
  std::mt19937_64 rng(12345);
  s.t.x = random_vector(static_cast<std::size_t>(p.numel()), rng, -1.0, 2.5);
  if (p.affine) {
    s.t.gamma = random_vector(static_cast<std::size_t>(p.param_count()), rng, 0.5, 1.5);
    if (p.has_beta())
      s.t.beta = random_vector(static_cast<std::size_t>(p.param_count()), rng, -0.5, 0.5);
  }
  if (p.method == nb::Method::batchnorm) {
    s.t.running_mean = random_vector(static_cast<std::size_t>(p.c), rng, -0.5, 0.5);
    s.t.running_var = random_vector(static_cast<std::size_t>(p.c), rng, 0.5, 2.0);
  }
  s.w = random_vector(static_cast<std::size_t>(p.numel()), rng, -1.0, 1.0);
  return s;
}

/// sum(y * w) of a training-mode forward of t (a copy: running statistics are scratch).
double loss(const GradcheckCase& s, Tensors t) {
  nb::ref::forward(s.train, t);
  double l = 0.0;
  for (std::size_t i = 0; i < t.y.size(); ++i) l += t.y[i] * s.w[i];
  return l;
}

/// Central differences of the loss with respect to every element of the tensor selected by
/// member (x, gamma or beta).
std::vector<double> numerical_gradient(const GradcheckCase& s,
                                       std::vector<double> Tensors::*member) {
  Tensors t = s.t;
  std::vector<double>& v = t.*member;
  std::vector<double> grad(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double v0 = v[i];
    const double h = 1e-5 * std::max(1.0, std::abs(v0));
    v[i] = v0 + h;
    const double plus = loss(s, t);
    v[i] = v0 - h;
    const double minus = loss(s, t);
    v[i] = v0;
    grad[i] = (plus - minus) / (2.0 * h);
  }
  return grad;
}

/// The analytic gradients: forward for the saved statistics, then backward with dy = w.
Tensors analytic_gradients(const GradcheckCase& s) {
  Tensors t = s.t;
  nb::ref::forward(s.train, t);
  t.dy = s.w;
  nb::ref::backward(s.bwd, t);
  return t;
}

/// Largest |analytic - numerical| / (kTolerance * max(|numerical|, scale)); <= 1 passes.
double violation(const std::vector<double>& analytic, const std::vector<double>& numerical) {
  EXPECT_EQ(analytic.size(), numerical.size());
  double scale = 0.0;
  for (double g : numerical) scale = std::max(scale, std::abs(g));
  double worst = 0.0;
  for (std::size_t i = 0; i < std::min(analytic.size(), numerical.size()); ++i)
    worst = std::max(worst, std::abs(analytic[i] - numerical[i]) /
                                (kTolerance * std::max(std::abs(numerical[i]), scale)));
  return worst;
}

class ReferenceGradcheck : public testing::TestWithParam<std::string> {};

TEST_P(ReferenceGradcheck, BackwardMatchesFiniteDifferences) {
  const GradcheckCase s = make_case(GetParam());
  SCOPED_TRACE(nb::to_repro(s.bwd));
  const Tensors a = analytic_gradients(s);

  EXPECT_LE(violation(a.dx, numerical_gradient(s, &Tensors::x)), 1.0) << "dx";
  if (s.bwd.affine) {
    EXPECT_LE(violation(a.dgamma, numerical_gradient(s, &Tensors::gamma)), 1.0) << "dgamma";
  } else {
    EXPECT_TRUE(a.dgamma.empty());
  }
  if (s.bwd.has_beta()) {
    EXPECT_LE(violation(a.dbeta, numerical_gradient(s, &Tensors::beta)), 1.0) << "dbeta";
  } else {
    EXPECT_TRUE(a.dbeta.empty());
  }
}

std::vector<std::string> gradcheck_cases() {
  const std::vector<std::string> shapes = {
      "batchnorm:{}:n2c3h2w2",    "batchnorm:{}:n3c2h1w3:eps0.001:mom0.3",
      "layernorm:{}:n2c2h2w3",    "layernorm:{}:t3d5",
      "groupnorm:{}:n2c4h2w2g2",  "groupnorm:{}:n2c6h1w2g3",
      "instancenorm:{}:n2c2h2w3", "rmsnorm:{}:n3c2h2w2:eps1e-06",
      "rmsnorm:{}:t3d5:eps1e-06",
  };
  std::vector<std::string> cases;
  for (const char* layout : {"nchw", "nhwc"})
    for (const std::string& shape : shapes)
      for (const bool affine : {true, false}) {
        std::string c = shape;
        c.replace(c.find("{}"), 2, layout);
        if (!affine) c += ":noaffine";
        cases.push_back(c);
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Methods, ReferenceGradcheck, testing::ValuesIn(gradcheck_cases()),
                         [](const testing::TestParamInfo<std::string>& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// The checker must be able to fail: gradients with known errors are rejected.

TEST(ReferenceGradcheckSelfTest, DetectsDroppedMeanTerm) {
  // BatchNorm dx without the "- sum(dy)" term of gamma * invstd / M * (M dy - sum(dy) - ...).
  const GradcheckCase s = make_case("batchnorm:nchw:n2c3h2w2");
  const nb::Problem& p = s.bwd;
  Tensors a = analytic_gradients(s);
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t c = 0; c < p.c; ++c) {
    double sum_dy = 0.0;
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w) sum_dy += a.dy[p.offset(n, c, h, w)];
    for (std::int64_t n = 0; n < p.n; ++n)
      for (std::int64_t h = 0; h < p.h; ++h)
        for (std::int64_t w = 0; w < p.w; ++w)
          a.dx[p.offset(n, c, h, w)] += a.gamma[c] * a.invstd[c] / m * sum_dy;
  }
  EXPECT_GT(violation(a.dx, numerical_gradient(s, &Tensors::x)), 1.0);
}

TEST(ReferenceGradcheckSelfTest, DetectsDroppedVarianceTerm) {
  // LayerNorm dx without the "- xhat * sum(g * xhat)" term: recompute it that way.
  const GradcheckCase s = make_case("layernorm:nhwc:n2c2h2w3");
  const nb::Problem& p = s.bwd;
  Tensors a = analytic_gradients(s);
  const double m = static_cast<double>(p.reduction_size());
  for (std::int64_t n = 0; n < p.n; ++n) {
    double sum_g = 0.0;
    for (std::int64_t i = 0; i < p.param_count(); ++i) {
      const std::int64_t c = i / (p.h * p.w), h = (i / p.w) % p.h, w = i % p.w;
      sum_g += a.gamma[i] * a.dy[p.offset(n, c, h, w)];
    }
    for (std::int64_t i = 0; i < p.param_count(); ++i) {
      const std::int64_t c = i / (p.h * p.w), h = (i / p.w) % p.h, w = i % p.w;
      const std::int64_t k = p.offset(n, c, h, w);
      a.dx[k] = a.invstd[n] / m * (m * a.gamma[i] * a.dy[k] - sum_g);
    }
  }
  EXPECT_GT(violation(a.dx, numerical_gradient(s, &Tensors::x)), 1.0);
}

TEST(ReferenceGradcheckSelfTest, DetectsSmallRelativeError) {
  // A gradient off by 1e-5 relative (ten times the tolerance) everywhere.
  const GradcheckCase s = make_case("groupnorm:nchw:n2c4h2w2g2");
  Tensors a = analytic_gradients(s);
  for (double& g : a.dgamma) g *= 1.0 + 1e-5;
  EXPECT_GT(violation(a.dgamma, numerical_gradient(s, &Tensors::gamma)), 1.0);
}

}  // namespace
